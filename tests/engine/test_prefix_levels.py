"""Prefix sharing in levels (issue 21): rows that share at several depths (the system turn shared by every
row, a picture by its questions, a question by its option orders) run each depth once per group. The
planner picks the levels of least cost; on every family the logits equal the plain forward's."""

from __future__ import annotations

import pytest
import torch
from test_prefix_sharing import ATOL, FALLBACK, assert_shared_or_fallback, both, picture_batch

from spatialmech.engine import Ablate, Engine, Steer, add_direction, image_positions, prefix_groups
from spatialmech.engine.prefix_groups import PASS_TOKENS, Unshareable, cuttable, plan_groups


def interventions_of(kind: str, adapter, inputs) -> list:
    positions = image_positions(inputs)
    if kind == "steer":
        direction = torch.randn(adapter.hidden_size, generator=torch.Generator().manual_seed(3))
        return [Steer("lm.resid_pre.0", positions, add_direction(direction, 2.0))]
    if kind == "ablate":
        half = [p[: len(p) // 2] for p in positions]
        cached = Engine(adapter, share_prefix=False).cache(inputs, "projector.out", half)["projector.out"]
        order = list(range(3, 6)) + list(range(3))  # rows 0..2 get picture 1's values, rows 3..5 picture 0's
        return [Ablate("projector.out", half, "values", [cached[r] for r in order])]
    return []


@pytest.mark.parametrize("kind", ["plain", "steer", "ablate"])
def test_rows_sharing_at_several_depths_run_in_levels(family_adapter, kind: str, monkeypatch) -> None:
    """With passes free, every depth at which rows part ways becomes a level; logits stay the plain forward's."""
    monkeypatch.setattr(prefix_groups, "PASS_TOKENS", 0)
    inputs = picture_batch(family_adapter)
    shared, plain, stats = both(family_adapter, inputs, interventions_of(kind, family_adapter, inputs))
    torch.testing.assert_close(shared, plain, atol=ATOL, rtol=0)
    assert_shared_or_fallback(family_adapter, stats)
    if family_adapter.family not in FALLBACK:
        assert max(stats.levels) >= 2, stats.levels
        assert stats.tokens_run <= stats.tokens_floor + 2 * inputs.batch_size * inputs.seq_len // 3


def rows_with_common_starts(starts: dict[tuple[int, int], int], batch: int, length: int) -> torch.Tensor:
    """(batch, length, 4) layer-0 states where rows i, j agree on their first starts[(i, j)] positions."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, length, 4, generator=gen)
    for (i, j), common in sorted(starts.items(), key=lambda kv: kv[1]):
        hidden[j, :common] = hidden[i, :common]
    return hidden


def test_planner_picks_the_levels_of_least_cost() -> None:
    # four rows: all share 100 positions (a system turn and more), rows 0-1 and 2-3 share 150 (a picture each)
    hidden = rows_with_common_starts({(0, 1): 100, (0, 2): 100, (0, 3): 100, (2, 3): 150}, 4, 160)
    hidden[1, 100:150] = hidden[0, 100:150]
    plan = plan_groups(hidden, None)
    assert [(level.start, level.end) for level in plan.levels] == [(0, 100), (100, 150)]
    assert [len(level.reps) for level in plan.levels] == [1, 2]
    assert plan.levels[1].parent.tolist() == [0, 0]
    assert plan.group_of_row.tolist() == [0, 0, 1, 1]
    assert plan.prefix_tokens() == 100 + 2 * 50
    assert plan.floor == 100 + 2 * 50 + 4 * 10
    # a shared start worth less than a pass stays inside the next level
    small = rows_with_common_starts({(0, 1): PASS_TOKENS // 4, (0, 2): PASS_TOKENS // 4, (0, 3): PASS_TOKENS // 4, (2, 3): 150}, 4, 160)
    small[1, : 150] = small[0, : 150]
    assert [(level.start, level.end) for level in plan_groups(small, None).levels] == [(0, 150)]


def test_planner_cuts_only_where_the_masks_allow() -> None:
    """A block of positions that see each other (Gemma's image block) may not be cut: the plan ends a level
    before or after it, and says why when rows part ways only inside it."""
    hidden = rows_with_common_starts({(0, 1): 100, (0, 2): 100, (0, 3): 100, (2, 3): 150}, 4, 160)
    hidden[1, :150] = hidden[0, :150]
    sees = torch.ones(160, 160, dtype=torch.bool).tril()
    sees[90:120, 90:120] = True  # a bidirectional block across the first parting (100)
    can_cut = cuttable([sees[None, None]], torch.zeros(4, dtype=torch.long))
    assert bool(can_cut[0, 90]) and not bool(can_cut[0, 100]) and bool(can_cut[0, 120])
    assert [(level.start, level.end) for level in plan_groups(hidden, None, can_cut=can_cut).levels] == [(0, 150)]
    sees[140:155, 140:155] = True  # now the second parting (150) is inside a block too
    can_cut = cuttable([sees[None, None]], torch.zeros(4, dtype=torch.long))
    with pytest.raises(Unshareable, match="attends to later positions"):
        plan_groups(hidden, None, can_cut=can_cut)


def test_planner_reads_cuts_from_each_rows_first_real_token() -> None:
    """Left padding shifts a row's positions: `cuttable` answers by offset from each row's first real token."""
    sees = torch.ones(2, 1, 12, 12, dtype=torch.bool).tril()
    sees[0, :, 4:8, 4:8] = True  # row 0 (no padding): a block at 4..7
    sees[1, :, 6:10, 6:10] = True  # row 1 (2 padding positions): the same block, shifted
    can_cut = cuttable([sees], torch.tensor([0, 2]))
    assert can_cut[:, :10].tolist() == [[c not in (5, 6, 7) for c in range(10)]] * 2

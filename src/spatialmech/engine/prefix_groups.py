"""Grouping rows by their common prefixes and gathering per-row slices of captured tensors (`engine.prefix`).

Groups come from layer 0's input itself (what the decoder layers will see), so pictures, prompts and
interventions before layer 0 all count; `engine.prefix` then proves every other input equal.

Rows can share at several depths: every row of a batch shares the system turn, the rows about one
picture share that picture too, and both option orders of a question share the question up to its
options. A plan is a short list of levels, each a pass over its groups' new tokens (attending to the
level before), chosen to run the fewest token passes, a pass counting `PASS_TOKENS` for its fixed cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from spatialmech.engine.call_args import masked

# Share only when it saves at least this fraction of a plain forward's token passes: the prefix and the
# suffix run as extra passes, whose fixed costs (measured on the bundled model) outweigh small savings.
MIN_SAVING = 0.25
# What one more pass costs beyond its tokens, in token passes (bundled model, 2 cores: a pass of the
# 8 layers takes ~5 ms plus ~80 us per token; a level is worth adding only when it saves more).
PASS_TOKENS = 64


class Unshareable(Exception):
    """This batch cannot be shared exactly; the message says why (the plain forward runs instead)."""


class GroupsDiffer(Unshareable):
    """Grouped rows agree on their tokens' states but not on positions/masks (retried by padding)."""


def gather_rows(t: torch.Tensor, batch_dim: int, seq_dim: int, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t[rows[i]] with its `seq_dim` gathered at index[i] (rows, new_len): per-row slices of captured tensors
    (a batch dimension of 1 is broadcast). One advanced index: 2-3x faster than `gather` with an index
    expanded over the trailing dimensions, and the same values."""
    batch_dim, seq_dim = batch_dim % t.dim(), seq_dim % t.dim()
    moved = t.movedim((batch_dim, seq_dim), (0, 1))
    rows = rows.to(moved.device)
    if moved.shape[0] == 1:
        rows = torch.zeros_like(rows)
    return moved[rows[:, None], index.to(moved.device)].movedim((0, 1), (batch_dim, seq_dim))


@dataclass
class Level:
    """One pass of a shared run: each group's real tokens [start, end), attending to its group's keys
    and values of [0, start) from the level before (`parent`: its group there)."""

    start: int
    end: int
    reps: torch.Tensor  # (groups,) representative row of each group
    labels: torch.Tensor  # (batch,) each row's group
    parent: torch.Tensor  # (groups,) each group's group at the level before (zeros at the first level)


@dataclass
class Plan:
    levels: list[Level]
    pad: torch.Tensor  # (batch,) left padding of each row
    floor: int  # distinct (row prefix) positions: the no-repeat floor
    root: int = 0  # levels[0] is the root (every row's common start, kept across forwards) when > 0

    @property
    def prefix_len(self) -> int:
        return self.levels[-1].end

    @property
    def group_of_row(self) -> torch.Tensor:
        return self.levels[-1].labels

    def prefix_tokens(self) -> int:
        """Token passes of the levels, the root left out (kept across forwards, so free but once)."""
        return sum(len(level.reps) * (level.end - level.start) for level in self.levels[1 if self.root else 0 :])


def cuttable(masks: Iterable[torch.Tensor], pad: torch.Tensor) -> torch.Tensor | None:
    """(batch, seq_len) whether a prefix may end before each real-token offset of each row: no real token
    before the cut attends to one at or after it (a cut inside Gemma's bidirectional image block may not)."""
    batch = pad.shape[0]
    allowed: torch.Tensor | None = None
    for mask in masks:
        seq_len = mask.shape[-1]
        sees = (~masked(mask)).any(dim=1).expand(batch, seq_len, seq_len).cpu()  # (batch, query, key)
        positions = torch.arange(seq_len)
        sees = sees & (positions[None, :, None] >= pad[:, None, None])  # queries of real tokens only
        first_query = torch.where(sees, positions[None, :, None], seq_len).min(dim=1).values  # per key
        earliest = torch.flip(torch.cummin(torch.flip(first_query, [1]), dim=1).values, [1])  # over keys >= t
        ok = earliest >= positions[None, :]
        index = (pad[:, None] + positions[None, :]).clamp(max=seq_len - 1)
        ok = ok.gather(1, index)  # by offset from each row's first real token
        allowed = ok if allowed is None else allowed & ok
    return allowed  # None: no mask (causal everywhere)


def plan_groups(hidden: torch.Tensor, attention_mask: torch.Tensor | None, same_pad: bool = False,
                can_cut: torch.Tensor | None = None, root_cap: int = 0) -> Plan:
    """Group rows by the common starts of their real tokens' layer-0 states and choose the levels (prefix
    lengths) that run the fewest token passes. Raises Unshareable when nothing worth a pass is shared.
    `same_pad` also requires equal left padding (families whose positions count the padding, Gemma3);
    `can_cut` (`cuttable`) rules out prefix lengths the attention masks forbid. With `root_cap` > 0, the
    start every row shares, up to `root_cap` tokens, is a level of its own (the root), counted as free:
    the engine keeps its keys/values across forwards."""
    batch, seq_len = hidden.shape[:2]
    if attention_mask is None:
        attention_mask = torch.ones(batch, seq_len, dtype=torch.long)
    real = attention_mask.to(torch.bool).cpu()
    lengths = real.sum(1)
    pad = seq_len - lengths
    offsets = torch.arange(seq_len)[None, :]
    if not torch.equal(real, offsets >= pad[:, None]):
        raise Unshareable("rows are not left-padded")
    if batch < 2:
        raise Unshareable("one row")
    # a fingerprint per position (exact equality is checked below); NaN where a row has no token
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(hidden.shape[-1], generator=gen, dtype=torch.float64)
    sig = hidden.detach().cpu().double() @ probe
    from_first_real = sig.gather(1, (pad[:, None] + offsets).clamp(max=seq_len - 1))
    aligned = torch.where(offsets < lengths[:, None], from_first_real, float("nan"))
    same = (aligned[:, None, :] == aligned[None, :, :]).long().cumprod(-1).sum(-1)  # (batch, batch) common start
    floor = _distinct_prefix_positions(same, lengths)
    if same_pad:
        same = same * (pad[:, None] == pad[None, :])
    max_prefix, longest = int(lengths.min()) - 1, int(lengths.max())
    root = min(int(same.min()), root_cap, max_prefix) if root_cap > 0 else 0
    if root > 0 and can_cut is not None and not (root < can_cut.shape[1] and bool(can_cut[:, root].all())):
        root = 0
    cuts = _best_cuts(same, max_prefix, longest, can_cut, root)
    levels = [Level(0, root, torch.zeros(1, dtype=torch.long), torch.zeros(batch, dtype=torch.long),
                    torch.zeros(1, dtype=torch.long))] if root else []
    for start, end in zip([root, *cuts], cuts):
        labels, reps = _components(same >= end)
        parent = levels[-1].labels[reps] if levels else torch.zeros_like(reps)
        levels.append(Level(start, end, reps, labels, parent))
    plan = Plan(levels, pad, floor, root)
    saving = batch * seq_len - plan.prefix_tokens() - batch * (longest - plan.prefix_len)
    if cuts and saving < MIN_SAVING * batch * seq_len:  # the extra passes cost more than they save
        if not _root_pays(root, batch):
            raise Unshareable(f"rows share less than {MIN_SAVING:.0%} of the batch's tokens")
        plan.levels = levels[:1]  # the root alone: no extra pass
    return plan


def _root_pays(root: int, batch: int) -> bool:
    """Whether a root alone (no level after it) saves more than the shared run's own costs."""
    return root > 0 and batch * root >= PASS_TOKENS


def _best_cuts(same: torch.Tensor, max_prefix: int, longest: int, can_cut: torch.Tensor | None, root: int = 0) -> list[int]:
    """The increasing prefix lengths (one per level after the root) of least cost: each level's groups x
    its new tokens plus PASS_TOKENS, then every row's suffix (padded to the longest); [] when the root
    alone is cheapest. Lengths are where rows part ways."""
    batch = same.shape[0]
    candidates = sorted({min(int(v), max_prefix) for v in same.flatten().tolist()} - set(range(root + 1)))
    groups = [len(_components(same >= c)[1]) for c in candidates]
    if all(g == batch for g in groups):
        if _root_pays(root, batch):
            return []
        raise Unshareable("no rows share a prefix")
    if can_cut is not None:
        kept = [j for j, c in enumerate(candidates) if c < can_cut.shape[1] and bool(can_cut[:, c].all())]
        candidates, groups = [candidates[j] for j in kept], [groups[j] for j in kept]
    # cost[j]: the cheapest levels ending with candidates[j]; back[j]: the level before it (-1: the root)
    cost: list[int] = []
    back: list[int] = []
    for j, (c, g) in enumerate(zip(candidates, groups)):
        best, before = g * (c - root) + PASS_TOKENS, -1
        for i in range(j):
            if groups[i] < g:  # a level of as many groups as the next one saves nothing
                option = cost[i] + g * (c - candidates[i]) + PASS_TOKENS
                if option < best:
                    best, before = option, i
        cost.append(best)
        back.append(before)
    ends = [j for j, g in enumerate(groups) if g < batch]
    if not ends:
        if _root_pays(root, batch):
            return []
        raise Unshareable("the prefix attends to later positions wherever rows part ways (e.g. a bidirectional block)")
    last = min(ends, key=lambda j: cost[j] + batch * (longest - candidates[j]))
    if _root_pays(root, batch) and cost[last] + batch * (longest - candidates[last]) >= batch * (longest - root):
        return []
    cuts = []
    while last >= 0:
        cuts.append(candidates[last])
        last = back[last]
    return cuts[::-1]


def _components(linked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, representatives) of an equivalence relation given as a boolean matrix: each row's group
    (in first-appearance order) and each group's first row. A row's first linked row is its group's first
    member, so the groups come out of one argmax, with no loop over rows."""
    first = linked.to(torch.uint8).argmax(1)  # the first True of each row
    reps, labels = torch.unique(first, sorted=True, return_inverse=True)
    return labels, reps


def _distinct_prefix_positions(same: torch.Tensor, lengths: torch.Tensor) -> int:
    """Nodes of the rows' prefix tree, the positions a no-repeat schedule computes: row r adds its tokens
    past the longest start it shares with an earlier row (`same`: common-start lengths, row by row)."""
    shared = same.tril(-1).max(1).values  # 0 for the first row
    return int((lengths - shared.clamp(max=lengths)).sum())

"""Every registered family's decoder layers must resume, run on a suffix and split into row chunks
exactly: the engine's fast sweep paths equal its one-forward-per-layer loop on each family's tiny model
(the three families of `test_engine_sweep.py` are also checked there against raw torch hooks)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_pairs

from spatialmech.engine import Engine, image_positions, last_position

ATOL = 1e-5



@pytest.mark.parametrize("selector", ["image", "last"])
def test_fast_sweeps_and_row_chunks_equal_the_naive_loop(family_adapter, selector: str) -> None:
    pairs = make_pairs(family_adapter, 3, seed=6)
    engine = Engine(family_adapter)
    if selector == "image":
        target_pos, source_pos = image_positions(pairs.target), image_positions(pairs.source)
    else:
        target_pos, source_pos = last_position(pairs.target), last_position(pairs.source)
    naive = engine.patch_sweep(pairs.target, pairs.source, target_pos, source_pos, keep_logits=True, method="naive")
    fast = engine.patch_sweep(pairs.target, pairs.source, target_pos, source_pos, keep_logits=True)
    torch.testing.assert_close(fast.logits, naive.logits, atol=ATOL, rtol=0)
    first = min(int(p.min()) for p in target_pos)
    suffix = pairs.target.seq_len - (first if fast.method == "suffix" else 0)
    chunked = engine.patch_sweep(
        pairs.target, pairs.source, target_pos, source_pos, keep_logits=True, max_tokens_per_call=2 * suffix
    )
    assert chunked.method == fast.method
    torch.testing.assert_close(chunked.logits, naive.logits, atol=ATOL, rtol=0)

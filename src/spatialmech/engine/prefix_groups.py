"""Grouping rows by their common prefix and gathering per-row slices of captured tensors (`engine.prefix`).

Groups come from layer 0's input itself (what the decoder layers will see), so pictures, prompts and
interventions before layer 0 all count; `engine.prefix` then proves every other input equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Share only when it saves at least this fraction of a plain forward's token passes: the prefix and the
# suffix run as two passes, whose fixed costs (measured on the bundled model) outweigh small savings.
MIN_SAVING = 0.25


class Unshareable(Exception):
    """This batch cannot be shared exactly; the message says why (the plain forward runs instead)."""


class GroupsDiffer(Unshareable):
    """Grouped rows agree on their tokens' states but not on positions/masks (retried by padding)."""


def gather_rows(t: torch.Tensor, batch_dim: int, seq_dim: int, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t[rows[i]] with its `seq_dim` gathered at index[i] (rows, new_len): per-row slices of captured tensors."""
    batch_dim, seq_dim = batch_dim % t.dim(), seq_dim % t.dim()
    moved = t.movedim((batch_dim, seq_dim), (0, 1))
    if moved.shape[0] == 1:
        moved = moved.expand(int(rows.max()) + 1, *moved.shape[1:])
    moved = moved[rows.to(moved.device)]
    rest = moved.shape[2:]
    idx = index.to(moved.device).view(*index.shape, *([1] * len(rest))).expand(*index.shape, *rest)
    return moved.gather(1, idx).movedim((0, 1), (batch_dim, seq_dim))


@dataclass
class Plan:
    prefix_len: int
    reps: torch.Tensor  # (groups,) representative row of each group
    group_of_row: torch.Tensor  # (batch,)
    pad: torch.Tensor  # (batch,) left padding of each row
    floor: int  # distinct (row prefix) positions: the no-repeat floor


def plan_groups(hidden: torch.Tensor, attention_mask: torch.Tensor | None, same_pad: bool = False) -> Plan:
    """Group rows by the longest common start of their real tokens' layer-0 states; choose one prefix
    length for the batch that saves the most token passes. Raises Unshareable when nothing is shared.
    `same_pad` also requires equal left padding (families whose positions count the padding, Gemma3)."""
    batch, seq_len = hidden.shape[:2]
    if attention_mask is None:
        attention_mask = torch.ones(batch, seq_len, dtype=torch.long)
    real = attention_mask.to(torch.bool).cpu()
    lengths = real.sum(1)
    pad = seq_len - lengths
    if not all(bool(real[r, int(pad[r]) :].all()) for r in range(batch)):
        raise Unshareable("rows are not left-padded")
    if batch < 2:
        raise Unshareable("one row")
    # a fingerprint per position (exact equality is checked below); NaN where a row has no token
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(hidden.shape[-1], generator=gen, dtype=torch.float64)
    sig = hidden.detach().cpu().double() @ probe
    aligned = torch.full((batch, seq_len), float("nan"), dtype=torch.float64)
    for r in range(batch):
        aligned[r, : int(lengths[r])] = sig[r, int(pad[r]) :]
    same = (aligned[:, None, :] == aligned[None, :, :]).long().cumprod(-1).sum(-1)  # (batch, batch) common start
    floor = _distinct_prefix_positions(same, lengths)
    if same_pad:
        same = same * (pad[:, None] == pad[None, :])
    max_prefix = int(lengths.min()) - 1  # every row keeps its last token in the suffix
    best: tuple[int, int, torch.Tensor] | None = None
    for p in sorted({int(v) for v in same.flatten().tolist() if v > 0} | {max_prefix}):
        p = min(p, max_prefix)
        if p < 1:
            continue
        labels = _components(same >= p)
        saving = (batch - int(labels.max()) - 1) * p
        if saving > 0 and (best is None or saving > best[0]):
            best = (saving, p, labels)
    if best is None:
        raise Unshareable("no rows share a prefix")
    if best[0] < MIN_SAVING * batch * seq_len:  # a second pass costs more than it saves
        raise Unshareable(f"rows share less than {MIN_SAVING:.0%} of the batch's tokens")
    _, p, labels = best
    reps = torch.tensor([int((labels == g).nonzero()[0]) for g in range(int(labels.max()) + 1)])
    return Plan(p, reps, labels, pad, floor)


def _components(linked: torch.Tensor) -> torch.Tensor:
    """Group labels (in first-appearance order) for an equivalence relation given as a boolean matrix."""
    labels = torch.full((linked.shape[0],), -1, dtype=torch.long)
    next_label = 0
    for r in range(linked.shape[0]):
        if labels[r] < 0:
            labels[linked[r] & (labels < 0)] = next_label
            next_label += 1
    return labels


def _distinct_prefix_positions(same: torch.Tensor, lengths: torch.Tensor) -> int:
    """Nodes of the rows' prefix tree, the positions a no-repeat schedule computes: row r adds its tokens
    past the longest start it shares with an earlier row (`same`: common-start lengths, row by row)."""
    shared = same.tril(-1).max(1).values  # 0 for the first row
    return int((lengths - shared.clamp(max=lengths)).sum())

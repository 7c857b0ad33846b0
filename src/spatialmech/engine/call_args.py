"""A decoder layer's call arguments, cut to part of the sequence or of the batch (masks, rotary tables,
position ids): what the sweep's suffix recompute (`engine.sweep`) and prefix sharing (`engine.prefix`)
need to run a layer on fewer positions or rows than the model's own forward built them for.

Everything here either returns arguments under which the layer computes exactly what it computed in
the full forward, or raises `Unprovable` (the caller then takes a slower exact path).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# kwargs under which decoder layers receive their KV cache (the name changed across transformers versions)
CACHE_KWARGS = ("cache", "past_key_values")


class Unprovable(Exception):
    """A fast path cannot prove itself exact for this model/input; fall back to a slower exact one."""


def layer_output(out: Any) -> torch.Tensor:
    """The hidden states from a decoder layer's return value (a tensor, or a tuple led by one)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def map_tensors(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply `fn` to every tensor in a (nested) argument; containers are rebuilt, anything else kept."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


def mentions_length(value: Any, seq_len: int) -> bool:
    """Whether any tensor in a (nested) argument has an axis of the sequence's length."""
    if isinstance(value, torch.Tensor):
        return seq_len in value.shape
    if isinstance(value, (tuple, list)):
        return any(mentions_length(v, seq_len) for v in value)
    if isinstance(value, dict):
        return any(mentions_length(v, seq_len) for v in value.values())
    return False


# ------------------------------------------------------------------ masks
def masked(mask: torch.Tensor) -> torch.Tensor:
    """Boolean 'this key is hidden from this query' for a boolean or additive mask."""
    if mask.dtype == torch.bool:
        return ~mask
    return mask <= torch.finfo(mask.dtype).min / 2


def causal_mask(seq_len: int, attention: str, device: torch.device, first: int = 0) -> torch.Tensor | None:
    """Query rows first..seq_len-1 of the implicit causal mask made explicit, (1, 1, rows, seq_len), in the
    kernel's format (a layer called without a mask needs it once queries and keys differ in number,
    since kernels align an implicit causal mask to the top-left); None for a kernel with no known format."""
    allowed = torch.arange(seq_len, device=device)[None, :] <= torch.arange(first, seq_len, device=device)[:, None]
    if attention == "sdpa":
        return allowed[None, None]
    if attention == "eager":
        return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
    return None


def suffix_mask(mask: Any, seq_len: int, first: int, attention: str, device: torch.device) -> Any:
    """Query rows first.. of the layer's mask; without a mask (plain causal), the causal rows explicitly."""
    if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[-2] == seq_len:
        return mask[..., first:, :]
    if mask is not None:
        raise Unprovable(f"attention mask of type {type(mask).__name__}")
    if seq_len - first == 1:
        return None  # one query at the end attends to every key
    rows = causal_mask(seq_len, attention, device, first)
    if rows is None:
        raise Unprovable(f"no explicit causal mask for attention implementation {attention!r}")
    return rows


def prefix_blind_to_suffix(mask: Any, seq_len: int, first: int) -> bool:
    """True when no query before `first` attends to a key at or after it (so the suffix cannot change them)."""
    if mask is None:
        return True  # no mask = plain causal attention
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[-1] != seq_len:
        return False
    return bool(masked(mask[..., :first, first:]).all())


# ------------------------------------------------------------------ rotary tables and the suffix's kwargs
def slice_rotary(value: Any, seq_len: int, first: int) -> Any:
    """Positions first.. of rotary tables (any nesting; their sequence axis is the second to last)."""

    def cut(t: torch.Tensor) -> torch.Tensor:
        if t.dim() >= 2 and t.shape[-2] == seq_len:
            return t[..., first:, :]
        raise Unprovable(f"rotary embedding of shape {tuple(t.shape)}")

    if value is not None and not isinstance(value, (torch.Tensor, tuple, list, dict)):
        raise Unprovable(f"rotary embedding of type {type(value).__name__}")
    return map_tensors(value, cut)


def suffix_step_kwargs(kwargs: dict[str, Any], seq_len: int, first: int, cache: Any, attention: str, device: torch.device) -> dict[str, Any]:
    """A decoder layer's kwargs for recomputing positions first..seq_len-1 only (against `cache`, which
    holds the keys/values of the positions before), from the kwargs the full prompt was run with."""
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in CACHE_KWARGS:
            out[name] = cache
        elif name == "use_cache":
            out[name] = False
        elif name == "attention_mask":
            out[name] = suffix_mask(value, seq_len, first, attention, device)
        elif name == "position_embeddings":
            out[name] = slice_rotary(value, seq_len, first)
        elif name in ("position_ids", "cache_position"):
            out[name] = value[..., first:] if isinstance(value, torch.Tensor) else value
        elif mentions_length(value, seq_len):
            raise Unprovable(f"decoder-layer argument {name!r} depends on the sequence")
        else:
            out[name] = value
    if not any(name in kwargs for name in CACHE_KWARGS):
        raise Unprovable("decoder layers take no KV cache argument")
    return out


# ------------------------------------------------------------------ rows of the batch
def map_batch(obj: Any, batch: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn` to every batch-leading tensor in a (nested) argument; broadcast ones stay as they are."""

    def each(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0 or t.shape[0] == 1:
            return t
        if t.shape[0] != batch:
            raise Unprovable(f"tensor argument with leading size {t.shape[0]} (batch {batch})")
        return fn(t)

    return map_tensors(obj, each)


def repeat_batch(obj: Any, copies: int, batch: int) -> Any:
    """Repeat every batch-leading tensor `copies` times along dim 0 (stacked patch copies)."""
    if copies == 1:
        return obj
    return map_batch(obj, batch, lambda t: t.repeat(copies, *([1] * (t.dim() - 1))))


def select_rows(obj: Any, rows: slice, batch: int) -> Any:
    """Rows `rows` of every batch-leading tensor (a chunk of the batch); all rows: `obj` itself."""
    if range(*rows.indices(batch)) == range(batch):
        return obj
    return map_batch(obj, batch, lambda t: t[rows])

"""Each pass of a shared forward gets the decoder layers' call arguments the model built for the whole
batch, cut to its rows and positions (`engine.prefix`): masks, rotary tables, position ids and
cache positions, gathered per row so that every token sees exactly what it saw in the plain forward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from spatialmech.engine.call_args import CACHE_KWARGS, causal_mask, map_tensors, mentions_length
from spatialmech.engine.prefix_groups import Plan, Unshareable, gather_rows


@dataclass
class Captured:
    """Layer 0's input (batch, seq, hidden) and every decoder layer's call keyword arguments."""

    hidden: torch.Tensor
    kwargs: list[dict[str, Any]]


class LayerArgs:
    """Turns the captured per-layer kwargs into each pass's kwargs (memoised per tensor, since layers of
    one kind share their mask and rotary tables). Parts: "level:K" (the plan's level K, its groups'
    representatives), "check:K" (level K's positions in every row, to prove the groups equal) and "suffix"."""

    def __init__(self, captured: Captured, plan: Plan, attention: str, none_is_causal: bool = False):
        self.captured, self.plan, self.attention = captured, plan, attention
        self.none_is_causal = none_is_causal
        self.seq_len = captured.hidden.shape[1]
        self.batch = captured.hidden.shape[0]
        p, pad, seq_len = plan.prefix_len, plan.pad, self.seq_len
        self.suffix_len = seq_len - int(pad.min()) - p
        n_pad = self.suffix_len - (seq_len - pad - p)  # left padding of each row's suffix
        steps = torch.arange(self.suffix_len)
        first_real = (pad + p)[:, None]
        prefix_index = pad[:, None] + torch.arange(p)[None, :]  # (batch, p) real prefix positions
        self.suffix_index = torch.maximum(first_real + steps[None, :] - n_pad[:, None], first_real)
        pad_key = torch.zeros_like(self.suffix_index)
        suffix_keys = torch.where(steps[None, :] < n_pad[:, None], pad_key, self.suffix_index)
        self.suffix_keys = torch.cat([prefix_index, suffix_keys], dim=1)
        self.all_rows = torch.arange(self.batch)
        self.memo: dict[tuple[int, str], Any] = {}

    def indices(self, part: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, query positions (rows, q), key positions (rows, k)) of a part."""
        if part == "suffix":
            return self.all_rows, self.suffix_index, self.suffix_keys
        kind, level = part.split(":")
        span = self.plan.levels[int(level)]
        rows = span.reps if kind == "level" else self.all_rows
        first = self.plan.pad[rows][:, None]
        return rows, first + torch.arange(span.start, span.end)[None, :], first + torch.arange(span.end)[None, :]

    def layer(self, kwargs: dict[str, Any], cache: Any, part: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not any(name in kwargs for name in CACHE_KWARGS):
            raise Unshareable("decoder layers take no KV cache argument")
        if "attention_mask" not in kwargs:
            raise Unshareable("decoder layers take no attention mask")
        for name, value in kwargs.items():
            if name in CACHE_KWARGS:
                out[name] = cache
            elif name == "attention_mask":
                key = (id(value), f"{name}:{part}")
                if key not in self.memo:
                    self.memo[key] = self.prefix_mask(value) if part == "level:0" else self.mask(value, part)
                out[name] = self.memo[key]
            elif name == "use_cache":
                out[name] = False
            elif name == "cache_position":
                _, queries, keys = self.indices(part)
                start = keys.shape[1] - queries.shape[1]
                out[name] = torch.arange(start, start + queries.shape[1], device=self.captured.hidden.device)
            elif isinstance(value, (torch.Tensor, tuple, list, dict)) and mentions_length(value, self.seq_len):
                key = (id(value), f"{name}:{part}")
                if key not in self.memo:
                    self.memo[key] = self.convert(name, value, part)
                out[name] = self.memo[key]
            else:
                out[name] = value
        return out

    def convert(self, name: str, value: Any, part: str) -> Any:
        """A layer argument that depends on the sequence (mask, positions, rotary tables), cut to a part's rows and positions."""
        rows, index, _ = self.indices(part)
        if name == "attention_mask":
            return self.mask(value, part)
        if name == "position_ids" and isinstance(value, torch.Tensor) and value.dim() >= 2:
            return gather_rows(value, -2, -1, rows, index)
        if name == "position_embeddings":
            return map_tensors(value, lambda t: gather_rows(t, -3, -2, rows, index) if t.dim() >= 3 and t.shape[-2] == self.seq_len else _bad(name))
        raise Unshareable(f"decoder-layer argument {name!r} depends on the sequence")

    def full_mask(self, mask: Any) -> torch.Tensor:
        if mask is None:
            full = causal_mask(self.seq_len, self.attention, self.captured.hidden.device)
            if full is None:
                raise Unshareable(f"no explicit causal mask for attention implementation {self.attention!r}")
            return full
        if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[-1] != self.seq_len or mask.shape[-2] != self.seq_len:
            raise Unshareable(f"attention mask of type {type(mask).__name__}")
        return mask

    def prefix_mask(self, mask: Any) -> torch.Tensor | None:
        """The first level's mask, or None (the kernel's own causal path, faster than an explicit mask) where
        the model itself called its layers without one, or where the layers take None as causal and the
        gathered mask is exactly causal (the prefix holds real tokens only, so padding is gone)."""
        if mask is None:
            return None
        gathered = self.mask(mask, "level:0")
        if self.none_is_causal and gathered.dtype == torch.bool:
            p = gathered.shape[-1]
            causal = torch.ones(p, p, dtype=torch.bool, device=gathered.device).tril()
            if torch.equal(gathered, causal.expand_as(gathered)):
                return None
        return gathered

    def mask(self, mask: Any, part: str) -> torch.Tensor:
        mask = self.full_mask(mask)
        rows, queries, keys = self.indices(part)
        by_query = gather_rows(mask, 0, -2, rows, queries)
        return gather_rows(by_query, 0, -1, torch.arange(len(rows)), keys)


def _bad(name: str) -> Any:
    raise Unshareable(f"decoder-layer argument {name!r} has a layout the engine does not know")

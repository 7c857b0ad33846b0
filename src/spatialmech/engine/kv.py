"""Stand-in KV caches handed to decoder layers: how the sweep and prefix sharing run a layer on part of
the sequence against keys/values computed elsewhere (the clean run's, a shared prefix's).

A decoder layer calls `cache.update(keys, values, layer_idx)` and attends to what it returns; these
objects store nothing across calls (or only what one pass needs), so one serves every layer.
"""

from __future__ import annotations

from typing import Any

import torch

from spatialmech.engine.call_args import Unprovable


class PrefixKV:
    """Returns given prefix keys/values (repeated over stacked batch copies) with the new ones appended."""

    def __init__(self, prefix: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        self.prefix = prefix
        self.device = next(iter(prefix.values()))[0].device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        keys, values = self.prefix[layer_idx]
        copies = key_states.shape[0] // keys.shape[0]
        if copies > 1:
            keys, values = keys.repeat(copies, 1, 1, 1), values.repeat(copies, 1, 1, 1)
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

    def rows(self, rows: slice | torch.Tensor) -> PrefixKV:
        """The same cache for some batch rows (a slice, or an index tensor that may repeat rows)."""
        return PrefixKV({layer: (keys[rows], values[rows]) for layer, (keys, values) in self.prefix.items()})


class KVRecorded(Exception):
    """Raised by `KVRecorder` to stop a layer once its keys/values are known."""


class KVRecorder:
    """Keeps the keys/values a layer computes and stops the layer there (raises `KVRecorded`)."""

    keys: torch.Tensor
    values: torch.Tensor

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        self.keys, self.values = key_states, value_states
        raise KVRecorded


class KVKeeper:
    """Keeps each layer's keys/values, after `before`'s where given (an earlier pass's, row-aligned), and
    returns them (a pass whose keys later rows reuse). With `stop_at`, that layer stops once its
    keys/values are kept (raises `KVRecorded`): a shared prefix's last layer is needed for its
    keys/values only, never for its output."""

    def __init__(self, stop_at: int | None = None, before: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.stop_at = stop_at
        self.before = before

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        if self.before is not None:
            keys, values = self.before[layer_idx]
            key_states, value_states = torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)
        self.kept[layer_idx] = (key_states, value_states)
        if layer_idx == self.stop_at:
            raise KVRecorded
        return key_states, value_states


def whole_prompt_prefix(kv: Any, layers: range, seq_len: int, keep: int) -> PrefixKV:
    """The first `keep` positions of a model-built cache (transformers' `Cache`), for `layers`; raises
    `Unprovable` unless each of them holds the whole prompt."""
    if kv is None or not hasattr(kv, "layers"):
        raise Unprovable("no KV cache from the clean run")
    prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for j in layers:
        layer = kv.layers[j]
        keys, vals = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or keys.shape[-2] != seq_len:
            raise Unprovable(f"layer {j} cache does not hold the whole prompt")
        prefix[j] = (keys[..., :keep, :], vals[..., :keep, :])
    return PrefixKV(prefix)

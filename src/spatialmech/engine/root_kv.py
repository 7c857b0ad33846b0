"""The keys/values of the start every row of a batch shares, kept across forwards (issue 21).

Every prompt begins with the same turn before its picture (the system turn, the user turn's opening):
about 21 tokens of ~185 on the bundled model, computed once per group of rows in every shared forward
and once per row in every plain one. The root level of a shared forward (`prefix_groups.Plan.root`)
runs those tokens alone, one row, and keeps their per-layer keys/values here; any later forward whose
root has the same layer-0 states and the same layer arguments over it (rotary tables, mask, positions:
the key digests all of them, and the attention kernel) takes them instead. The root is always computed
the same way (alone), so a forward gives the same numbers whether its root was computed or kept.

Only with sharing on; bounded in bytes (SPATIALMECH_ROOT_MEMO_MB, default 64; 0 turns it off); one memo
per model object, forgotten when its weights change in place.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from spatialmech.engine.call_args import CACHE_KWARGS
from spatialmech.engine.memo import BoundedMemo, feed_digest

ENV_LIMIT = "SPATIALMECH_ROOT_MEMO_MB"
DEFAULT_LIMIT_MB = 64

KV = dict[int, tuple[torch.Tensor, torch.Tensor]]


class RootKV(BoundedMemo):
    """Per-layer keys/values (one row) of shared starts of one model, by `root_key`."""

    def __init__(self) -> None:
        super().__init__(ENV_LIMIT, DEFAULT_LIMIT_MB, "root memo")


def root_key(states: torch.Tensor, layer_kwargs: list[dict[str, Any]], attention: str) -> str:
    """A digest of the root's layer-0 states (one row) and of everything its layers are called with."""
    digest = hashlib.sha1(f"root:{attention}".encode())
    feed_digest(digest, states)
    seen: set[int] = set()
    for kwargs in layer_kwargs:
        for name, value in kwargs.items():
            if name in CACHE_KWARGS:
                continue
            digest.update(name.encode())
            if id(value) in seen and value is not None:  # layers of one kind share their tables
                digest.update(b"same")
                continue
            seen.add(id(value))
            feed_digest(digest, value)
    return digest.hexdigest()

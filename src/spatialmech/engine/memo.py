"""A store for work the toolkit keeps instead of repeating (issue 21): bounded in bytes, least recently
used first out, forgotten when the model's weights change in place. Three memos use it: each picture's
encoder output (`encodings`), the logits of whole plain batches (`logits_memo`) and the keys/values of
the start every batch shares (`root_kv`)."""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import torch

from spatialmech.errors import UserInputError


def limit_bytes(env: str, default_mb: float, what: str) -> int:
    """The byte bound set by environment variable `env` (in MB; 0 turns the memo off)."""
    text = os.environ.get(env, str(default_mb)).strip()
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise UserInputError(f"{env}={text!r} is not a size in MB", f"set {env} to a number of MB (0 turns the {what} off)")
    return int(mb * 2**20)


def nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    return 0


def weights_version(model: torch.nn.Module) -> tuple[int, int]:
    """Changes whenever a parameter or buffer is written in place (torch counts writes per tensor) or
    replaced (`.to(dtype)`, `load_state_dict(assign=True)`: new storage, whose write count starts again)."""
    # a plain walk of the module tree: `parameters()`/`buffers()` cost 3x as much, and every memo access
    # pays this (a tensor shared by two modules is counted twice, the same way each time)
    written, where = 0, []
    stack = [model]
    while stack:
        module = stack.pop()
        for tensors in (module._parameters, module._buffers):
            for tensor in tensors.values():
                if tensor is not None:
                    written += tensor._version
                    where.append((tensor.data_ptr(), tensor.dtype))
        stack.extend(child for child in module._modules.values() if child is not None)
    return written, hash(tuple(where))


def feed_digest(digest: Any, value: Any) -> None:
    """Feed a hash with everything a forward reads from `value`, in a fixed order (tensors by dtype,
    shape and bytes): the key of memoised work."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().contiguous().cpu()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        digest.update(f"M{len(value)}".encode())
        for key in value:  # ModelOutput / dict: insertion order is the model's own, so stable
            digest.update(str(key).encode())
            feed_digest(digest, value[key])
    elif isinstance(value, (tuple, list)):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            feed_digest(digest, item)
    else:
        digest.update(repr(value).encode())


class BoundedMemo:
    """key -> value, at most `limit_bytes(env, default_mb)` of tensors, for one model's weights. Each
    subclass keeps one memo per model object (`of_model`), held weakly: the memo goes with the model."""

    _by_model: ClassVar[weakref.WeakKeyDictionary]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._by_model = weakref.WeakKeyDictionary()

    @classmethod
    def of_model(cls, model: torch.nn.Module) -> Any:
        """The memo of `model` (made on first use; shared by every adapter and engine on that model)."""
        memo = cls._by_model.get(model)
        if memo is None:
            memo = cls._by_model[model] = cls()
        return memo

    def __init__(self, env: str, default_mb: float, what: str) -> None:
        self.env, self.default_mb, self.what = env, default_mb, what
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._version: tuple[int, int] | None = None
        self.hits = 0
        self.misses = 0

    def limit(self) -> int:
        """The current bound (read each time, so a changed environment takes effect); 0 empties the memo."""
        limit = limit_bytes(self.env, self.default_mb, self.what)
        if limit == 0:
            self.clear()
        return limit

    def for_weights(self, model: torch.nn.Module) -> None:
        """Forget everything if `model`'s weights were written since the last call."""
        version = weights_version(model)
        if version != self._version:
            self.clear()
            self._version = version

    def get(self, key: Hashable) -> Any | None:
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key][0]
        self.misses += 1
        return None

    def put(self, key: Hashable, value: Any, limit: int) -> None:
        size = nbytes(value)
        if size > limit or key in self._items:
            return
        self._items[key] = (value, size)
        self._bytes += size
        while self._bytes > limit:
            _, (_, dropped) = self._items.popitem(last=False)
            self._bytes -= dropped

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

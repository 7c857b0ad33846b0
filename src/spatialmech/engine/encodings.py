"""Each picture through the image encoder once per model and process (issue 21).

The reproduce plan shows the same pictures again and again: the ablation conditions and the alpha
sweep score a picture many times, and the patching steps (last-token, criss-cross, backup), the probe
features and ablate-vision run the pictures of the behaviour steps once more, each of their clean and
counterfactual runs re-encoding them. On the bundled model a picture through the vision tower costs
about as much as a row through the LM, so this was half of some steps' time.

`PictureEncodings` keeps `encode_images`' output per picture (key: the image's pixels), each picture
encoded alone, and serves any batch as its pictures' outputs joined in row order
(`VLMAdapter.with_image_encodings`; equal logits to the raw inputs, a suite test per family). A
picture encoded alone gives the same numbers whichever step or batch asked first, so resumed runs and
runs in another order get the very same results. Alone costs no more than batched here (measured:
32 bundled-model pictures, 2.70 s one by one, 2.84 s as one batch; the encoder attends within each
picture anyway).

One memo per model object, kept while the model lives, and forgotten when its weights change in place
(an optimiser step, `load_state_dict`: torch's tensor version counters). Bounded in bytes
(SPATIALMECH_ENCODING_MEMO_MB, default 1024; least recently used pictures go first; 0 turns it
off: the raw inputs, pixels through the encoder in every forward).
Inputs from it carry no pixels, so `vision.out` cannot be hooked on them (`encode_items(...,
keep_pixels=True)` gives raw inputs).
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from spatialmech.errors import UserInputError
from spatialmech.models.base import ENCODED_IMAGES_KWARG, PIXELS_KWARG, BatchInputs, VLMAdapter

ENV_LIMIT = "SPATIALMECH_ENCODING_MEMO_MB"
DEFAULT_LIMIT_MB = 1024


def image_digest(image: Any) -> str:
    """A key for an image's pixels (equal pictures drawn twice, or opened twice, get one key)."""
    digest = hashlib.sha1(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def limit_bytes() -> int:
    text = os.environ.get(ENV_LIMIT, str(DEFAULT_LIMIT_MB)).strip()
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise UserInputError(f"{ENV_LIMIT}={text!r} is not a size in MB", f"set {ENV_LIMIT} to a number of MB (0 turns the picture memo off)")
    return int(mb * 2**20)


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def weights_version(model: torch.nn.Module) -> int:
    """Changes whenever a parameter or buffer is written in place (torch counts writes per tensor)."""
    return sum(t._version for t in model.parameters()) + sum(t._version for t in model.buffers())


class PictureEncodings:
    """The encoder output of every picture one model has seen, for `with_image_encodings`."""

    def __init__(self) -> None:
        # no reference to the model or adapter: `picture_encodings` keys memos weakly by the model
        self._memo: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._version: int | None = None
        self.hits = 0
        self.misses = 0

    def inputs(self, adapter: VLMAdapter, images: Sequence[Sequence[Any]], raw: BatchInputs) -> BatchInputs:
        """`raw` (built by `adapter` from `images`, per row) with its pixels replaced by the pictures'
        encoder outputs (always from the same model: use `picture_encodings(adapter)`)."""
        limit = limit_bytes()
        if limit == 0:
            self.clear()
        if limit == 0 or PIXELS_KWARG not in raw.model_kwargs or not any(images):
            return raw
        version = weights_version(adapter.model)
        if version != self._version:
            self.clear()
            self._version = version
        parts = [self._encoding(adapter, image, limit) for row in images for image in row]
        return adapter.with_image_encodings(raw, parts)

    def _encoding(self, adapter: VLMAdapter, image: Any, limit: int) -> Any:
        key = image_digest(image)
        if key in self._memo:
            self.hits += 1
            self._memo.move_to_end(key)
            return self._memo[key][0]
        self.misses += 1
        alone = adapter.build_inputs([[image]], [""])
        value = adapter.encode_images(alone).model_kwargs[ENCODED_IMAGES_KWARG]
        size = _nbytes(value)
        if size <= limit:
            self._memo[key] = (value, size)
            self._bytes += size
            while self._bytes > limit:
                _, (_, dropped) = self._memo.popitem(last=False)
                self._bytes -= dropped
        return value

    def clear(self) -> None:
        self._memo.clear()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes


_BY_MODEL: weakref.WeakKeyDictionary[torch.nn.Module, PictureEncodings] = weakref.WeakKeyDictionary()


def picture_encodings(adapter: VLMAdapter) -> PictureEncodings:
    """The memo of `adapter`'s model (one per model object, shared by every adapter and engine on it)."""
    memo = _BY_MODEL.get(adapter.model)
    if memo is None:
        memo = _BY_MODEL[adapter.model] = PictureEncodings()
    return memo

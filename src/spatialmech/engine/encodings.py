"""Each picture through the image encoder once per model and process (issue 21).

The reproduce plan shows the same pictures again and again: the ablation conditions and the alpha
sweep score a picture many times, and the patching steps (last-token, criss-cross, backup), the probe
features and ablate-vision run the pictures of the behaviour steps once more, each of their clean and
counterfactual runs re-encoding them. On the bundled model a picture through the vision tower costs
about as much as a row through the LM, so this was half of some steps' time.

`PictureEncodings` keeps `encode_images`' output per picture (key: the image's pixels), each picture
with the numbers it gets encoded alone, and serves any batch as its pictures' outputs joined in row
order (`VLMAdapter.with_image_encodings`; equal logits to the raw inputs, a suite test per family). A
picture's numbers are then the same whichever step or batch asked first, so resumed runs and runs in
another order get the very same results. A batch's new pictures go through the encoder together where
that was shown, bit for bit, to give each its alone numbers (`_encode`): on the bundled model a picture
costs 26-31 ms alone and 20-23 ms four at a time (building its inputs included).

One memo per model object, kept while the model lives, and forgotten when its weights change in place
(an optimiser step, `load_state_dict`: torch's tensor version counters). Bounded in bytes
(SPATIALMECH_ENCODING_MEMO_MB, default 1024; least recently used pictures go first; 0 turns it
off: the raw inputs, pixels through the encoder in every forward).
Inputs from it carry no pixels, so `vision.out` cannot be hooked on them (`encode_items(...,
keep_pixels=True)` gives raw inputs). `build` encodes the batch's new pictures first and then builds its inputs without
preprocessing any picture (`models.inputs.pixels_elsewhere`): half of building a batch was that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spatialmech.engine.memo import BoundedMemo
from spatialmech.models.base import ENCODED_IMAGES_KWARG, PIXELS_KWARG, BatchInputs, VLMAdapter
from spatialmech.models.inputs import pixels_elsewhere, split_like, tensor_leaves, to_device
from spatialmech.sharing import image_digest

ENV_LIMIT = "SPATIALMECH_ENCODING_MEMO_MB"
DEFAULT_LIMIT_MB = 1024


class PictureEncodings(BoundedMemo):
    """The encoder output of every picture one model has seen, for `with_image_encodings`."""

    # no reference to the model or adapter: `picture_encodings` keys memos weakly by the model
    def __init__(self) -> None:
        super().__init__(ENV_LIMIT, DEFAULT_LIMIT_MB, "picture memo")
        self._layouts: dict[tuple, list[Any] | bool] = {}  # picture shapes -> parts' layout, or False: alone

    def inputs(self, adapter: VLMAdapter, images: Sequence[Sequence[Any]], raw: BatchInputs) -> BatchInputs:
        """`raw` (built by `adapter` from `images`, per row) with its pixels replaced by the pictures'
        encoder outputs (always from the same model: use `picture_encodings(adapter)`)."""
        if PIXELS_KWARG not in raw.model_kwargs or (parts := self._parts(adapter, images)) is None:
            return raw
        return adapter.with_image_encodings(raw, parts)

    def build(self, adapter: VLMAdapter, images: Sequence[Sequence[Any]], prompts: Sequence[str],
              system: str | None = None) -> BatchInputs:
        """`adapter.build_inputs(...)` with every picture's encoder output from the memo (new pictures
        encoded first, alone), the batch's own pixels never computed (they would be replaced anyway)."""
        parts = self._parts(adapter, images)
        if parts is None:
            return adapter.build_inputs(images, prompts, system=system)
        with pixels_elsewhere():  # every picture's pixels are replaced by `parts`
            raw = adapter.build_inputs(images, prompts, system=system)
        if PIXELS_KWARG not in raw.model_kwargs:
            return raw
        return adapter.with_image_encodings(raw, parts)

    def _parts(self, adapter: VLMAdapter, images: Sequence[Sequence[Any]]) -> list[Any] | None:
        """Every picture's encoder output in row order (new ones encoded now), or None with the memo off."""
        limit = self.limit()
        if limit == 0 or not any(images):
            return None
        self.for_weights(adapter.model)
        flat = [image for row in images for image in row]
        keys = [image_digest(image) for image in flat]
        found: dict[str, Any] = {}
        new: dict[str, Any] = {}
        for key, image in zip(keys, flat):
            if key in found or key in new:  # asked again in this batch (counted as the memo serving it)
                self.hits += 1
            elif (value := self.get(key)) is not None:
                found[key] = value
            else:
                new[key] = image
        if new:
            for key, value in zip(new, self._encode(adapter, list(new.values()))):
                found[key] = value
                self.put(key, value, limit)
        return [found[key] for key in keys]

    def _encode(self, adapter: VLMAdapter, images: list[Any]) -> list[Any]:
        """Each picture's encoder output as it comes out alone. Several new pictures run through the
        encoder together where that was shown to give each the very numbers it gets alone: the first time
        a run of new pictures of these sizes comes, both are computed and compared bit for bit (kernels
        pick their blocking by shape, not by values, so one comparison stands for every later run of the
        same sizes). On the bundled model (CPU) they agree and the encoder runs ~20% faster batched;
        where they do not (a GPU's kernels may reduce in another order), pictures stay alone."""
        if len(images) == 1:
            return [self._alone(adapter, images[0])]
        shapes = tuple((image.mode, image.size) for image in images)
        layout = self._layouts.get(shapes)
        if layout is False:
            return [self._alone(adapter, image) for image in images]
        joined = adapter.encode_images(adapter.build_inputs([[image] for image in images], [""] * len(images)))
        joined = joined.model_kwargs[ENCODED_IMAGES_KWARG]
        if layout is not None:
            return split_like(joined, layout)
        alone = [self._alone(adapter, image) for image in images]
        try:
            same = _bitwise_equal(split_like(joined, alone), alone)
        except ValueError:  # laid out otherwise (e.g. a processor that pads a batch of pictures)
            same = False
        self._layouts[shapes] = [to_device(part, "meta") for part in alone] if same else False  # shapes only, no data
        return alone

    @staticmethod
    def _alone(adapter: VLMAdapter, image: Any) -> Any:
        return adapter.encode_images(adapter.build_inputs([[image]], [""])).model_kwargs[ENCODED_IMAGES_KWARG]

    def clear(self) -> None:
        super().clear()
        self._layouts = {}


def _bitwise_equal(pieces: Sequence[Any], alone: Sequence[Any]) -> bool:
    for piece, part in zip(pieces, alone):
        a, b = tensor_leaves(piece), tensor_leaves(part)
        if len(a) != len(b) or not all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b)):
            return False
    return True


def picture_encodings(adapter: VLMAdapter) -> PictureEncodings:
    """The memo of `adapter`'s model (one per model object, shared by every adapter and engine on it)."""
    return PictureEncodings.of_model(adapter.model)

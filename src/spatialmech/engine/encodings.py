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
keep_pixels=True)` gives raw inputs). `build` encodes the batch's new pictures first and then builds its inputs without
preprocessing any picture (`models.inputs.pixels_elsewhere`): half of building a batch was that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spatialmech.engine.memo import BoundedMemo
from spatialmech.models.base import ENCODED_IMAGES_KWARG, PIXELS_KWARG, BatchInputs, VLMAdapter
from spatialmech.models.inputs import pixels_elsewhere
from spatialmech.sharing import image_digest

ENV_LIMIT = "SPATIALMECH_ENCODING_MEMO_MB"
DEFAULT_LIMIT_MB = 1024


class PictureEncodings(BoundedMemo):
    """The encoder output of every picture one model has seen, for `with_image_encodings`."""

    # no reference to the model or adapter: `picture_encodings` keys memos weakly by the model
    def __init__(self) -> None:
        super().__init__(ENV_LIMIT, DEFAULT_LIMIT_MB, "picture memo")

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
        return [self._encoding(adapter, image, limit) for row in images for image in row]

    def _encoding(self, adapter: VLMAdapter, image: Any, limit: int) -> Any:
        key = image_digest(image)
        value = self.get(key)
        if value is None:
            alone = adapter.build_inputs([[image]], [""])
            value = adapter.encode_images(alone).model_kwargs[ENCODED_IMAGES_KWARG]
            self.put(key, value, limit)
        return value


def picture_encodings(adapter: VLMAdapter) -> PictureEncodings:
    """The memo of `adapter`'s model (one per model object, shared by every adapter and engine on it)."""
    return PictureEncodings.of_model(adapter.model)

"""Small helpers shared by the per-family adapter tests (LLaVA, Pixtral, Idefics3, InternVL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from spatialmech.models.base import VLMAdapter


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(60, 190, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def capture_rows(adapter: VLMAdapter, batch: Any, site: str) -> torch.Tensor:
    """The value of a site read at its module's output (all image sites of these families), one forward."""
    seen: dict[str, torch.Tensor] = {}
    point = adapter.hook_point(site)
    handle = point.module.register_forward_hook(lambda m, a, out: seen.__setitem__("v", out.detach().clone()))
    try:
        adapter.forward(batch)
    finally:
        handle.remove()
    return seen["v"]


@contextmanager
def vision_attention_zeroed(model: nn.Module) -> Iterator[None]:
    """Zero the vision tower's attention outputs so each patch's features depend on its pixels only."""
    handles = [
        module.register_forward_hook(lambda m, a, out: (torch.zeros_like(out[0]), *out[1:]))
        for name, module in model.named_modules()
        if ("vision" in name) and type(module).__name__.endswith("Attention")
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def paint(image: Image.Image, box_px: tuple[int, int, int, int], color: tuple[int, int, int] = (250, 5, 5)) -> Image.Image:
    """A copy of `image` with the pixel box (x0, y0, x1, y1), ends exclusive, filled with `color`."""
    pixels = np.array(image)
    x0, y0, x1, y1 = box_px
    pixels[y0:y1, x0:x1] = color
    return Image.fromarray(pixels)


def changed_image_rows(adapter: VLMAdapter, image: Image.Image, edited: Image.Image, site: str = "projector.out") -> list[int]:
    """Indices of the rows of `site` that differ between the two images once the vision tower no longer
    mixes tokens (attention zeroed): the tokens whose pixels the edit touched."""
    with vision_attention_zeroed(adapter.model):
        clean = capture_rows(adapter, adapter.build_inputs([[image]], ["Describe the image."]), site)
        other = capture_rows(adapter, adapter.build_inputs([[edited]], ["Describe the image."]), site)
    return ((clean - other).abs().amax(dim=1) > 1e-6).nonzero().flatten().tolist()

"""Tiny real models (Qwen2-VL, Gemma3, LLaVA) and stimulus batches for engine tests.

The reference implementations here use raw PyTorch hooks on purpose: they are the naive loop the
engine must equal. Only tests may do this; experiments go through the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from PIL import Image, ImageDraw

from spatialmech.models.base import BatchInputs, VLMAdapter
from spatialmech.models.registry import available_families

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (10, 10, 10), (150, 75, 0), (128, 128, 128)]
PROMPTS = ["The color of the square to the left of the green square is", "The color of the square above the red square is"]


def three_squares(size: int, colours: list[tuple[int, int, int]], vertical: bool = False) -> Image.Image:
    """Three equal squares in a row (or column) on white: the paper's Squares layout, roughly."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    side = size // 6
    for i, colour in enumerate(colours):
        a = side // 2 + i * 2 * side
        b = size // 2 - side // 2
        box = (b, a, b + side, a + side) if vertical else (a, b, a + side, b + side)
        draw.rectangle(box, fill=colour)
    return image


def square_pictures(adapter: VLMAdapter, n: int) -> list[Image.Image]:
    """`n` different three-square pictures on the adapter's own grid, alternately in a row and a column."""
    size = adapter.grid_spec().image_size
    return [three_squares(size, COLOURS[i : i + 3], vertical=bool(i % 2)) for i in range(n)]


@pytest.fixture(scope="module", params=sorted(available_families()))
def family_adapter(request: pytest.FixtureRequest) -> VLMAdapter:
    """Every registered family's tiny model, fresh per test module (tests may change its weights)."""
    torch.manual_seed(0)
    return available_families()[request.param].tiny()


@dataclass
class Pairs:
    """A batch of clean targets and counterfactual sources (colours reversed), row-aligned."""

    target: BatchInputs
    source: BatchInputs
    target_images: list[Image.Image]
    source_images: list[Image.Image]
    prompts: list[str]


def make_pairs(adapter: VLMAdapter, n: int, seed: int = 0) -> Pairs:
    gen = torch.Generator().manual_seed(seed)
    size = adapter.grid_spec().image_size
    targets, sources, prompts = [], [], []
    for i in range(n):
        pick = torch.randperm(len(COLOURS), generator=gen)[:3].tolist()
        colours = [COLOURS[k] for k in pick]
        vertical = bool(i % 2)
        targets.append(three_squares(size, colours, vertical))
        sources.append(three_squares(size, colours[::-1], vertical))
        # different prompt lengths in one batch exercise left padding
        prompts.append(PROMPTS[i % 2] + (" now" * (i % 3)))
    return Pairs(
        adapter.build_inputs([[im] for im in targets], prompts),
        adapter.build_inputs([[im] for im in sources], prompts),
        targets,
        sources,
        prompts,
    )


def _build(family: str) -> VLMAdapter:
    from spatialmech.models.registry import adapter_class

    torch.manual_seed(0)
    cls = adapter_class(family)
    # three layers where the family's tiny() takes a size, so sweeps have a middle layer
    return cls.tiny(num_layers=3) if family in ("qwen2-vl", "gemma3") else cls.tiny()


@pytest.fixture(scope="session")
def qwen() -> VLMAdapter:
    return _build("qwen2-vl")


@pytest.fixture(scope="session")
def gemma() -> VLMAdapter:
    return _build("gemma3")


@pytest.fixture(scope="session")
def llava() -> VLMAdapter:
    return _build("llava")


@pytest.fixture(scope="session", params=["qwen2-vl", "gemma3", "llava"])
def adapter(request: pytest.FixtureRequest) -> VLMAdapter:
    return request.getfixturevalue({"qwen2-vl": "qwen", "gemma3": "gemma", "llava": "llava"}[request.param])


# ------------------------------------------------------------------------------------------ raw-hook references

Edit = Callable[[torch.Tensor], torch.Tensor]


def raw_logits(adapter: VLMAdapter, inputs: BatchInputs, module: torch.nn.Module, when: str, edit: Edit) -> torch.Tensor:
    """Last-position logits with `edit` applied to a module's input (pre-hook) or output (hook)."""
    if when == "input":
        handle = module.register_forward_pre_hook(lambda m, args: (edit(args[0]), *args[1:]))
    else:
        handle = module.register_forward_hook(
            lambda m, args, out: (edit(out[0]), *out[1:]) if isinstance(out, tuple) else edit(out)
        )
    try:
        return adapter.forward(inputs)
    finally:
        handle.remove()


def raw_capture(adapter: VLMAdapter, inputs: BatchInputs, module: torch.nn.Module, when: str) -> torch.Tensor:
    seen: dict[str, torch.Tensor] = {}

    def keep(value: torch.Tensor) -> torch.Tensor:
        seen["v"] = value.detach().clone()
        return value

    raw_logits(adapter, inputs, module, when, keep)
    return seen["v"]


def layer_module(adapter: VLMAdapter, kind: str, layer: int) -> tuple[torch.nn.Module, str]:
    """The module and hook kind of resid_pre/resid_post of a layer, from the model itself (not hook_point)."""
    block = adapter.model.get_decoder().layers[layer]
    return block, ("input" if kind == "resid_pre" else "output")

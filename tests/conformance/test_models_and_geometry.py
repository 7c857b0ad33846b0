"""Model loading and per-family geometry as the authors' (issue 17 points 2 and 3), on tiny random
models of the real architectures sized like the real checkpoints' grids."""

from __future__ import annotations

import pytest
import torch

from spatialmech.cli import main
from spatialmech.models.gemma3 import Adapter as Gemma3
from spatialmech.models.llava import Adapter as Llava
from spatialmech.models.pixtral import Adapter as Pixtral
from spatialmech.models.qwen2_vl import Adapter as Qwen2VL
from spatialmech.models.registry import load_model, set_grid
from spatialmech.tasks import get_task
from spatialmech.tasks.geometry import GEMMA, PIXTRAL, QWEN, GridGeometry

REAL_GRIDS = {
    "qwen2-vl": (lambda: Qwen2VL.tiny(tokens_per_side=12), QWEN),
    "gemma3": (lambda: Gemma3.tiny(tokens_per_side=16, pool_kernel=4, patch_size=14), GEMMA),
    "pixtral": (lambda: Pixtral.tiny(max_side=1024, patch_size=16), PIXTRAL),
}


@pytest.mark.parametrize("family", list(REAL_GRIDS))
def test_geometry_per_family_and_the_processor_keeps_it(family):
    """Follows shared/experiment_config.py (GEOM) and shared/GEOMETRY.md: Qwen2-VL (12, 28, 2, 2),
    Gemma3 (16, 56, 3, 3), Pixtral (15, 16, 2, 2); images drawn at N x px and seen as N x N tokens."""
    build, preset = REAL_GRIDS[family]
    adapter = build()
    geometry = GridGeometry.from_grid_spec(adapter.grid_spec())
    fields = ("tokens_per_side", "pixels_per_token", "object_tokens", "spacing_tokens")
    assert [getattr(geometry, f) for f in fields] == [getattr(preset, f) for f in fields]
    assert geometry.family == family and geometry.note == ""
    task = get_task("squares", geometry=adapter.grid_spec())
    item = task.items(1)[0]
    image = task.image(item)
    side = preset.tokens_per_side * preset.pixels_per_token
    assert image.size == (side, side) == {"qwen2-vl": (336, 336), "gemma3": (896, 896), "pixtral": (240, 240)}[family]
    tokens = adapter.build_inputs([[image]], [item.prompt]).images[0][0]
    assert tokens.grid_shapes[-1] == (preset.tokens_per_side, preset.tokens_per_side)
    assert item.objects[0].box_cells[3] - item.objects[0].box_cells[1] == preset.object_tokens


def test_pixtral_palette_and_object_set():
    """Follows shared/palette.py (COLOR_RGB_PIXTRAL: Orange (255, 165, 0) for Brown) and
    behavioral_analysis/src/tasks/objects.py (Pixtral drops 'bomb': 7 objects, 840 items)."""
    pixtral = Pixtral.tiny(max_side=1024, patch_size=16).grid_spec()
    squares = get_task("squares", geometry=pixtral)
    assert squares.attributes == ("Red", "Green", "Blue", "Black", "Orange", "Gray") and len(squares) == 480
    orange = next(i for i in squares.items() if i.answer == "Orange")
    assert orange.objects[orange.target].color == (255, 165, 0)
    shapes = get_task("shapes", geometry=pixtral)
    cross = next(i for i in shapes.items() if "Orange" in i.meta["attributes"])
    assert ((255, 165, 0), "cross") in [(o.color, o.shape) for o in cross.objects]
    objects = get_task("objects", geometry=pixtral)
    assert "bomb" not in objects.attributes and len(objects) == 840
    assert len(get_task("objects", geometry=QWEN)) == 1344 and "Brown" in get_task("squares", geometry=QWEN).attributes


def test_grid_option_and_capped_processors(capsys):
    """--grid N on any family; a processor that cannot keep N gets the largest it allows, and says so."""
    qwen = Qwen2VL.tiny(tokens_per_side=12)
    set_grid(qwen, 8)
    spec = qwen.grid_spec()
    assert (spec.tokens_per_side, spec.note) == (8, None)
    image = get_task("squares", geometry=spec).image(get_task("squares", geometry=spec).items(1)[0])
    assert image.size == (224, 224) and qwen.build_inputs([[image]], ["x"]).images[0][0].grid_shapes[-1] == (8, 8)
    small = Qwen2VL.tiny(tokens_per_side=6)  # max_pixels = 168^2: the 12x12 preset cannot be kept
    set_grid(small, None)
    assert small.grid_spec().tokens_per_side == 6 and "not the qwen preset's 12" in capsys.readouterr().err
    assert "not the qwen preset's 12" in GridGeometry.from_grid_spec(small.grid_spec()).note
    gemma = Gemma3.tiny(tokens_per_side=16, pool_kernel=4, patch_size=14)
    set_grid(gemma, 8)
    assert gemma.grid_spec().tokens_per_side == 16 and "not --grid 8" in capsys.readouterr().err
    pixtral = Pixtral.tiny(max_side=1024, patch_size=16)
    set_grid(pixtral, 20)
    assert pixtral.grid_spec().tokens_per_side == 20
    set_grid(pixtral, 100)
    assert pixtral.grid_spec().tokens_per_side == 64 and "not --grid 100" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("build", "saved", "expected"),
    [
        (lambda: Qwen2VL.tiny(), torch.bfloat16, torch.float32),
        (lambda: Gemma3.tiny(), torch.bfloat16, torch.float32),
        (lambda: Pixtral.tiny(), torch.float32, torch.bfloat16),
        (lambda: Llava.tiny(), torch.bfloat16, torch.bfloat16),  # not a paper family: the checkpoint's
    ],
    ids=["qwen2-vl", "gemma3", "pixtral", "llava"],
)
def test_default_dtype_per_family(tmp_path, build, saved, expected):
    """Follows shared/models.py (DEFAULT_DTYPE: fp32 Qwen2-VL and Gemma3, bf16 Pixtral); --dtype overrides."""
    adapter = build()
    adapter.model.to(saved)
    adapter.save_pretrained(str(tmp_path))
    assert load_model(str(tmp_path)).model.dtype == expected
    assert load_model(str(tmp_path), dtype=torch.float16).model.dtype == torch.float16


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_a_one_line_exit_2(capsys):
    assert main(["eval", "--task", "squares", "--n", "1", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no CUDA" in err and "--device auto or cpu" in err

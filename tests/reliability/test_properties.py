"""Property-based checks (hypothesis) of the image-token maps and of the real-data loaders.

Grid mapping, for random image sizes and batches: every LM image token belongs to exactly one cell of
one tile, every cell of every tile's raster grid has exactly one token, the cells of a tile split its
rectangle of the image without gaps or overlaps, and the views together cover the image (the global
view all of it; the crops of tiled families the whole image between them). Qwen2-VL's dynamic
resolution gives a different grid per size; Idefics3 and InternVL add tiles per size.

Loaders, for random JSON of any shape: they either load or raise a one-line `UserInputError`,
never another exception.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from reliability_helpers import WHATSUP_FIXTURE

from spatialmech.errors import EXIT_BAD_INPUT, UserInputError
from spatialmech.models.base import ImageTokens
from spatialmech.models.registry import adapter_class
from spatialmech.tasks import get_task
from spatialmech.tasks.geometry import GridGeometry

FAMILIES = ("qwen2-vl", "qwen2.5-vl", "idefics3", "internvl", "pixtral", "gemma3", "paligemma", "llava")
RESIZE_WHOLE_IMAGE = {"qwen2-vl", "qwen2.5-vl", "idefics3", "internvl", "pixtral", "gemma3", "paligemma"}  # llava centre-crops
TILED = {"idefics3", "internvl"}
EXAMPLES = 12
TOL = 1e-5

_adapters: dict[str, object] = {}


def tiny(family: str):
    """One tiny adapter per family for the module (hypothesis forbids function-scoped fixtures)."""
    if family not in _adapters:
        if family == "qwen2-vl":  # a larger pixel budget, so dynamic resolution spans many grid shapes
            _adapters[family] = adapter_class(family).tiny(0, tokens_per_side=12)
        else:
            _adapters[family] = adapter_class(family).tiny(0)
    return _adapters[family]


# Sizes with aspect ratios every family's processor takes (extreme ones are refused: test_bad_data).
side = st.integers(min_value=8, max_value=480)
image_size = st.tuples(side, side).filter(lambda s: max(s) / min(s) <= 6)
batches = st.lists(st.lists(image_size, min_size=1, max_size=2), min_size=1, max_size=2)


def tile_rectangle(tokens: ImageTokens, tile: int) -> tuple[float, float, float, float]:
    boxes = tokens.boxes[tokens.tiles == tile]
    return (float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max()))


def area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def check_tile_is_a_raster_partition(tokens: ImageTokens, tile: int) -> None:
    n_rows, n_cols = tokens.grid_shapes[tile]
    mask = tokens.tiles == tile
    cells = list(zip(tokens.rows[mask].tolist(), tokens.cols[mask].tolist()))
    assert sorted(cells) == [(r, c) for r in range(n_rows) for c in range(n_cols)], "each cell exactly once"
    table = tokens.cell_positions(tile)
    assert (table >= 0).all()
    boxes = torch.zeros(n_rows, n_cols, 4)
    boxes[tokens.rows[mask], tokens.cols[mask]] = tokens.boxes[mask]
    assert ((boxes >= -TOL) & (boxes <= 1 + TOL)).all()
    # columns share x-extents and rows y-extents; neighbours abut: a grid of the tile's rectangle
    assert torch.allclose(boxes[:, :, 0], boxes[:1, :, 0].expand(n_rows, -1), atol=TOL)
    assert torch.allclose(boxes[:, :, 1], boxes[:, :1, 1].expand(-1, n_cols), atol=TOL)
    assert torch.allclose(boxes[:, :-1, 2], boxes[:, 1:, 0], atol=TOL)
    assert torch.allclose(boxes[:-1, :, 3], boxes[1:, :, 1], atol=TOL)
    assert (boxes[..., 2] >= boxes[..., 0] - TOL).all() and (boxes[..., 3] >= boxes[..., 1] - TOL).all()


def check_image_tokens(family: str, tokens: ImageTokens) -> None:
    assert tokens.positions.numel() == tokens.tiles.numel() == tokens.rows.numel() == tokens.cols.numel() == tokens.boxes.shape[0]
    assert sum(r * c for r, c in tokens.grid_shapes) == len(tokens), "tokens = sum of the tiles' cells"
    for tile in range(len(tokens.grid_shapes)):
        check_tile_is_a_raster_partition(tokens, tile)
    if family in RESIZE_WHOLE_IMAGE:
        main = tile_rectangle(tokens, tokens.main_tile)
        assert main == pytest.approx((0.0, 0.0, 1.0, 1.0), abs=TOL), "the global view covers the whole image"
    crops = [tile_rectangle(tokens, t) for t in range(len(tokens.grid_shapes)) if t != tokens.main_tile]
    if crops:
        assert family in TILED
        assert sum(area(c) for c in crops) == pytest.approx(1.0, abs=1e-4), "crops cover the image once"
        for i, a in enumerate(crops):
            for b in crops[i + 1 :]:
                overlap = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
                assert area(overlap) < 1e-6, "crops do not overlap"


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(sizes=batches)
def test_every_image_token_maps_to_one_cell(family, sizes):
    adapter = tiny(family)
    images = [[Image.new("RGB", size, (i * 40, 100, 200)) for i, size in enumerate(row)] for row in sizes]
    prompts = [f"Which object is left{' of the cup' * b}?" for b in range(len(sizes))]  # unequal lengths: padding
    inputs = adapter.build_inputs(images, prompts)
    seq_len = inputs.seq_len
    mask = inputs.model_kwargs["attention_mask"]
    for b, row in enumerate(inputs.images):
        assert len(row) == len(sizes[b])
        positions = torch.cat([tokens.positions for tokens in row])
        assert positions.unique().numel() == positions.numel(), "no LM position is two image tokens"
        assert ((positions >= 0) & (positions < seq_len)).all() and mask[b, positions].all()
        assert (positions[1:] > positions[:-1]).all(), "tokens in LM order, images in prompt order"
        for tokens in row:
            check_image_tokens(family, tokens)
    assert len(inputs.image_rows()) == sum(len(t) for row in inputs.images for t in row)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(size=image_size)
def test_qwen2_vl_dynamic_resolution_grid(size):
    """Qwen2-VL's grid follows the image: one LM token per 28 px square of the resized image, in the
    aspect ratio of the image (to the nearest token), within the processor's pixel budget."""
    adapter = tiny("qwen2-vl")
    inputs = adapter.build_inputs([[Image.new("RGB", size)]], ["Where is the cup?"])
    (tokens,) = inputs.images[0]
    n_rows, n_cols = tokens.grid_shapes[0]
    ids = inputs.model_kwargs["input_ids"][0]
    assert int((ids == adapter.image_token_id).sum()) == n_rows * n_cols == len(tokens)
    _, h, w = inputs.model_kwargs["image_grid_thw"][0].tolist()
    assert (h, w) == (n_rows * adapter.merge_size, n_cols * adapter.merge_size)
    budget = adapter.image_processor.size["longest_edge"]
    assert (n_rows * 28) * (n_cols * 28) <= budget
    width, height = size
    assert abs(n_cols / n_rows - width / height) <= (width / height) * (1 / n_rows + 1 / n_cols) + 1e-9


@settings(max_examples=40, deadline=None, derandomize=True)
@given(tokens=st.integers(5, 64), pixels=st.integers(1, 40))
def test_synthetic_geometry_slots_fit_any_model_grid(tokens, pixels):
    """The paper's object layout on any grid of at least 5 tokens: three disjoint objects inside the grid,
    token-aligned, and px <-> cells round trips."""
    geometry = GridGeometry.from_grid_spec({"tokens_per_side": tokens, "pixels_per_token": pixels})
    for axis in ("horizontal", "vertical"):
        slots = [geometry.slot_cells(axis, s) for s in range(3)]
        for r0, c0, r1, c1 in slots:
            assert 0 <= r0 < r1 <= tokens and 0 <= c0 < c1 <= tokens
        covered = [(r, c) for r0, c0, r1, c1 in slots for r in range(r0, r1) for c in range(c0, c1)]
        assert len(covered) == len(set(covered))
        for cells in slots:
            assert geometry.px_to_cells(geometry.cells_to_px(cells)) == cells


# ------------------------------------------------------------------------------------------ loaders

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**13) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
words = st.sampled_from(["mug", "chair", "dog", "cat", "person", "dining table", "../x", "", "a b", "é"])
relations = st.sampled_from(["left_of", "right_of", "on", "under", "beside", ""])
controlled_entry = st.fixed_dictionaries(
    {"image_path": st.one_of(
        st.builds(lambda o, r, f: f"data/controlled_images/{o}_{r}_{f}.jpeg", words, relations, words),
        st.sampled_from(["data/controlled_images/mug_left_of_chair.jpeg", "/etc/passwd", "../../x_left_of_y.jpeg"]),
        json_values),
     "caption_options": st.one_of(st.lists(st.text(max_size=20), max_size=3), json_values)}
)
caption = st.builds(lambda s, r, o: f"A photo of a {s} {r} a {o}", words,
                    st.sampled_from(["to the left of", "to the right of", "above", "below", "behind", "near"]), words)
qa_entry = st.lists(st.one_of(st.sampled_from([139, 285, 632, 724, "139", "x"]), caption, json_values), min_size=0, max_size=4)
bbox = st.lists(st.one_of(st.floats(-10, 100, allow_nan=False), st.integers(-10, 100), st.text(max_size=2)), min_size=3, max_size=5)
instances = st.fixed_dictionaries({
    "images": st.lists(st.fixed_dictionaries({"id": st.sampled_from([139, 285, 632, "139"]),
                                              "width": st.integers(0, 90), "height": st.one_of(st.integers(0, 90), json_values)}),
                       max_size=3),
    "annotations": st.lists(st.fixed_dictionaries({"image_id": st.sampled_from([139, 285, 632, None]),
                                                   "category_id": st.sampled_from([1, 17, 18, 62, 99]), "bbox": bbox}),
                            max_size=4),
    "categories": st.lists(st.fixed_dictionaries({"id": st.sampled_from([1, 17, 18, 62, "1"]),
                                                  "name": st.sampled_from(["person", "cat", "dog", "chair", "", 5])}),
                           max_size=4),
})

LOADER_FILES = {
    "whatsup": ("data/controlled_images_dataset.json", st.one_of(st.lists(controlled_entry, max_size=5), json_values)),
    "coco-spatial-questions": ("data/coco_qa_two_obj.json", st.one_of(st.lists(qa_entry, max_size=5), json_values)),
    "coco-spatial-annotations": ("data/annotations/instances_val2017.json", st.one_of(instances, json_values)),
}


@pytest.fixture(scope="module")
def scratch_data():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(shutil.copytree(WHATSUP_FIXTURE, Path(folder) / "whatsup"))


@pytest.mark.parametrize("loader", sorted(LOADER_FILES))
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_loaders_load_or_raise_one_line_errors(loader, scratch_data, data):
    relative, strategy = LOADER_FILES[loader]
    original = (WHATSUP_FIXTURE / relative).read_text()
    content = data.draw(strategy)
    (scratch_data / relative).write_text(json.dumps(content))
    task_name = "whatsup" if loader == "whatsup" else "coco-spatial"
    try:
        task = get_task(task_name, data_root=str(scratch_data))
        items = task.all_items()
        for item in items[:2]:
            image = task.image(item)
            assert image.size == tuple(item.image_size)
    except UserInputError as exc:
        assert exc.exit_code == EXIT_BAD_INPUT
        assert "\n" not in str(exc) and "; " in str(exc)
    finally:
        (scratch_data / relative).write_text(original)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_images_is_a_text_only_prompt(family):
    """A prompt without an image is a text-only input (used e.g. as a no-vision baseline), on every
    family: no image tokens, one next-token distribution. (A checkpoint whose template cannot place an
    image that *is* given is the error case: test_bad_models.)"""
    adapter = tiny(family)
    inputs = adapter.build_inputs([[]], ["What is left of the cup?"])
    assert inputs.images == [[]] and inputs.image_rows() == []
    logits = adapter.forward(inputs)
    assert logits.shape[0] == 1 and torch.isfinite(logits).all()

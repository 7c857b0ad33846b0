"""The contract every VLM adapter must meet, run on each family's `Adapter.tiny()`.

Parametrized (through the `family` fixture in conftest.py) over every family in
`registry.available_families()`, so an adapter joins this suite by existing. Hooks here are plain torch
hooks that follow `HookPoint`'s documented semantics (and `BatchInputs.row_order`), the same contract
the engine implements.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from spatialmech.errors import UserInputError
from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT, BatchInputs, HookPoint, VLMAdapter
from spatialmech.models.registry import load_model

# ------------------------------------------------------------------------------------- test hooks


def _read(point: HookPoint, args: tuple, kwargs: dict, output: Any) -> torch.Tensor:
    if point.when == "input":
        return kwargs[point.input_kwarg] if point.input_kwarg else args[0]
    return output[0] if isinstance(output, tuple) else output


def _to_lm_order(value: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    return value if order is None else value[order]


def _from_lm_order(module_value: torch.Tensor, new: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    if order is None:
        return new
    out = module_value.clone()
    out[order] = new
    return out


@contextmanager
def hooked(
    point: HookPoint, batch: BatchInputs, edit: Callable[[torch.Tensor], torch.Tensor | None]
) -> Iterator[None]:
    """Call `edit(value in LM order)` at the site; if it returns a tensor, that replaces the value."""
    order = batch.row_order.get(point.site)

    def replace(args: tuple, kwargs: dict, output: Any) -> tuple[tuple, dict, Any]:
        module_value = _read(point, args, kwargs, output)
        new = edit(_to_lm_order(module_value, order))
        if new is None:
            return args, kwargs, output
        new = _from_lm_order(module_value, new, order)
        if point.when == "input":
            if point.input_kwarg:
                return args, {**kwargs, point.input_kwarg: new}, output
            return (new, *args[1:]), kwargs, output
        return args, kwargs, (new, *output[1:]) if isinstance(output, tuple) else new

    if point.when == "input":

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            new_args, new_kwargs, _ = replace(args, kwargs, None)
            return new_args, new_kwargs

        handle = point.module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            return replace(args, kwargs, output)[2]

        handle = point.module.register_forward_hook(post_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def capture(adapter: VLMAdapter, batch: BatchInputs, sites: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Values of `sites` (LM order) and the last-token logits of one forward pass."""
    values: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        for site in sites:
            point = adapter.hook_point(site)
            stack.enter_context(hooked(point, batch, lambda v, s=site: values.__setitem__(s, v.detach().clone())))
        logits = adapter.forward(batch)
    return values, logits


# ------------------------------------------------------------------------------------- inputs


def square_image(adapter: VLMAdapter, seed: int = 0) -> Image.Image:
    """A noise image at the model's native square input size (so no resampling blurs cell borders)."""
    size = adapter.grid_spec().image_size
    pixels = np.random.default_rng(seed).integers(60, 190, size=(size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def paint_cell(image: Image.Image, row: int, col: int, pixels_per_token: int) -> Image.Image:
    painted = np.array(image)
    y0, x0 = row * pixels_per_token, col * pixels_per_token
    painted[y0 : y0 + pixels_per_token, x0 : x0 + pixels_per_token] = (250, 5, 5)
    return Image.fromarray(painted)


def two_prompt_batch(adapter: VLMAdapter) -> tuple[list[list[Image.Image]], list[str]]:
    images = [[square_image(adapter, 1)], [square_image(adapter, 2)]]
    prompts = ["Red", "The color of the square to the left of the green square is"]
    return images, prompts


# ------------------------------------------------------------------------------------- tests


def test_image_token_map_is_consistent(tiny_adapter: VLMAdapter) -> None:
    images, prompts = two_prompt_batch(tiny_adapter)
    batch = tiny_adapter.build_inputs(images, prompts, SYNTHETIC_SYSTEM_PROMPT)
    input_ids = batch.model_kwargs["input_ids"]
    mask = batch.model_kwargs["attention_mask"]
    grid = tiny_adapter.grid_spec()
    assert batch.batch_size == 2 and input_ids.shape[0] == 2
    assert bool(mask[:, -1].all()), "left padding: the last position is real in every row"
    for row, per_row in enumerate(batch.images):
        assert len(per_row) == 1
        tokens = per_row[0]
        positions = tokens.positions
        assert torch.equal(positions, positions.sort().values) and positions.unique().numel() == len(tokens)
        assert bool(mask[row, positions].all())
        assert all(len(t) == len(tokens) for t in (tokens.tiles, tokens.rows, tokens.cols, tokens.boxes))
        assert sum(r * c for r, c in tokens.grid_shapes) == len(tokens)
        assert float(tokens.boxes.min()) >= 0.0 and float(tokens.boxes.max()) <= 1.0
        main = tokens.cell_positions()
        assert bool((main >= 0).all()), "every cell of the main grid has a token"
        if len(tokens.grid_shapes) == 1:
            assert tokens.grid_shapes[0] == (grid.tokens_per_side, grid.tokens_per_side)
        # The text after the image and the generation prompt come after every image token.
        assert int(positions.max()) < input_ids.shape[1] - 1


def test_every_site_has_the_documented_shape(tiny_adapter: VLMAdapter) -> None:
    images, prompts = two_prompt_batch(tiny_adapter)
    batch = tiny_adapter.build_inputs(images, prompts, SYNTHETIC_SYSTEM_PROMPT)
    values, _ = capture(tiny_adapter, batch, tiny_adapter.sites())
    n_image_tokens = len(batch.image_rows())
    for site, value in values.items():
        point = tiny_adapter.hook_point(site)
        if point.space == "sequence":
            assert value.shape == (batch.batch_size, batch.seq_len, tiny_adapter.hidden_size), site
        else:
            assert value.ndim == 2, site
            assert value.shape[0] == n_image_tokens * point.rows_per_lm_token, site
    assert values["projector.out"].shape[1] == tiny_adapter.hidden_size
    assert len(values) == 2 + 4 * tiny_adapter.num_layers


def test_projector_out_is_lm_layer0_input_at_image_positions(tiny_adapter: VLMAdapter) -> None:
    images, prompts = two_prompt_batch(tiny_adapter)
    batch = tiny_adapter.build_inputs(images, prompts, SYNTHETIC_SYSTEM_PROMPT)
    values, _ = capture(tiny_adapter, batch, ["projector.out", "lm.resid_pre.0"])
    rows = batch.image_rows()
    gathered = torch.stack([values["lm.resid_pre.0"][b, batch.images[b][i].positions[t]] for b, i, t in rows])
    torch.testing.assert_close(values["projector.out"].to(gathered.dtype), gathered, rtol=1e-5, atol=1e-5)
    # Not vacuous: image tokens carry the image (a zero-initialised projector would pass the above).
    first = [k for k, (b, _, _) in enumerate(rows) if b == 0]
    second = [k for k, (b, _, _) in enumerate(rows) if b == 1]
    projected = values["projector.out"]
    assert float(projected.abs().amax()) > 0
    assert not torch.allclose(projected[first], projected[second])


@contextmanager
def vision_attention_removed(adapter: VLMAdapter) -> Iterator[int]:
    """Zero every vision-tower attention output, so the tower no longer mixes tokens."""
    handles = []
    for name, module in adapter.model.named_modules():
        if type(module).__name__.endswith("Attention") and ("vision" in name or "visual" in name):

            def zero(module: nn.Module, args: tuple, output: Any) -> Any:
                if isinstance(output, tuple):
                    return (torch.zeros_like(output[0]), *output[1:])
                return torch.zeros_like(output)

            handles.append(module.register_forward_hook(zero))
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


def test_grid_mapping_paint_one_cell(tiny_adapter: VLMAdapter) -> None:
    """Paint one token cell's pixel block; exactly the tokens mapped to that cell change at projector.out.

    What is checked: vision towers attend globally, so in a real forward pass one painted cell moves
    every token. We therefore remove the only cross-token operation, the vision attention (outputs
    zeroed by hooks on every `*Attention` module under the vision tower), and keep everything else:
    patch embedding, position embeddings, per-token norms/MLPs, pooling/merging/pixel-shuffle and the
    projector. What is left maps a pixel block to tokens purely by geometry, which is what
    `ImageTokens` claims. On the single-view grid (the native square input: no resampling), the
    changed projector rows must be exactly the tokens whose cell is the painted one. For tiled families,
    tokens of other views whose box overlaps the painted box (with one token of slack for resampling)
    may change too, nothing else; the painted cell's own token in the main view must change.
    """
    grid = tiny_adapter.grid_spec()
    n = grid.tokens_per_side
    assert n >= 3, "tiny grids must be at least 3x3 for this test"
    cell_row, cell_col = 1, 2  # off-diagonal: a transposed map fails
    base = square_image(tiny_adapter, 3)
    painted = paint_cell(base, cell_row, cell_col, grid.pixels_per_token)
    with vision_attention_removed(tiny_adapter) as n_removed:
        assert n_removed > 0, "found no vision attention modules to remove"
        before = tiny_adapter.build_inputs([[base]], ["Describe the image."])
        after = tiny_adapter.build_inputs([[painted]], ["Describe the image."])
        clean, _ = capture(tiny_adapter, before, ["projector.out"])
        edited, _ = capture(tiny_adapter, after, ["projector.out"])
    changed = (clean["projector.out"] - edited["projector.out"]).abs().amax(dim=1) > 1e-6
    tokens = before.images[0][0]
    cell_box = torch.tensor([cell_col / n, cell_row / n, (cell_col + 1) / n, (cell_row + 1) / n])
    main = tokens.tiles == tokens.main_tile
    single_view = len(tokens.grid_shapes) == 1
    for t in range(len(tokens)):
        box = tokens.boxes[t]
        if single_view or bool(main[t]):
            is_cell = int(tokens.rows[t]) == cell_row and int(tokens.cols[t]) == cell_col
            if single_view:
                assert bool(changed[t]) == is_cell, f"token {t} at cell ({int(tokens.rows[t])}, {int(tokens.cols[t])})"
            elif is_cell:
                assert bool(changed[t]), "the painted cell's token of the main view did not change"
        if bool(changed[t]) and not single_view:
            rows_, cols_ = tokens.grid_shapes[int(tokens.tiles[t])]
            slack = torch.tensor([-1.0, -1.0, 1.0, 1.0]) * (box[2] - box[0])
            grown = cell_box + slack
            overlaps = box[0] < grown[2] and grown[0] < box[2] and box[1] < grown[3] and grown[1] < box[3]
            assert overlaps, f"token {t} of tile {int(tokens.tiles[t])} ({rows_}x{cols_}) changed far from the cell"


SELF_PATCH_SITES = ("vision.out", "projector.out", "lm.resid_pre.0", "lm.attn.0", "lm.mlp.0", "lm.resid_post.{last}")


@pytest.mark.parametrize("site_template", SELF_PATCH_SITES)
def test_patching_a_site_with_its_own_value_is_bit_identical(tiny_adapter: VLMAdapter, site_template: str) -> None:
    site = site_template.format(last=tiny_adapter.num_layers - 1)
    images, prompts = two_prompt_batch(tiny_adapter)
    batch = tiny_adapter.build_inputs(images, prompts, SYNTHETIC_SYSTEM_PROMPT)
    values, logits = capture(tiny_adapter, batch, [site])
    cached = values[site]
    with hooked(tiny_adapter.hook_point(site), batch, lambda v: cached.clone()):
        patched = tiny_adapter.forward(batch)
    assert torch.equal(patched, logits)
    # And the hook really writes: patching zeros changes the output.
    with hooked(tiny_adapter.hook_point(site), batch, lambda v: torch.zeros_like(cached)):
        zeroed = tiny_adapter.forward(batch)
    assert not torch.equal(zeroed, logits)


def test_batching_matches_running_each_prompt_alone(tiny_adapter: VLMAdapter) -> None:
    images, prompts = two_prompt_batch(tiny_adapter)
    batch = tiny_adapter.build_inputs(images, prompts, SYNTHETIC_SYSTEM_PROMPT)
    lengths = batch.model_kwargs["attention_mask"].sum(dim=1)
    assert int(lengths[0]) != int(lengths[1]), "prompts must differ in length to exercise padding"
    together = tiny_adapter.forward(batch)
    for row in range(2):
        alone = tiny_adapter.forward(tiny_adapter.build_inputs([images[row]], [prompts[row]], SYNTHETIC_SYSTEM_PROMPT))
        torch.testing.assert_close(together[row], alone[0], rtol=0, atol=1e-5)


def test_save_load_round_trip_gives_identical_logits(tiny_adapter: VLMAdapter, tmp_path) -> None:
    images, prompts = two_prompt_batch(tiny_adapter)
    tiny_adapter.save_pretrained(str(tmp_path))
    assert list(tmp_path.glob("*.safetensors")), "weights must be saved as safetensors"
    assert not list(tmp_path.glob("*.bin")), "no pickle weights"
    # The saved dtype, not the family default (Pixtral loads in bfloat16 unless told otherwise).
    loaded = load_model(str(tmp_path), dtype=tiny_adapter.model.dtype)
    assert type(loaded) is type(tiny_adapter)
    assert loaded.grid_spec() == tiny_adapter.grid_spec()
    original = tiny_adapter.forward(tiny_adapter.build_inputs(images, prompts, SYNTHETIC_SYSTEM_PROMPT))
    batch = loaded.build_inputs(images, prompts, SYNTHETIC_SYSTEM_PROMPT)
    assert torch.equal(batch.model_kwargs["input_ids"], tiny_adapter.build_inputs(images, prompts, SYNTHETIC_SYSTEM_PROMPT).model_kwargs["input_ids"])
    assert torch.equal(loaded.forward(batch), original)


def test_answer_words_single_token_and_clear_error(tiny_adapter: VLMAdapter) -> None:
    red, spaced_red = tiny_adapter.answer_token_id("Red"), tiny_adapter.answer_token_id(" Red")
    assert red != spaced_red
    assert tiny_adapter.answer_token_ids(["Red", " Red", "red", " red", "Zzyzxqvwk"]) == [
        red,
        spaced_red,
        tiny_adapter.answer_token_id("red"),
        tiny_adapter.answer_token_id(" red"),
    ]
    with pytest.raises(UserInputError, match="is [0-9]+ tokens"):
        tiny_adapter.answer_token_id("Zzyzxqvwk")
    with pytest.raises(UserInputError, match="no spelling"):
        tiny_adapter.answer_token_ids(["Zzyzxqvwk", " Qqxjzvbw"])
    with pytest.raises(UserInputError, match="no spelling"):  # a failure is not kept: it fails again
        tiny_adapter.answer_token_ids(["Zzyzxqvwk", " Qqxjzvbw"])


def test_answer_ids_are_kept_per_tokenizer(tiny_adapter: VLMAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept per spelling set (every batch asks again), as a copy, and asked afresh of a new tokenizer."""
    first = tiny_adapter.answer_token_ids(["Red", " Red"])
    first.append(-1)  # the caller's copy
    assert tiny_adapter.answer_token_ids(["Red", " Red"]) == first[:-1]
    calls = []
    tokenizer = copy.copy(tiny_adapter.tokenizer)
    monkeypatch.setattr(tiny_adapter, "tokenizer", tokenizer)
    monkeypatch.setattr(type(tokenizer), "encode", lambda self, *a, **k: calls.append(a) or [7])
    assert tiny_adapter.answer_token_ids(["Red", " Red"]) == [7] and len(calls) == 2
    assert tiny_adapter.answer_token_ids(["Red", " Red"]) == [7] and len(calls) == 2


def test_rendered_prompts_are_kept_and_follow_a_changed_template(tiny_adapter: VLMAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chat template renders each (images, prompt, system) once per tokenizer and template: the kept
    text equals a fresh rendering, and a template changed on the tokenizer is rendered anew."""
    from spatialmech.models import _hf_common as hf

    tokenizer = copy.copy(tiny_adapter.tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        pytest.skip("the family builds its prompt without a chat template (PaliGemma)")
    kept = hf.render_chat(tokenizer, 1, "Where is the red square?", None)
    assert kept == hf._render(tokenizer, 1, "Where is the red square?", None)
    assert hf.render_chat(tokenizer, 1, "Where is the red square?", None) is kept
    monkeypatch.setattr(tokenizer, "chat_template", tokenizer.chat_template + "CHANGED")
    assert hf.render_chat(tokenizer, 1, "Where is the red square?", None).endswith("CHANGED")


def test_bad_site_names_give_clear_errors(tiny_adapter: VLMAdapter) -> None:
    with pytest.raises(UserInputError, match="unknown hook site"):
        tiny_adapter.hook_point("lm.resid.0")
    with pytest.raises(UserInputError, match="does not exist"):
        tiny_adapter.hook_point(f"lm.mlp.{tiny_adapter.num_layers}")


def test_grid_spec_and_sizes_come_from_the_model(tiny_adapter: VLMAdapter) -> None:
    grid = tiny_adapter.grid_spec()
    assert grid.tokens_per_side >= 3 and grid.pixels_per_token >= 1
    assert tiny_adapter.num_layers == len([s for s in tiny_adapter.sites() if s.startswith("lm.mlp.")])
    assert tiny_adapter.hidden_size > 0


def test_encoded_images_give_the_raw_inputs_logits(tiny_adapter: VLMAdapter) -> None:
    """`encode_images` runs the encoder once; forwards from its inputs equal the raw inputs', also with
    other prompts on the same pictures (`with_prompts`), and it never changes the raw inputs."""
    images, prompts = two_prompt_batch(tiny_adapter)
    raw = tiny_adapter.build_inputs(images, prompts, SYNTHETIC_SYSTEM_PROMPT)
    encoded = tiny_adapter.encode_images(raw)
    assert encoded.images_encoded and not raw.images_encoded
    assert "pixel_values" in raw.model_kwargs and "pixel_values" not in encoded.model_kwargs
    torch.testing.assert_close(tiny_adapter.forward(encoded), tiny_adapter.forward(raw), rtol=0, atol=1e-5)
    assert tiny_adapter.encode_images(encoded) is encoded
    swapped = tiny_adapter.build_inputs(images, prompts[::-1], SYNTHETIC_SYSTEM_PROMPT)
    reused = tiny_adapter.with_prompts(encoded, swapped)
    torch.testing.assert_close(tiny_adapter.forward(reused), tiny_adapter.forward(swapped), rtol=0, atol=1e-5)


def _same_kwargs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def test_repeated_pictures_are_processed_once_with_the_same_inputs(tiny_adapter: VLMAdapter, monkeypatch) -> None:
    """A batch asking several questions about one picture: with sharing on, a family that declares
    `processes_images_alone` preprocesses each distinct picture once; the inputs are identical either way
    (what checks the declaration)."""
    first, second = square_image(tiny_adapter, 1), square_image(tiny_adapter, 2)
    images = [[first], [second], [first.copy()], [first]]
    prompts = ["Red", "The color of the square to the left of the green square is", "Blue", "Green is"]
    monkeypatch.setenv("SPATIALMECH_PREFIX_SHARING", "0")
    plain = tiny_adapter.build_inputs(images, prompts, SYNTHETIC_SYSTEM_PROMPT)
    monkeypatch.setenv("SPATIALMECH_PREFIX_SHARING", "1")
    calls: list[int] = []
    processor = tiny_adapter.image_processor
    original_call = type(processor).__call__

    def counting(self: Any, images: Any = None, **kwargs: Any) -> Any:
        calls.append(len(images))
        return original_call(self, images=images, **kwargs)

    monkeypatch.setattr(type(processor), "__call__", counting)
    shared = tiny_adapter.build_inputs(images, prompts, SYNTHETIC_SYSTEM_PROMPT)
    assert _same_kwargs(shared.model_kwargs, plain.model_kwargs)
    assert [[t.positions.tolist() for t in row] for row in shared.images] == [[t.positions.tolist() for t in row] for row in plain.images]
    if getattr(tiny_adapter, "processes_images_alone", False):
        assert calls == [1, 1], "each distinct picture once"

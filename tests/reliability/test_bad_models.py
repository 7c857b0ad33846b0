"""Checkpoints from elsewhere: unknown families, remote code, pickles, broken files, templates without
an image slot, grids too small for the task, answers the tokenizer cannot say in one token.

Every case goes through `spatialmech eval` (or `render --model`) on a copy of a tiny saved checkpoint.
Cases that could run foreign code plant a payload that would create a marker file if it ever ran.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from PIL import Image
from reliability_helpers import assert_bad_input, assert_no_partial_result, run_cli

from spatialmech.errors import EXIT_BAD_INPUT, UserInputError
from spatialmech.models.registry import adapter_class, load_model


def eval_args(model: Path, out: Path | None = None, task: str = "squares", n: int | None = 2, data: Path | None = None) -> list:
    args = ["eval", "--model", model, "--task", task] + (["--n", n] if n is not None else [])
    if data is not None:
        args += ["--data", data]
    return args + (["--out", out] if out is not None else [])


def edit_json(path: Path, **changes) -> None:
    content = json.loads(path.read_text())
    content.update(changes)
    path.write_text(json.dumps(content))


class Payload:
    """Unpickling this creates `marker`: proof that a pickle was (or was not) ever loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"model.weight": Payload(marker)})


# ------------------------------------------------------------------------------------------ family / code


def test_unknown_family(model_copy, tmp_path, capsys):
    edit_json(model_copy / "config.json", model_type="bert")
    out = tmp_path / "out"
    assert_bad_input(run_cli(eval_args(model_copy, out), capsys), "'bert'", "not a supported VLM family")
    assert_no_partial_result(out)


def test_config_without_model_type(model_copy, tmp_path, capsys):
    config = json.loads((model_copy / "config.json").read_text())
    del config["model_type"]
    (model_copy / "config.json").write_text(json.dumps(config))
    assert_bad_input(run_cli(eval_args(model_copy), capsys), "no model_type")


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "empty"), (b'{"model_type": "qwen2_vl", "vision', "not valid JSON"), (b"\xff\xfe\x00\x81", "cannot be read"),
     (b"[1, 2]", "not a JSON object")],
    ids=["zero-byte", "truncated", "not-utf8", "a-list"],
)
def test_broken_config(content, expected, model_copy, capsys):
    (model_copy / "config.json").write_bytes(content)
    assert_bad_input(run_cli(eval_args(model_copy), capsys), expected, "config.json")


def test_config_with_wrong_field_types(model_copy, capsys):
    edit_json(model_copy / "config.json", vision_config=5)
    assert_bad_input(run_cli(eval_args(model_copy), capsys), "does not load")


def test_model_path_is_a_file_or_missing(model_copy, tmp_path, capsys):
    assert_bad_input(run_cli(eval_args(model_copy / "config.json"), capsys), "is a file")
    assert_bad_input(run_cli(eval_args(tmp_path / "no" / "such" / "model"), capsys), "neither an existing folder")


def test_checkpoint_that_requires_remote_code(model_copy, tmp_path, capsys):
    marker = tmp_path / "remote-code-ran"
    (model_copy / "modeling_evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    edit_json(model_copy / "config.json", auto_map={"AutoModelForImageTextToText": "modeling_evil.EvilModel",
                                                    "AutoConfig": "modeling_evil.EvilConfig"})
    out = tmp_path / "out"
    assert_bad_input(run_cli(eval_args(model_copy, out), capsys), "remote code", "--trust-remote-code")
    assert not marker.exists()
    assert_no_partial_result(out)


def test_remote_code_named_by_tokenizer_or_processor_never_runs(model_copy, tmp_path, capsys):
    """auto_map in the side files (not config.json): without --trust-remote-code it is ignored, and the
    native classes load the checkpoint."""
    marker = tmp_path / "remote-code-ran"
    (model_copy / "tokenization_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from transformers import PreTrainedTokenizerFast\nclass EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    edit_json(model_copy / "tokenizer_config.json", tokenizer_class="EvilTokenizer",
              auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})
    edit_json(model_copy / "preprocessor_config.json", auto_map={"AutoImageProcessor": "tokenization_evil.EvilTokenizer"})
    result = run_cli(eval_args(model_copy), capsys)
    assert not marker.exists()
    assert result.code in (0, 2), result.err
    if result.code == 2:
        assert_bad_input(result)


# ------------------------------------------------------------------------------------------ pickles


def test_only_pickle_weights(model_copy, tmp_path, capsys):
    marker = tmp_path / "pickle-ran"
    (model_copy / "model.safetensors").unlink()
    (model_copy / "pytorch_model.bin").write_bytes(evil_pickle(marker))
    out = tmp_path / "out"
    assert_bad_input(run_cli(eval_args(model_copy, out), capsys), "pytorch_model.bin", "refuse")
    assert not marker.exists()
    assert_no_partial_result(out)


def test_pickle_named_safetensors(model_copy, tmp_path, capsys):
    marker = tmp_path / "pickle-ran"
    (model_copy / "model.safetensors").write_bytes(evil_pickle(marker))
    assert_bad_input(run_cli(eval_args(model_copy), capsys), "corrupt")
    assert not marker.exists()


def test_pickle_next_to_safetensors_is_never_opened(model_copy, tmp_path, capsys):
    marker = tmp_path / "pickle-ran"
    for name in ("pytorch_model.bin", "training_args.bin", "optimizer.pt"):
        (model_copy / name).write_bytes(evil_pickle(marker))
    result = run_cli(eval_args(model_copy), capsys)
    assert result.code == 0, result.err
    assert not marker.exists()


def test_pickle_offered_as_amplification_probe(tiny_model, tmp_path, capsys):
    marker = tmp_path / "pickle-ran"
    probe = tmp_path / "probe.pt"
    probe.write_bytes(evil_pickle(marker))
    out = tmp_path / "out"
    result = run_cli(eval_args(tiny_model, out) + ["--amplify", probe, "--alpha", "2"], capsys)
    assert_bad_input(result, "probe file", "probe.pt")
    assert not marker.exists()
    assert_no_partial_result(out)


@pytest.mark.parametrize("content", [b"", b"\x00" * 100], ids=["zero-byte", "zeros"])
def test_broken_safetensors(content, model_copy, capsys):
    (model_copy / "model.safetensors").write_bytes(content)
    assert_bad_input(run_cli(eval_args(model_copy), capsys), "corrupt or truncated")


# ------------------------------------------------------------------------------------------ other files


@pytest.mark.parametrize(
    ("file", "content", "expected"),
    [
        ("tokenizer.json", '{"version": "1.0", "model": ', "tokenizer"),
        ("tokenizer.json", "[]", "tokenizer"),
        ("preprocessor_config.json", '{"min_pixels', "image processor"),
        ("preprocessor_config.json", "[]", "image processor"),
        ("chat_template.jinja", "{% for message in messages %", "chat template"),
    ],
    ids=["tokenizer-truncated", "tokenizer-a-list", "processor-truncated", "processor-a-list", "template-syntax"],
)
def test_broken_side_files(file, content, expected, model_copy, tmp_path, capsys):
    (model_copy / file).write_text(content)
    out = tmp_path / "out"
    assert_bad_input(run_cli(eval_args(model_copy, out), capsys), expected)
    assert_no_partial_result(out)


TEXT_ONLY_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}\n{% endfor %}assistant:"
)


def _save_text_only_template(adapter, folder: Path) -> Path:
    adapter.save_pretrained(str(folder))
    (folder / "chat_template.jinja").write_text(TEXT_ONLY_TEMPLATE)
    (folder / "chat_template.json").unlink(missing_ok=True)
    edit_json(folder / "tokenizer_config.json", chat_template=TEXT_ONLY_TEMPLATE)
    return folder


@pytest.mark.parametrize(("family", "sizes"), [("qwen2-vl", {}), ("gemma3", {"tokens_per_side": 6})])
def test_chat_template_without_image_slot(family, sizes, tmp_path, capsys):
    """A checkpoint whose chat template drops the image: the user turn has an image, the prompt has no
    place for it. One line saying so, not a crash deep in the adapter."""
    folder = _save_text_only_template(adapter_class(family).tiny(0, **sizes), tmp_path / family)
    out = tmp_path / "out"
    assert_bad_input(run_cli(eval_args(folder, out, n=1), capsys), "chat template", "image slot")
    assert_no_partial_result(out)


@pytest.mark.parametrize("family", ["llava", "pixtral", "idefics3", "internvl"])
def test_chat_template_without_image_slot_tiled_families(family, tmp_path):
    """Families that expand placeholders with `_layout` (their tiny grids are too small for a CLI task,
    so this goes through the loaded checkpoint's adapter, as every command does)."""
    folder = _save_text_only_template(adapter_class(family).tiny(0), tmp_path / family)
    adapter = load_model(str(folder))
    with pytest.raises(UserInputError) as caught:
        adapter.build_inputs([[Image.new("RGB", (64, 64))]], ["What is left of the cup?"])
    assert caught.value.exit_code == EXIT_BAD_INPUT
    message = str(caught.value)
    assert "\n" not in message and "chat template" in message and "image slot" in message


def test_checkpoint_without_chat_template(model_copy, capsys):
    (model_copy / "chat_template.jinja").unlink()
    assert_bad_input(run_cli(eval_args(model_copy), capsys), "no chat template")


# ------------------------------------------------------------------------------------------ grids, answers


def _shrink_grid(model: Path, tokens_per_side: int) -> None:
    pixels = (tokens_per_side * 28) ** 2
    edit_json(model / "preprocessor_config.json", max_pixels=pixels, size={"shortest_edge": 28 * 28, "longest_edge": pixels})


def test_grid_too_small_for_the_task(model_copy, tmp_path, capsys):
    _shrink_grid(model_copy, 4)
    out = tmp_path / "out"
    assert_bad_input(run_cli(eval_args(model_copy, out), capsys), "4x4 token grid is too small")
    assert_no_partial_result(out)
    result = run_cli(["render", "squares", "--model", model_copy, "--out", tmp_path / "rendered"], capsys)
    assert_bad_input(result, "too small")
    assert not (tmp_path / "rendered" / "items.jsonl").exists()


def test_answer_word_of_several_tokens(tiny_model, data, tmp_path, capsys):
    """What'sUp side objects whose names are several tokens for the model are dropped (as the authors
    do), not a crash; when too few are left to pair, a one-line error says how many were kept."""
    out = tmp_path / "out"
    result = run_cli(eval_args(tiny_model, out, task="whatsup", n=None, data=data), capsys)
    assert_bad_input(result, "no What'sUp composites", "chair 1", "one token")
    assert_no_partial_result(out)

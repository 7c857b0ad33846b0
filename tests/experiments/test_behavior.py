"""`behavior` / `spatialmech eval`: top-1 accuracy over spelling variants, strict forced choice, results contract."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from spatialmech.cli import main
from spatialmech.experiments.behavior import chance_level, run_behavior, score_items
from spatialmech.models.qwen2_vl import Adapter
from spatialmech.models.registry import bundled_model_path
from spatialmech.tasks import get_task

BUNDLED = bundled_model_path()
needs_bundled = pytest.mark.skipif(not (BUNDLED / "model.safetensors").is_file(), reason="bundled model not installed")


@pytest.fixture(scope="module")
def tiny() -> Adapter:
    return Adapter.tiny(seed=0)


def test_accuracy_is_the_share_of_items_whose_top_token_is_an_answer_spelling(tiny: Adapter) -> None:
    task = get_task("squares", geometry=tiny.grid_spec())
    result = run_behavior(tiny, task, n=6, seed=0, batch_size=4)
    rows = result["rows"]
    assert result["n"] == 6 == len(rows)
    assert result["chance"] == pytest.approx(1 / 3)
    assert result["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 6)
    items = task.items(6, seed=0)
    for row, item in zip(rows, items):
        variants = {tiny.tokenizer.decode([t]) for t in tiny.answer_token_ids(item.answer_variants)}
        assert row["correct"] == (row["prediction"] in variants)


def test_batch_size_does_not_change_predictions(tiny: Adapter) -> None:
    task = get_task("objects", geometry=tiny.grid_spec())
    items = task.items(5, seed=1)
    one = score_items(tiny, task, items, batch_size=1)
    five = score_items(tiny, task, items, batch_size=5)
    assert [r["prediction"] for r in one] == [r["prediction"] for r in five]
    assert [r["p_answer"] for r in one] == pytest.approx([r["p_answer"] for r in five], abs=1e-4)


def test_forced_choice_is_correct_only_when_right_under_both_option_orders(tiny: Adapter) -> None:
    task = get_task("scenes", geometry=tiny.grid_spec())
    items = task.items(8, seed=0)
    # Bias the model towards the first option word in the prompt's order: steer the LM head so the
    # answers differ between orders for some items; whatever it answers, strictness must hold.
    rows = score_items(tiny, task, items, batch_size=4)
    for row in rows:
        assert row["correct"] == (row["correct_natural_order"] and row["correct_swapped_order"])
        assert "prediction_swapped" in row
    assert chance_level(items) == 0.25  # strict: both option orders right (meta["strict_chance"])


def test_a_model_that_picks_the_first_offered_option_scores_zero_strictly(tiny: Adapter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Position bias is what strict scoring exists to catch: answering the first option of "X or Y" is
    right under one order only, so it must score 0 (while one order alone would look like ~0.5)."""
    monkeypatch.setenv("SPATIALMECH_PREFIX_SHARING", "0")  # the fake answers are written on the model's own output
    task = get_task("scenes", geometry=tiny.grid_spec())
    items = task.items(10, seed=2)
    words = ("left", "right", "above", "below")
    word_of = {tiny.answer_token_id(spelling): word for word in words for spelling in (word, f" {word}")}
    option_ids = torch.tensor(list(word_of))

    def answer_first_option(module, args, kwargs, output):
        input_ids = kwargs["input_ids"]
        for row in range(input_ids.shape[0]):
            is_option = torch.isin(input_ids[row], option_ids)
            first = int(input_ids[row][is_option.nonzero()[0, 0]])
            output.logits[row, -1, tiny.answer_token_id(word_of[first])] += 1000.0
        return output

    handle = tiny.model.register_forward_hook(answer_first_option, with_kwargs=True)
    try:
        rows = score_items(tiny, task, items, batch_size=5)
    finally:
        handle.remove()
    for row, item in zip(rows, items):
        assert row["prediction"] == item.options[0] and row["prediction_swapped"] == item.options[1]
        assert row["correct_natural_order"] == (item.answer == item.options[0])
        assert row["correct"] is False
    assert any(row["correct_natural_order"] for row in rows)


def test_eval_amplify_needs_an_existing_probe_and_an_alpha(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--task", "squares", "--amplify", str(tmp_path / "none.safetensors"), "--alpha", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and "--save-probe" in err and "\n" not in err
    assert main(["eval", "--task", "squares", "--amplify", str(tmp_path / "none.safetensors")]) == 2
    assert "go together" in capsys.readouterr().err


def test_eval_applies_a_saved_amplification(tiny: Adapter, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`eval --amplify P --alpha A` scores with the steer; alpha 0 is the plain model; the result records the probe."""
    import torch

    from spatialmech.experiments.amplify import AXIS_CLASSES
    from spatialmech.experiments.probing import LinearProbe, save_probes

    folder = tmp_path / "model"
    tiny.save_pretrained(str(folder))
    gen = torch.Generator().manual_seed(0)
    probes = {axis: LinearProbe(torch.randn(tiny.hidden_size, 2, generator=gen), torch.zeros(2), classes)
              for axis, classes in AXIS_CLASSES.items()}
    probe = save_probes(tmp_path / "amp.safetensors", probes, {"site": "projector.out", "variant": "projection"})
    common = ["eval", "--model", str(folder), "--task", "scenes", "--n", "6"]
    p_answer = {}
    for alpha in ("0", "8"):
        out = tmp_path / f"alpha{alpha}"
        assert main([*common, "--amplify", str(probe), "--alpha", alpha, "--out", str(out)]) == 0
        result = json.loads((out / "behavior" / "result.json").read_text())
        assert result["config"]["amplify"]["alpha"] == float(alpha)
        p_answer[alpha] = (out / "behavior" / "predictions.csv").read_text()
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert "amplified with" in capsys.readouterr().out
    assert p_answer["0"] == (tmp_path / "plain" / "behavior" / "predictions.csv").read_text()
    assert p_answer["8"] != p_answer["0"]


def test_eval_needs_data_for_real_tasks(capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--task", "coco-spatial"]) == 2
    assert "--data" in capsys.readouterr().err


def test_eval_rejects_bad_numbers(capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--task", "squares", "--n", "0"]) == 2
    assert main(["eval", "--task", "squares", "--batch-size", "0"]) == 2


@needs_bundled
def test_eval_on_the_bundled_model_writes_the_results_contract(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--task", "squares", "--n", "16", "--batch-size", "8", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "squares: accuracy" in printed and "n=16" in printed
    result = json.loads((tmp_path / "behavior" / "result.json").read_text())
    assert result["experiment"] == "behavior" and result["task"] == "squares"
    assert {"accuracy", "n", "chance"} <= set(result["metrics"])
    assert result["metrics"]["n"] == 16
    assert {"packages", "git_revision", "seed", "started_at", "finished_at", "device"} <= set(result["provenance"])
    with open(tmp_path / "behavior" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16
    assert sum(r["correct"] == "True" for r in rows) / 16 == pytest.approx(result["metrics"]["accuracy"])


@needs_bundled
def test_the_bundled_model_answers_grid_questions_far_above_chance() -> None:
    """The shipped model reads the image: on a sample of every grid task it beats chance (1/3)."""
    from spatialmech.models import load_model

    adapter = load_model(None)
    for name in ("squares", "shapes", "objects"):
        task = get_task(name, geometry=adapter.grid_spec())
        result = run_behavior(adapter, task, n=48, seed=7, batch_size=16)
        assert result["accuracy"] >= 0.5, (name, result["accuracy"])  # chance 1/3; full-task figures in MODEL_CARD.md

"""`last-token` patching on tiny random models of three families whose token grid fits 3 objects.

Untrained models answer nothing right, so runs here set `filter_correct=False`. What is checked: the
result contract; that patching a run with itself is the clean run exactly; that layer 0 changes nothing
(the next-token position holds the same template token in both runs) while later layers do; resume.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from spatialmech.engine import Engine
from spatialmech.errors import UserInputError
from spatialmech.experiments import last_token, patching
from spatialmech.experiments.common import Pair
from spatialmech.experiments.runner import load_result, run_experiment
from spatialmech.models import adapter_class
from spatialmech.tasks import get_task
from spatialmech.tasks.base import CF_OPPOSITE_QUERY

FAMILIES = ("qwen2-vl", "qwen2.5-vl", "paligemma")
BUNDLED = Path(__file__).resolve().parents[2] / "src" / "spatialmech" / "assets" / "bundled_model"
SAME = 1e-7  # probabilities of runs that must be equal (float32 noise is ~1e-9 here)
MOVED = 1e-6  # a real patch on these tiny models moves tracked probabilities by 1e-6..1e-3


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):
    model = adapter_class(request.param).tiny(0)
    assert model.grid_spec().tokens_per_side >= 5
    return model


def _squares(adapter):
    return get_task("squares", geometry=adapter.grid_spec())


def _csv(path):
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _pairs(task, per_direction: int, seed: int) -> list[Pair]:
    return [p for group in last_token.drawn_pairs(task, seed, per_direction).values() for p in group]


def _run(adapter, out, **kwargs):
    options = {"n": 1, "filter_correct": False, **kwargs.pop("options", {})}
    return run_experiment("last-token", adapter, out_root=out, options=options, batch_size=2, progress=False, **kwargs)


def test_result_schema_tables_and_figure(adapter, tmp_path):
    result = load_result(_run(adapter, tmp_path).parent)
    metrics = result["metrics"]
    assert result["experiment"] == "last-token" and result["task"] == "squares"
    assert result["config"]["counterfactual"] == CF_OPPOSITE_QUERY and result["config"]["filter_correct"] is False
    layers = ["emb", *range(adapter.num_layers)]  # L+1 points: input to layer 0, then each layer's output
    assert metrics["layers"] == layers and metrics["n_pairs"] == 4  # one pair per direction
    assert set(metrics["curves"]) == set(metrics["top1"]) == set(last_token.ANSWERS)
    for key in last_token.ANSWERS:
        assert len(metrics["curves"][key]) == len(layers)
        assert all(0.0 <= p <= 1.0 for p in metrics["curves"][key] + metrics["top1"][key])
    assert len(metrics["dominant"]) == len(layers) and len(metrics["top1_unchanged"]) == len(layers)
    assert metrics["pairs"]["kept"] == 4 and metrics["pairs"]["filter_correct"] is False
    folder = tmp_path / "last-token"
    curves = _csv(folder / "curves.csv")
    assert list(curves[0]) == ["layer", "answer", "iia", "top1"] and len(curves) == len(layers) * 5
    assert [(r["layer"], r["answer"]) for r in curves[:5]] == [("emb", key) for key in last_token.ANSWERS]
    pairs = _csv(folder / "pairs.csv")
    assert len(pairs) == 4 and {r["relation"] for r in pairs} == {"left", "right", "above", "below"}
    assert set(metrics["by_direction"]) == {"left", "right", "above", "below"}
    for direction in metrics["by_direction"].values():
        assert direction["n"] == 1 and all(v == [0.0] * len(layers) for v in direction["std"].values())
    assert {r["axis"] for r in pairs} == {"horizontal", "vertical"}  # both axes
    assert result["figures"] == ["iia_curves.png", "iia_curves.svg"]
    assert all((folder / name).stat().st_size > 0 for name in result["figures"])
    # the curves are the mean of the per-pair records saved in the units
    units = [json.loads(p.read_text()) for p in sorted((folder / "units").glob("batch-*.json"))]
    records = [r for unit in units for r in unit["pairs"]]
    mean = sum(r["iia"][-1][0] for r in records) / len(records)
    assert metrics["curves"]["c0"][-1] == pytest.approx(mean, abs=1e-12)


def test_tracked_answers_are_the_five_objects():
    """Their last_token_exp/src/data.py: c0 clean answer, c1 reference, c2 clean far side, c3 the
    counterfactual's answer, c4 its far side."""
    task = get_task("squares")
    pairs = _pairs(task, 6, seed=3)
    assert {p.clean.relation for p in pairs} == {"left", "right", "above", "below"}
    for pair in pairs:
        words = last_token.tracked_answers(pair)
        assert words["c0"] == pair.clean.answer and words["c3"] == pair.counterfactual.answer
        slot = pair.counterfactual.target  # the counterfactual answer's ordinal position
        assert slot != pair.clean.target and words["c2"] == pair.clean.objects[slot].attribute
        assert words["c1"] == pair.clean.objects[1].attribute == pair.counterfactual.objects[1].attribute
        assert words["c3"] not in pair.clean.meta["attributes"] and len(set(words.values())) == 5


def test_drawn_tuples_are_distinct_and_seeded():
    first = last_token.draw_tuples(("a", "b", "c", "d", "e", "f"), 4, seed=0, limit=50)
    assert first == last_token.draw_tuples(("a", "b", "c", "d", "e", "f"), 4, seed=0, limit=50)
    for tuples in first:
        assert len({tuple(t) for t in tuples}) == len(tuples) and all(len(set(t)) == 5 for t in tuples)


def test_patching_a_run_with_itself_is_the_clean_run(adapter):
    task = _squares(adapter)
    pairs = [Pair(p.clean, p.clean, "identity") for p in _pairs(task, 1, seed=1)]
    out = last_token.sweep_batch(Engine(adapter), task, pairs, list(range(adapter.num_layers)))
    for record in out["pairs"]:
        for layer_probs, prediction in zip(record["iia"], record["predictions"]):
            assert prediction == record["clean_prediction"]  # top-1 agreement 1.0
            for k, key in enumerate(last_token.ANSWERS):
                assert layer_probs[k] == pytest.approx(record["clean_run"][key], abs=SAME)


def test_curves_move_only_once_the_last_token_differs(adapter):
    task = _squares(adapter)
    pairs = _pairs(task, 1, seed=2)
    out = last_token.sweep_batch(Engine(adapter), task, pairs, list(range(adapter.num_layers)))
    assert out["layers"] == ["emb", *range(adapter.num_layers)]

    def change(index: int) -> float:
        return max(abs(r["iia"][index][k] - r["clean_run"][key]) for r in out["pairs"] for k, key in enumerate(last_token.ANSWERS))

    assert change(0) < SAME  # "emb" at the next-token position: the same template token in both runs
    assert change(adapter.num_layers) > MOVED  # the last layer's output


def test_resume_after_interruption_gives_the_same_metrics(tmp_path):
    adapter = adapter_class("qwen2-vl").tiny(0)
    first = load_result(_run(adapter, tmp_path).parent)
    folder = tmp_path / "last-token"
    kept_unit = folder / "units" / "batch-00000.json"
    stamp = kept_unit.stat().st_mtime_ns
    (folder / "result.json").unlink()
    (folder / "units" / "batch-00001.json").unlink()
    assert len(list((folder / "units").glob("batch-*.json"))) == 1
    resumed = load_result(_run(adapter, tmp_path, resume=True).parent)
    assert resumed["metrics"] == first["metrics"]
    assert kept_unit.stat().st_mtime_ns == stamp  # the finished unit was reused, not recomputed
    assert (folder / "units" / "batch-00001.json").is_file()


def test_bad_options_are_user_errors():
    adapter = adapter_class("qwen2-vl").tiny(0)
    with pytest.raises(UserInputError, match="layers"):
        last_token.config_from({"layers": "7"}, adapter)
    with pytest.raises(UserInputError, match="at least 1"):
        last_token.config_from({"n": 0}, adapter)
    with pytest.raises(UserInputError, match="does not run on task"):
        run_experiment("last-token", adapter, out_root="unused", task="scenes", options={})
    with pytest.raises(UserInputError, match="not a file"):
        last_token.config_from({"pairs": "/no/such/pairs.json"}, adapter)
    assert patching.base_config({}, adapter) == {"n": 50, "layers": [0, 1], "include_embeddings": True, "pairs_file": None,
                                             "filter_correct": True}


@pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="bundled model not trained yet")
def test_cli_on_the_bundled_model(tmp_path, capsys):
    from spatialmech.cli import main

    code = main(["run", "last-token", "--n", "2", "--layers", "0,1", "--out", str(tmp_path), "--batch-size", "2"])
    assert code == 0, capsys.readouterr().err
    result = load_result(tmp_path / "last-token")
    assert result["metrics"]["layers"] == ["emb", 0, 1] and result["metrics"]["pairs"]["filter_correct"] is True
    assert 1 <= result["metrics"]["n_pairs"] <= 8  # --n is per direction


def test_phases_read_the_curves_as_the_paper_does():
    dominant = ["c0"] * 3 + ["c2"] * 2 + ["c3"] * 2
    assert last_token.phases(["emb", *range(6)], dominant) == {
        "clean_layers": ["emb", 0, 1], "ordering_layers": [2, 3], "attribute_from_layer": 4,
    }
    assert last_token.phases([0, 1], ["c3", "c0"])["attribute_from_layer"] is None
    curves = {"c0": [0.9, 0.1], "c2": [0.05, 0.2], "c3": [0.05, 0.7]}
    assert last_token.dominant_answers(curves) == ["c0", "c3"]

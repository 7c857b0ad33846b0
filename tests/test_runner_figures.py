"""The experiment runner's result contract and resume units, and the figure writers."""

from __future__ import annotations

import json

import pytest

from spatialmech.errors import UserInputError
from spatialmech.experiments.runner import ExperimentContext, ExperimentOutput, load_result, parse_layers
from spatialmech.plotting import plot_accuracy_bars, plot_layer_curves, plot_token_heatmaps


@pytest.fixture(scope="module")
def tiny_qwen():
    from spatialmech.models import adapter_class

    return adapter_class("qwen2-vl").tiny(0)


def _ctx(tmp_path, adapter, resume=False, seed=0):
    return ExperimentContext("demo", adapter, "squares", tmp_path, {"n": 2}, seed=seed, resume=resume)


def test_units_resume_and_result_contract(tmp_path, tiny_qwen):
    ctx = _ctx(tmp_path, tiny_qwen)
    ctx.prepare()
    calls = []
    assert ctx.unit("a", lambda: calls.append(1) or {"x": 1}) == {"x": 1}
    resumed = _ctx(tmp_path, tiny_qwen, resume=True)
    resumed.prepare()
    assert resumed.unit("a", lambda: calls.append(2) or {"x": 2}) == {"x": 1}
    assert calls == [1]
    resumed.finish(ExperimentOutput(metrics={"accuracy": 0.5}, tables={"t": [{"a": 1}]}))
    result = load_result(tmp_path / "demo")
    assert {"experiment", "model", "task", "config", "metrics", "provenance"} <= set(result)
    assert result["tables"] == {"t": "t.csv"}
    # A fresh (non-resume) run clears old units and the old result.
    fresh = _ctx(tmp_path, tiny_qwen)
    fresh.prepare()
    assert not (tmp_path / "demo" / "result.json").exists()
    assert fresh.unit("a", lambda: {"x": 3}) == {"x": 3}


def test_resume_refuses_other_config(tmp_path, tiny_qwen):
    _ctx(tmp_path, tiny_qwen).prepare()
    with pytest.raises(UserInputError, match="different"):
        _ctx(tmp_path, tiny_qwen, resume=True, seed=1).prepare()


def test_parse_layers():
    assert parse_layers(None, 3) == [0, 1, 2]
    assert parse_layers("0-2,5", 6) == [0, 1, 2, 5]
    with pytest.raises(UserInputError):
        parse_layers("9", 4)
    with pytest.raises(UserInputError):
        parse_layers("a-b", 4)


def test_figures_written(tmp_path):
    paths = plot_layer_curves([0, 1, 2], {"P(c0)": [1, 0.5, 0], "P(c3)": [0, 0.5, 1]}, tmp_path / "curves", "t")
    paths += plot_token_heatmaps([{"grid": [[0, 1], [2, -1]], "boxes": [(0, 0, 1, 1)], "box_labels": ["A"], "title": "x"}],
                                 tmp_path / "heat", "t", ["first", "second", "third"])
    paths += plot_accuracy_bars(["a", "b"], [0.9, 0.4], tmp_path / "bars", "t", chance=0.33, reference=[1.0, None])
    for path in paths:
        assert (tmp_path / path).stat().st_size > 1000
    svg = (tmp_path / "bars.svg").read_text()
    assert "<svg" in svg
    json.dumps(paths)

"""Experiments are plans of independent units: any order, any process, the same result."""

from __future__ import annotations

import json

import pytest

from spatialmech.catalog import EXPERIMENTS
from spatialmech.experiments import ablate_vision, behavior
from spatialmech.experiments.plan import InProcessExecutor, has_plan, open_context, run_unit
from spatialmech.experiments.runner import experiment_module, load_result, run_experiment
from spatialmech.models import adapter_class

PATCHING = {"n": 4, "filter_correct": False, "layers": "0,1"}  # last-token: n per direction
# experiment -> (task, options); small, with several units per stage (batch size 2, small unit sizes)
CASES = {
    "behavior": ("squares", {"n": 5}),
    "last-token": ("squares", PATCHING),
    "criss-cross": ("squares", {**PATCHING, "region": "strip"}),
    "backup": ("squares", PATCHING),
    "ablate-vision": ("all", {"n": 3}),
}


@pytest.fixture(scope="module")
def adapter():
    return adapter_class("qwen2-vl").tiny(0)


@pytest.fixture(autouse=True)
def small_units(monkeypatch):
    monkeypatch.setattr(behavior, "UNIT_SIZE", 2)
    monkeypatch.setattr(ablate_vision, "UNIT_SIZE", 2)


def _metrics(adapter, name, out, order):
    task, options = CASES[name]
    path = run_experiment(name, adapter, out_root=out, task=task, options=options, batch_size=2, progress=False,
                          executor=InProcessExecutor(order=order, seed=3))
    return load_result(path.parent)["metrics"]


def test_planned_experiments_are_registered():
    assert set(CASES) <= set(EXPERIMENTS)
    for name in CASES:
        assert has_plan(experiment_module(name)), name


@pytest.mark.parametrize("name", list(CASES))
def test_units_in_any_order_give_the_same_metrics(adapter, name, tmp_path):
    in_order = _metrics(adapter, name, tmp_path / "given", "given")
    folder = "criss-cross-strip" if name == "criss-cross" else name  # a strip run has its own folder
    units = sorted((tmp_path / "given" / folder / "units").glob("*.json"))
    assert len(units) >= 3, [u.name for u in units]  # several units, so the order is really exercised
    assert _metrics(adapter, name, tmp_path / "reversed", "reversed") == in_order
    assert _metrics(adapter, name, tmp_path / "shuffled", "shuffled") == in_order


@pytest.mark.parametrize("name", ["last-token", "ablate-vision"])
def test_a_unit_runs_from_the_run_folder_alone(adapter, name, tmp_path):
    """What a worker in another process does: rebuild the context from run_config.json, run one key."""
    _metrics(adapter, name, tmp_path, "given")
    folder = tmp_path / name
    saved = sorted((folder / "units").glob("*.json"))[-1]
    expected = json.loads(saved.read_text())
    saved.unlink()
    ctx = open_context(folder, adapter)
    assert ctx.experiment == name and ctx.batch_size == 2 and ctx.config == load_result(folder)["config"]
    assert run_unit(ctx, name, saved.stem) == expected
    assert json.loads(saved.read_text()) == expected

"""Experiments are plans of independent units: any order, any process, the same result (metrics and tables)."""

from __future__ import annotations

import json

import pytest

from spatialmech.catalog import EXPERIMENTS
from spatialmech.experiments import ablate_vision, amplify_fit, behavior
from spatialmech.experiments.plan import InProcessExecutor, has_plan, open_context, run_unit
from spatialmech.experiments.runner import experiment_module, load_result, run_experiment
from spatialmech.models import adapter_class
from spatialmech.models.registry import bundled_model_path

PATCHING = {"n": 4, "filter_correct": False, "layers": "0,1"}  # last-token: n per direction
# case -> (experiment, task, options, model); small, with several units per stage (batch size 2, small
# unit sizes). amplify runs on the bundled (trained) model: the random one answers almost nothing on
# the question's axis, so the paper protocol would have no failed orders to sweep and no probe items.
CASES = {
    "behavior": ("behavior", "squares", {"n": 5}, "tiny"),
    "last-token": ("last-token", "squares", PATCHING, "tiny"),
    "criss-cross": ("criss-cross", "squares", {**PATCHING, "region": "strip"}, "tiny"),
    "backup": ("backup", "squares", PATCHING, "tiny"),
    "ablate-vision": ("ablate-vision", "all", {"n": 3}, "tiny"),
    "probe": ("probe", "squares", {"n": 8}, "tiny"),
    "amplify-paper": ("amplify", "scenes", {"n": 13, "alphas": [0, 3]}, "bundled"),
    "amplify-strict": ("amplify", "scenes", {"n": 10, "alphas": [0, 3], "protocol": "strict"}, "bundled"),
}
FOLDERS = {"criss-cross": "criss-cross-strip"}  # a strip run has its own folder


@pytest.fixture(scope="module")
def models():
    """The models by name, each loaded on first use (the bundled one only where it is installed)."""
    loaded = {}

    def get(kind):
        if kind not in loaded:
            if kind == "bundled":
                if not (bundled_model_path() / "config.json").is_file():
                    pytest.skip("the bundled model is not installed")
                from spatialmech.api import load_model

                loaded[kind] = load_model("bundled").adapter
            else:
                loaded[kind] = adapter_class("qwen2-vl").tiny(0)
        return loaded[kind]

    return get


@pytest.fixture(autouse=True)
def small_units(monkeypatch):
    monkeypatch.setattr(behavior, "UNIT_SIZE", 2)
    monkeypatch.setattr(ablate_vision, "UNIT_SIZE", 2)
    monkeypatch.setattr(amplify_fit, "UNIT_ITEMS", 4)


def _run(models, case, out, order):
    """(metrics, every table's CSV text) of one run of `case` with its units in `order`."""
    name, task, options, kind = CASES[case]
    path = run_experiment(name, models(kind), out_root=out, task=task, options=options, batch_size=2, progress=False,
                          executor=InProcessExecutor(order=order, seed=3))
    result = load_result(path.parent)
    return result["metrics"], {table: (path.parent / file).read_text() for table, file in result["tables"].items()}


def test_planned_experiments_are_registered():
    assert {name for name, *_ in CASES.values()} == set(EXPERIMENTS)  # every experiment is covered
    for name in EXPERIMENTS:
        assert has_plan(experiment_module(name)), name
        assert not hasattr(experiment_module(name), "run"), name  # one code path: the plan


def _recompute_from_folder(models, case, folder):
    """What a worker in another process does: rebuild the context from run_config.json and compute one
    key (the last in name order: for probe a fit reading the features store, for amplify a sweep unit
    reading the baseline and the probe fits), which must give the saved value."""
    name, *_, kind = CASES[case]
    saved = sorted((folder / "units").glob("*.json"))[-1]
    expected = json.loads(saved.read_text())
    saved.unlink()
    ctx = open_context(folder, models(kind))
    assert ctx.experiment == name and ctx.batch_size == 2 and ctx.config == load_result(folder)["config"]
    assert run_unit(ctx, name, saved.stem) == expected
    assert json.loads(saved.read_text()) == expected


# the steps each amplify protocol promises (unit keys without group index and alpha)
AMPLIFY_STEPS = {
    "amplify-paper": {"baseline", "probe-features", "probe-fit", "sweep-probe", "sweep-random"},
    "amplify-strict": {"probe-baseline", "baseline", "probe-features", "probe-fit", "sweep-probe", "sweep-random"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_units_in_any_order_give_the_same_metrics(models, case, tmp_path):
    in_order = _run(models, case, tmp_path / "given", "given")
    folder = tmp_path / "given" / FOLDERS.get(case, CASES[case][0])
    units = sorted((folder / "units").glob("*.json"))
    assert len(units) >= 3, [u.name for u in units]  # several units, so the order is really exercised
    if case in AMPLIFY_STEPS:  # every step of the protocol has units here, so the order test covers each
        assert {u.stem.rsplit("-", 1)[0].split("-a")[0] for u in units} == AMPLIFY_STEPS[case]
    _recompute_from_folder(models, case, folder)
    assert _run(models, case, tmp_path / "reversed", "reversed") == in_order
    assert _run(models, case, tmp_path / "shuffled", "shuffled") == in_order

"""`backup` (object criss-cross under the vision ablation) on tiny random models of four families.

Checked: patching with source == target under the ablation reproduces the ablated clean run at every
layer; the unpatched runs are the *ablated* ones; the object swap is exactly a no-op at the embeddings
and layer 0 under the ablation (the counterfactual's end object is the same alone-rendered object),
while it is not without the ablation, and the curves move at later layers; schema; resume.
"""

from __future__ import annotations

import pytest
import torch

from spatialmech.engine import Engine
from spatialmech.errors import UserInputError
from spatialmech.experiments import criss_cross, patching
from spatialmech.experiments.backup import backup_batch
from spatialmech.experiments.common import Pair, make_pairs
from spatialmech.experiments.runner import load_result, run_experiment
from spatialmech.experiments.vision_ablation import VisionAblation
from spatialmech.models import adapter_class
from spatialmech.tasks import get_task
from spatialmech.tasks.base import CF_REVERSED

FAMILIES = {"qwen2-vl": {"num_layers": 3}, "qwen2.5-vl": {}, "paligemma": {}, "gemma3": {"tokens_per_side": 6}}
SAME = 1e-9  # tracked probabilities (~1/vocab here) of runs that must be equal: exactly equal on Intel Xeon, while
REL = 1e-6  # a sweep's recomputation differs by float32 rounding on AMD EPYC (2e-7 relative seen)
MOVED = 1e-7  # logits: random tiny models move by 1e-6..1e-2 where anything changes, by exactly 0 otherwise
ROUNDING = 1e-6  # logits: a sweep's recomputation vs a whole forward of the same run (float32 order of operations)
CONTEXT = 1e-5  # residuals of the same tokens after one layer in two contexts: 2e-4..2.6 in these models


@pytest.fixture(scope="module", params=list(FAMILIES))
def setup(request):
    adapter = adapter_class(request.param).tiny(0, **FAMILIES[request.param])
    engine = Engine(adapter)
    task = get_task("squares", geometry=adapter.grid_spec())
    items = [i for i in task.items(None) if i.relation in ("left", "above")][::80][:3]
    assert {i.axis for i in items} == {"horizontal", "vertical"}
    return adapter, engine, task, items, VisionAblation(engine, task)


def _layers(adapter):
    return list(range(adapter.num_layers))


def _max_change(out, label_index):
    return max(abs(r["iia"][label_index][k] - r["clean_run"][key]) for r in out["pairs"] for k, key in enumerate(criss_cross.ANSWERS))


def test_source_equals_target_is_the_ablated_clean_run(setup):
    adapter, engine, task, items, ablation = setup
    pairs = [Pair(item, item, "identity") for item in items]
    out = backup_batch(engine, task, pairs, ablation, layers=_layers(adapter), mapping="aligned")
    assert out["layers"] == ["emb", *_layers(adapter)]
    # the unpatched clean run is the ablated one, not the plain model
    inputs = criss_cross.encode_items(adapter, task, items)
    answers = patching.answer_sets(adapter, pairs, [criss_cross.tracked_answers(p) for p in pairs])
    ablated_logits = ablation.logits(inputs, items)
    assert float((ablated_logits - adapter.forward(inputs)).abs().max()) > MOVED
    ablated_p, ablated_hits = patching.tracked_scores(ablated_logits, answers)
    for row, record in enumerate(out["pairs"]):
        clean = [record["clean_run"][key] for key in criss_cross.ANSWERS]
        assert clean == pytest.approx(ablated_p[row].tolist(), rel=REL, abs=SAME)
        for label in range(len(out["layers"])):
            assert record["iia"][label] == pytest.approx(clean, rel=REL, abs=SAME)
            assert record["top1"][label] == [int(h) for h in ablated_hits[row].tolist()]


def _swapped_values(engine, site, inputs, positions, interventions=()):
    values = engine.cache(inputs, {site: positions}, interventions=interventions)[site]
    return values if isinstance(values, list) else list(values)


def test_object_swap_is_a_no_op_at_the_input_only_under_the_ablation(setup):
    adapter, engine, task, items, ablation = setup
    pairs = make_pairs(task, items, CF_REVERSED)
    layers = _layers(adapter)
    out = backup_batch(engine, task, pairs, ablation, layers=layers)
    assert out["layers"] == ["emb", *layers]
    # "emb" (layer 0's input): alone(c0) at the clean start == alone(c0) at the counterfactual end
    assert _max_change(out, 0) < SAME

    clean_inputs, counter_inputs = criss_cross.encode_pairs(adapter, task, pairs)
    targets, sources = criss_cross.swap_positions(clean_inputs, counter_inputs, pairs, "object")
    clean_ablation = ablation.interventions(clean_inputs, [p.clean for p in pairs])
    counter_ablation = ablation.interventions(counter_inputs, [p.counterfactual for p in pairs])
    # The swapped tokens at layer 0's input: identical under the ablation, different pictures' tokens without it.
    ablated = zip(_swapped_values(engine, "lm.resid_pre.0", clean_inputs, targets, clean_ablation),
                  _swapped_values(engine, "lm.resid_pre.0", counter_inputs, sources, counter_ablation))
    assert all(torch.equal(a, b) for a, b in ablated)
    plain = zip(_swapped_values(engine, "lm.resid_pre.0", clean_inputs, targets),
                _swapped_values(engine, "lm.resid_pre.0", counter_inputs, sources))
    assert any(not torch.equal(a, b) for a, b in plain)
    # From layer 1 on, they carry what the LM wrote in the other context.
    later = zip(_swapped_values(engine, "lm.resid_pre.1", clean_inputs, targets, clean_ablation),
                _swapped_values(engine, "lm.resid_pre.1", counter_inputs, sources, counter_ablation))
    assert max(float((a - b).abs().max()) for a, b in later) > CONTEXT

    # So the patched logits stay the clean run's at layer 0 (up to the float32 rounding of the sweep's
    # recomputation, whose order of operations differs from a whole forward) and move more after it.
    sweep = engine.patch_sweep(
        clean_inputs, counter_inputs, targets, sources, layers=layers, keep_logits=True,
        target_interventions=clean_ablation, source_interventions=counter_ablation,
    )
    moved = (sweep.logits - sweep.clean_logits[None]).abs().amax(dim=(1, 2))
    assert float(moved[0]) <= ROUNDING and float(moved[1:].max()) > float(moved[0])


def test_experiment_schema_and_resume(tmp_path):
    adapter = adapter_class("qwen2-vl").tiny(0)
    options = {"n": 4, "filter_correct": False}
    path = run_experiment("backup", adapter, out_root=tmp_path, options=options, batch_size=2, progress=False)
    result = load_result(path.parent)
    metrics = result["metrics"]
    assert result["experiment"] == "backup" and result["task"] == "squares"
    labels = ["emb", *range(adapter.num_layers)]
    assert metrics["layers"] == labels and metrics["region"] == "object"
    assert metrics["n_pairs"] == metrics["kept_pairs"] == 4
    assert metrics["pairs"]["filter_correct"] is False and metrics["pairs"]["counterfactual"] == CF_REVERSED
    for key in ("clean", "flipped"):
        assert len(metrics["curves"][key]) == len(metrics["top1"][key]) == len(labels)
        assert all(0.0 <= v <= 1.0 for v in metrics["curves"][key])
    assert metrics["flip_rate"] == metrics["top1"]["flipped"]
    assert set(metrics["ablated_clean_run"]) == {"clean", "flipped"}
    assert result["config"]["ablation"]["site"] == "projector.out"
    assert {"iia_curves.png", "iia_curves.svg"} <= set(result["figures"])
    assert result["tables"] == {"curves": "curves.csv", "pairs": "pairs.csv"}

    units = sorted((path.parent / "units").glob("batch-*.json"))
    assert len(units) == 2
    units[-1].unlink()
    path.unlink()
    resumed = run_experiment("backup", adapter, out_root=tmp_path, options=options, batch_size=2, resume=True, progress=False)
    assert load_result(resumed.parent)["metrics"] == metrics


def test_layers_option_and_bad_n(tmp_path):
    adapter = adapter_class("paligemma").tiny(0)
    path = run_experiment("backup", adapter, out_root=tmp_path, options={"n": 2, "filter_correct": False, "layers": "1"},
                          progress=False)
    assert load_result(path.parent)["metrics"]["layers"] == ["emb", 1]
    with pytest.raises(UserInputError, match="--n"):
        run_experiment("backup", adapter, out_root=tmp_path, options={"n": 0}, progress=False)
    with pytest.raises(UserInputError, match="does not run on task"):
        run_experiment("backup", adapter, out_root=tmp_path, task="scenes", progress=False)


def test_no_pair_answered_under_the_ablation_is_a_result_not_a_failure(tmp_path):
    """A model that cannot answer under the ablation (here: an all-zero LM head, so every answer ties and
    none wins) has no backup to patch: the run finishes with zero pairs, the filter's counts and a finding."""
    adapter = adapter_class("qwen2-vl").tiny(0, num_layers=2)
    with torch.no_grad():
        adapter.model.lm_head.weight.zero_()
    path = run_experiment("backup", adapter, out_root=tmp_path, options={"n": 2}, batch_size=8, progress=False)
    result = load_result(path.parent)
    metrics = result["metrics"]
    candidates = metrics["pairs"]["candidates"]
    assert candidates > 0 and metrics["candidate_pairs"] == candidates
    assert metrics["n_pairs"] == metrics["kept_pairs"] == 0 and metrics["max_flip_rate"] is None
    assert metrics["pairs"]["dropped_both_wrong"] == candidates
    assert metrics["finding"].startswith(f"no backup: under the vision ablation the model answered none of {candidates}")
    assert result["figures"] == [] and "curves" not in metrics
    # resuming the finished run reuses the saved filter and gives the same result
    path.unlink()
    resumed = run_experiment("backup", adapter, out_root=tmp_path, options={"n": 2}, batch_size=8, resume=True, progress=False)
    assert load_result(resumed.parent)["metrics"] == metrics

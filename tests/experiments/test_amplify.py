"""`amplify` on tiny random models of several families whose token grid fits the scenes.

Untrained models answer almost nothing right, so runs set `filter_correct=False` (probes fitted on all
probe items). Checked: the intervention itself (alpha 0 is the model bit for bit; alpha > 0 changes the
LM's layer-0 input at image positions only, by exactly the SPEC formula, per row's own axis); the
summary arithmetic on hand-made curves; the result contract; probe / evaluation items never share an
image; resume after an interruption equals an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spatialmech.engine import Engine, image_positions
from spatialmech.errors import UserInputError
from spatialmech.experiments import amplify, amplify_fit, amplify_output, amplify_sweep
from spatialmech.experiments.common import encode_items, score_items
from spatialmech.experiments.probing import LinearProbe, image_key, load_probes, save_probes
from spatialmech.experiments.runner import load_result, run_experiment
from spatialmech.models import adapter_class
from spatialmech.tasks import get_task

FAMILIES = ("qwen2-vl", "qwen2.5-vl", "paligemma", "gemma3")
RUN_FAMILIES = ("qwen2-vl", "paligemma", "gemma3")
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "whatsup"
SPEC_METRICS = ("baseline_accuracy", "random_accuracy", "accuracy", "best_alpha", "oracle_accuracy", "fails_fixed")


def _tiny(family: str):
    return adapter_class(family).tiny(0, tokens_per_side=6) if family == "gemma3" else adapter_class(family).tiny(0)


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):
    return _tiny(request.param)


def _probes(hidden: int, seed: int = 0) -> dict[str, LinearProbe]:
    gen = torch.Generator().manual_seed(seed)
    return {axis: LinearProbe(torch.randn(hidden, 2, generator=gen), torch.randn(2, generator=gen), classes)
            for axis, classes in amplify.AXIS_CLASSES.items()}


def _batch(adapter):
    """Two scenes, one per axis, so each row is steered by a different probe."""
    task = get_task("scenes", geometry=adapter.grid_spec())
    pool = task.items(12, seed=3)
    items = [next(i for i in pool if i.axis == "horizontal"), next(i for i in pool if i.axis == "vertical")]
    return task, items, encode_items(adapter, task, items)


def _record_all(engine, inputs, steers=()):
    everything = [torch.arange(inputs.seq_len)] * inputs.batch_size
    run = engine.run(inputs, steers, record={"lm.resid_pre.0": everything, "projector.out": image_positions(inputs)})
    return run.logits, run.activations


@pytest.mark.parametrize("variant", amplify.VARIANTS)
def test_alpha_zero_is_the_model_bit_for_bit(adapter, variant):
    _, items, inputs = _batch(adapter)
    engine = Engine(adapter)
    steers = amplify.amplification_interventions(adapter, inputs, items, _probes(adapter.hidden_size), 0.0, variant)
    assert len(steers) == 2
    assert torch.equal(engine.logits(inputs, steers), adapter.forward(inputs))


@pytest.mark.parametrize("variant", amplify.VARIANTS)
def test_amplification_touches_image_positions_only(adapter, variant):
    _, items, inputs = _batch(adapter)
    engine = Engine(adapter)
    probes = _probes(adapter.hidden_size)
    clean_logits, clean = _record_all(engine, inputs)
    steers = amplify.amplification_interventions(adapter, inputs, items, probes, 3.0, variant)
    logits, steered = _record_all(engine, inputs, steers)
    assert not torch.equal(logits, clean_logits)
    for row, item in enumerate(items):
        image = torch.zeros(inputs.seq_len, dtype=torch.bool)
        image[image_positions(inputs)[row]] = True
        before, after = clean["lm.resid_pre.0"][row], steered["lm.resid_pre.0"][row]
        assert torch.equal(before[~image], after[~image])  # text positions: bit-identical layer-0 input
        assert not torch.allclose(before[image], after[image])
        # what the LM received at image positions is the SPEC formula applied to the clean projector output
        h = clean["projector.out"][row].float()
        fn = amplify.steering_function(probes[item.axis], 3.0, variant)
        torch.testing.assert_close(after[image].float(), fn(h).float(), rtol=1e-5, atol=1e-5)
        if variant == "projection":
            w = probes[item.axis].weight
            expected = h + 3.0 * ((h @ w) / (w * w).sum(0)) @ w.T
            torch.testing.assert_close(after[image].float(), expected, rtol=1e-5, atol=1e-5)


def test_saved_probe_file_gives_the_same_interventions(tmp_path):
    adapter = _tiny("qwen2-vl")
    _, items, inputs = _batch(adapter)
    engine = Engine(adapter)
    probes = _probes(adapter.hidden_size, seed=1)
    path = save_probes(tmp_path / "amp.safetensors", probes, {"site": "projector.out", "variant": "add"})
    from_file = engine.logits(inputs, amplify.amplification_interventions(adapter, inputs, items, path, 2.0))
    from_memory = engine.logits(inputs, amplify.amplification_interventions(adapter, inputs, items, probes, 2.0, "add"))
    assert torch.equal(from_file, from_memory)  # the file's variant ("add") is the default
    task = get_task("scenes", geometry=adapter.grid_spec())
    scored = score_items(adapter, task, items, logits_fn=amplify.amplification_logits(adapter, path, 2.0))
    unsteered = score_items(adapter, task, items)
    assert [s.p_answer for s in scored] != [s.p_answer for s in unsteered]
    same = score_items(adapter, task, items, logits_fn=amplify.amplification_logits(adapter, path, 0.0))
    assert [s.p_answer for s in same] == [s.p_answer for s in unsteered]


def test_intervention_errors(tmp_path):
    adapter = _tiny("qwen2-vl")
    _, items, inputs = _batch(adapter)
    with pytest.raises(UserInputError, match="hidden size"):
        amplify.amplification_interventions(adapter, inputs, items, _probes(adapter.hidden_size + 1), 1.0)
    only_horizontal = {"horizontal": _probes(adapter.hidden_size)["horizontal"]}
    with pytest.raises(UserInputError, match="no vertical probe"):
        amplify.amplification_interventions(adapter, inputs, items, only_horizontal, 1.0)
    steers = amplify.amplification_interventions(adapter, inputs, items, only_horizontal, 1.0, skip_missing=True)
    assert len(steers) == 1 and steers[0].positions[1].numel() == 0
    with pytest.raises(UserInputError, match="does not exist"):
        amplify.amplification_interventions(adapter, inputs, items, tmp_path / "none.safetensors", 1.0)
    with pytest.raises(UserInputError, match="variant"):
        amplify.config_from({"variant": "scale"})


def test_random_directions_have_unit_columns_and_are_seeded():
    a = amplify.random_directions(64, 0, "horizontal", ["left", "right"])
    torch.testing.assert_close(a.weight.norm(dim=0), torch.ones(2))
    assert torch.equal(a.weight, amplify.random_directions(64, 0, "horizontal", ["left", "right"]).weight)
    assert not torch.equal(a.weight, amplify.random_directions(64, 0, "vertical", ["above", "below"]).weight)


def test_summary_arithmetic_on_hand_made_curves():
    T, F = True, False
    # items 0-2 are the validation half, 3-5 the test half
    probe = {0: [T, F, F, F, T, F], 1: [T, T, F, T, T, T], 2: [T, T, T, F, F, F]}
    rand = {0: probe[0], 1: [T, F, F, F, F, F], 2: [T, F, F, T, T, F]}
    s = amplify_sweep.summarise({"probe": probe, "random": rand}, validation=[0, 1, 2], test=[3, 4, 5])
    assert s["n"] == 6 and s["baseline_accuracy"] == 2 / 6
    assert s["best_alpha"] == 1 and s["accuracy"] == 5 / 6
    assert s["oracle_accuracy"] == 1.0 and s["oracle_fails_fixed"] == 1.0
    assert s["fails_fixed"] == 3 / 4 and s["broken"] == 0.0  # failures 1, 2, 3, 5; alpha 1 fixes 1, 3, 5
    assert s["random_accuracy"] == 1 / 6 and s["random_fails_fixed"] == 0.0  # random at the probe's alpha
    assert s["random_best_alpha"] == 2 and s["random_best_accuracy"] == 3 / 6 and s["random_best_fails_fixed"] == 1 / 4
    held = s["held_out"]
    assert held["alpha"] == 2  # validation: alpha 2 gets 3/3
    assert held["accuracy"] == 0.0 and held["baseline_accuracy"] == 1 / 3 and held["fails_fixed"] == 0.0
    assert held["random_alpha"] == 0 and held["random_accuracy_at_probe_alpha"] == 2 / 3
    assert amplify_sweep.best_alpha({0: [T, F], 1: [T, T], 2: [T, T]}) == 1  # ties go to the smaller alpha


def test_probe_and_evaluation_items_never_share_an_image():
    scenes = get_task("scenes")
    evaluation, probe_items, how = amplify_fit.split_items(scenes, "scenes", 20, seed=0)
    assert len(evaluation) == len(probe_items) == 20 and how["shared_images"] == 0
    assert not {image_key(i) for i in evaluation} & {image_key(i) for i in probe_items}
    coco = get_task("coco-spatial", data_root=str(FIXTURE))
    evaluation, probe_items, how = amplify_fit.split_items(coco, "coco-spatial", None, seed=0)
    assert evaluation and probe_items and not {image_key(i) for i in evaluation} & {image_key(i) for i in probe_items}
    assert len(evaluation) + len(probe_items) == len(coco.items())


def _run(adapter, out, **kwargs):
    options = {"n": 6, "alphas": [0, 2, 8], "filter_correct": False, "protocol": "strict", **kwargs.pop("options", {})}
    return run_experiment("amplify", adapter, out_root=out, options=options, batch_size=4, progress=False, **kwargs)


@pytest.mark.parametrize("family", RUN_FAMILIES)
def test_result_contract(family, tmp_path):
    adapter = _tiny(family)
    saved = tmp_path / "saved.safetensors"
    result = load_result(_run(adapter, tmp_path, options={"save_probe": str(saved)}).parent)
    metrics, config = result["metrics"], result["config"]
    assert result["experiment"] == "amplify" and result["task"] == "scenes"
    for key in SPEC_METRICS:
        assert key in metrics
    assert metrics["n"] == 6 and metrics["best_alpha"] in (0, 2, 8)
    assert metrics["oracle_accuracy"] >= metrics["accuracy"] >= metrics["baseline_accuracy"]
    assert metrics["random_best_accuracy"] >= metrics["random_accuracy"]
    assert metrics["probe_split"]["shared_images"] == 0 and metrics["probe_split"]["probe_items"] == 6
    assert metrics["held_out"]["validation_n"] + metrics["held_out"]["test_n"] == 6
    assert metrics["probe_fit"]["filter"]["kept"] == 6  # filter_correct=False: every probe item is used
    assert config["variant"] == "projection" and config["alphas"] == [0, 2, 8] and "evaluation items" in config["alpha_selection"]
    assert set(result["tables"]) == {"alpha_curve", "items", "probe_fit"}
    assert {"amplify_alpha.png", "amplify_bars.png"} <= set(result["figures"])
    for path in (tmp_path / "amplify" / amplify_output.PROBE_FILE, saved):
        loaded = load_probes(path)
        assert loaded.metadata["site"] == "projector.out" and loaded.metadata["variant"] == "projection"
        assert loaded.metadata["best_alpha"] == metrics["best_alpha"]
        for axis, probe in loaded.probes.items():
            assert probe.weight.shape == (adapter.hidden_size, 2) and probe.classes == amplify.AXIS_CLASSES[axis]


def test_add_variant_and_coco_spatial_run(tmp_path):
    adapter = _tiny("qwen2-vl")
    result = load_result(
        _run(adapter, tmp_path, task="coco-spatial", data_root=str(FIXTURE), options={"n": None, "variant": "add"}).parent
    )
    assert result["config"]["variant"] == "add" and result["task"] == "coco-spatial"
    assert result["metrics"]["n"] == result["metrics"]["probe_split"]["evaluation_items"] >= 1


def test_resume_after_interruption_gives_the_same_result(tmp_path, monkeypatch):
    adapter = _tiny("paligemma")
    reference = load_result(_run(adapter, tmp_path / "a").parent)
    calls = {"n": 0}
    real_logits = Engine.logits

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # in the middle of the alpha sweep
            raise KeyboardInterrupt
        return real_logits(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "logits", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(adapter, tmp_path / "b")
    monkeypatch.setattr(Engine, "logits", real_logits)
    units = sorted(p.name for p in (tmp_path / "b" / "amplify" / "units").glob("*.json"))
    assert any(u.startswith("probe-fit") for u in units) and any(u.startswith("sweep-") for u in units)
    resumed = load_result(_run(adapter, tmp_path / "b", resume=True).parent)
    assert resumed["metrics"] == reference["metrics"]
    for table in resumed["tables"].values():
        assert (tmp_path / "a" / "amplify" / table).read_text() == (tmp_path / "b" / "amplify" / table).read_text()


def test_sweep_scores_from_reused_encodings_equal_raw_scoring(adapter):
    """The sweep builds each group's inputs once (pictures from the picture memo); steered scores must
    equal scoring from raw inputs (pixels through the encoder in every forward)."""
    from spatialmech.experiments.common import ReusedEncodings, encode_items

    task = get_task("scenes", geometry=adapter.grid_spec())
    items = task.items(6, seed=5)
    logits_fn = amplify.amplification_logits(adapter, _probes(adapter.hidden_size), 6.0)
    raw = score_items(adapter, task, items, 4, logits_fn, encode=lambda *a: encode_items(*a, keep_pixels=True))
    reuse = ReusedEncodings()
    for _ in range(2):  # the second pass is served entirely from the kept encodings
        reused = score_items(adapter, task, items, 4, logits_fn, encode=reuse)
        assert [s.correct for s in reused] == [s.correct for s in raw]
        assert [s.predicted_token for s in reused] == [s.predicted_token for s in raw]
        torch.testing.assert_close(torch.tensor([s.p_answer for s in reused]), torch.tensor([s.p_answer for s in raw]), atol=1e-5, rtol=0)
    # 2 batches, each holding both option orders: each batch's inputs kept once
    assert len(reuse._inputs) == 2

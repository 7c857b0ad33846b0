"""`probe` on tiny random models of three families whose token grid fits 3 objects.

Random models encode nothing in particular, so accuracies here are not the point (the probe's
learning is checked on synthetic features in test_probing.py). What is checked: object/strip token
labels against the drawing geometry; the result contract and the saved probe file; that the numbers
in the result are what the saved probes give on the cached features; resume after an interruption.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spatialmech.engine import ActivationStore, Engine
from spatialmech.experiments import probe
from spatialmech.experiments.common import encode_items
from spatialmech.experiments.probing import load_probes
from spatialmech.experiments.runner import load_result, model_fingerprint, run_experiment
from spatialmech.models import adapter_class
from spatialmech.tasks import get_task

FAMILIES = ("qwen2-vl", "paligemma", "gemma3")
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "whatsup"


def _tiny(family: str):
    return adapter_class(family).tiny(0, tokens_per_side=6) if family == "gemma3" else adapter_class(family).tiny(0)


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):
    model = _tiny(request.param)
    assert model.grid_spec().tokens_per_side >= 5
    return model


def _run(adapter, out, n=8, **kwargs):
    return run_experiment("probe", adapter, out_root=out, options={"n": n, **kwargs.pop("options", {})}, batch_size=4, progress=False, **kwargs)


@pytest.fixture(scope="module")
def finished(adapter, tmp_path_factory):
    """One finished run per family (with --save-probe), shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("probe-run")
    saved = root / "copy.safetensors"
    result = load_result(_run(adapter, root, options={"save_probe": str(saved)}).parent)
    return root, result, saved


def test_token_labels_follow_the_drawing(adapter):
    task = get_task("squares", geometry=adapter.grid_spec())
    geometry = task.geometry
    for axis in probe.AXES:
        item = next(i for i in task.items() if i.axis == axis)
        inputs = encode_items(adapter, task, [item])
        positions, labels = probe.token_labels(item, inputs.images[0][0], axis)
        assert len(positions) == geometry.tokens_per_side**2
        rows, cols, objects, strips = labels.T
        for obj in item.objects:
            r0, c0, r1, c1 = obj.box_cells
            on = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
            assert bool((objects[on] == obj.ordinal[axis]).all()) and bool((strips[on] == probe.IN_OBJECT).all())
            s0r, s0c, s1r, s1c = geometry.strip_cells(obj.box_cells, axis)
            in_strip = (rows >= s0r) & (rows < s1r) & (cols >= s0c) & (cols < s1c) & ~on
            assert bool((strips[in_strip] == obj.ordinal[axis]).all())
            # a strip spans the whole image across the axis, so it holds (strip width x side) - object tokens
            assert int(in_strip.sum()) == geometry.strip_tokens * geometry.tokens_per_side - geometry.object_tokens**2
        assert int((objects >= 0).sum()) == 3 * geometry.object_tokens**2
        assert set(objects.tolist()) <= {-1, 0, 1, 2}


def test_result_contract_and_probe_file(adapter, finished):
    root, result, saved = finished
    metrics = result["metrics"]
    assert result["experiment"] == "probe" and result["task"] == "squares"
    assert result["config"]["site"] == "projector.out" and result["config"]["epochs"] == 200
    assert result["config"]["lr"] == 1e-3 and result["config"]["weight_decay"] == 1e-4
    assert set(metrics["accuracy"]) == set(metrics["background_agreement"]) == {"horizontal", "vertical"}
    for axis in probe.AXES:
        assert 0.0 <= metrics["accuracy"][axis] <= 1.0 and 0.0 <= metrics["background_agreement"][axis] <= 1.0
        assert 0.0 <= metrics["control"]["accuracy"][axis] <= 1.0
        assert metrics["n_train"][axis] == 6 and metrics["n_test"][axis] == 2
        k = get_task("squares", geometry=adapter.grid_spec()).geometry.object_tokens
        assert metrics["n_train_tokens"][axis] == 6 * 3 * k * k
        assert metrics["n_test_object_tokens"][axis] == 2 * 3 * k * k
    assert metrics["chance"] == pytest.approx(1 / 3)
    out = root / "probe"
    for name in result["figures"]:
        assert (out / name).is_file()
    assert {"probe_heatmaps_horizontal.png", "probe_heatmaps_vertical.png", "probe_accuracy.png"} <= set(result["figures"])
    assert set(result["tables"]) == {"probe_summary", "background_confusion"}
    panel = result["data"]["heatmaps"]["horizontal"][0]
    side = adapter.grid_spec().tokens_per_side
    assert len(panel["grid"]) == side and all(len(row) == side for row in panel["grid"])
    assert {v for row in panel["grid"] for v in row} <= {0, 1, 2}

    for path in (out / probe.PROBE_FILE, saved):
        loaded = load_probes(path)
        assert loaded.metadata["site"] == "projector.out" and loaded.metadata["model"] == model_fingerprint(adapter)
        assert set(loaded.probes) == {"horizontal", "vertical"}
        assert loaded.probes["horizontal"].classes == ["left", "middle", "right"]
        assert loaded.probes["vertical"].weight.shape == (adapter.hidden_size, 3)


def test_result_numbers_are_what_the_saved_probe_gives(adapter, finished):
    """Recompute test accuracy and strip agreement from the stored features with the saved probe."""
    root, result, _ = finished
    probes = load_probes(root / "probe" / probe.PROBE_FILE).probes
    task = get_task("squares", geometry=adapter.grid_spec())
    images = probe.select_images(task.items(), 8, seed=0)
    for axis in probe.AXES:
        store = ActivationStore(root / "probe" / "units" / f"features-{axis}")
        assert store.num_items == 8
        _, test_idx = probe.split_indices(8, 2, seed=0)
        right = total = agree = strip_total = 0
        for i in test_idx:
            features, labels = store.item(probe.SITE, i).float(), store.item(probe.LABELS_SITE, i)
            predicted = probes[axis].predict(features)
            objects, strips = labels[:, 2] >= 0, labels[:, 3] >= 0
            right += int((predicted[objects] == labels[objects, 2]).sum())
            total += int(objects.sum())
            agree += int((predicted[strips] == labels[strips, 3]).sum())
            strip_total += int(strips.sum())
            # the stored features are the model's projector output for that image
            inputs = encode_items(adapter, task, [images[axis][i]])
            fresh = Engine(adapter).cache(inputs, {probe.SITE: [store.positions(probe.SITE, i)]})[probe.SITE][0]
            torch.testing.assert_close(fresh.float(), features, rtol=0, atol=0)
        assert result["metrics"]["accuracy"][axis] == right / total
        assert result["metrics"]["background_agreement"][axis] == agree / strip_total


def test_resume_after_interruption_gives_the_same_result(adapter, finished, tmp_path, monkeypatch):
    _, reference, _ = finished
    calls = {"n": 0}
    real_cache = Engine.cache

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # vertical's second batch: horizontal done, half of vertical's features stored
            raise KeyboardInterrupt
        return real_cache(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "cache", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(adapter, tmp_path / "b")
    monkeypatch.setattr(Engine, "cache", real_cache)
    units = tmp_path / "b" / "probe" / "units"
    assert (units / "features-horizontal.json").is_file()  # stage 1 (features) runs every axis before any fit
    assert not (units / "features-vertical.json").exists() and not (units / "probe-horizontal.json").exists()
    assert not (tmp_path / "b" / "probe" / "result.json").exists()
    assert ActivationStore(tmp_path / "b" / "probe" / "units" / "features-vertical").num_items == 4
    resumed = load_result(_run(adapter, tmp_path / "b", resume=True).parent)
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["data"] == reference["data"]
    assert resumed["config"] == {**reference["config"], "save_probe": None}


def test_whatsup_probe_runs_on_the_horizontal_axis_only(tmp_path):
    import shutil

    adapter = _tiny("qwen2-vl")
    # Experiments load What'sUp with the model's tokenizer, which keeps one-token names only: the tiny
    # tokenizer splits "mug", so the fixture's mug photos are renamed to "pot" (one token) here.
    root = shutil.copytree(FIXTURE, tmp_path / "whatsup")
    for photo in (root / "data" / "controlled_images").glob("mug_*"):
        photo.rename(photo.with_name(photo.name.replace("mug_", "pot_")))
    listing = root / "data" / "controlled_images_dataset.json"
    listing.write_text(listing.read_text().replace("mug_", "pot_"))
    result = load_result(
        run_experiment("probe", adapter, out_root=tmp_path / "out", task="whatsup", data_root=str(root), progress=False).parent
    )
    metrics = result["metrics"]
    assert set(metrics["accuracy"]) == {"horizontal"} and "vertical" in metrics["axes_skipped"]
    # the fixture's chair has two side objects with both photos: 2 ordered pairs = 2 composites
    assert metrics["n_train"]["horizontal"] + metrics["n_test"]["horizontal"] == 2
    # the objects are the authors' hand-labelled probe boxes: the rest of each box's column band is
    # background of that strip, so there is an agreement to report
    assert 0.0 <= metrics["background_agreement"]["horizontal"] <= 1.0
    assert metrics["n_background_strip_tokens"]["horizontal"] > 0


def test_bad_n_is_a_user_error():
    from spatialmech.errors import UserInputError

    with pytest.raises(UserInputError, match="too small"):
        probe.config_from({"n": 1})

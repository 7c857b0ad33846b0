"""`criss-cross` region swaps on tiny random models of three families whose grid fits 3 objects.

Checked: the regions (object boxes and strips) on each model's own token grid; the result contract
with the embeddings row; that patching every region from the same place of the same input is the
clean run exactly; that the criss-cross swap moves the curves; that `sweep_batch` applies the caller's
interventions (the `backup` experiment's use); resume.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from spatialmech.engine import Ablate, Engine, image_positions, regions
from spatialmech.errors import UserInputError
from spatialmech.experiments import criss_cross, patching
from spatialmech.experiments.common import Pair, encode_items, make_pairs
from spatialmech.experiments.runner import load_result, run_experiment
from spatialmech.models import adapter_class
from spatialmech.tasks import get_task
from spatialmech.tasks.base import CF_REVERSED, Item

FAMILIES = ("qwen2-vl", "qwen2.5-vl", "paligemma")
REGION_OF = {"qwen2-vl": "object", "qwen2.5-vl": "strip", "paligemma": "strip"}  # whole runs: both regions, kept fast
BUNDLED = Path(__file__).resolve().parents[2] / "src" / "spatialmech" / "assets" / "bundled_model"
SAME = 1e-7  # probabilities of runs that must be equal (float32 noise is ~1e-9 here)
MOVED = 1e-6  # a real patch on these tiny models moves tracked probabilities by 1e-6..1e-4


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


def _run(adapter, out, region, **kwargs):
    options = {"n": 4, "filter_correct": False, "region": region}
    return run_experiment("criss-cross", adapter, out_root=out, options=options, batch_size=2, progress=False, **kwargs)


def _change(out, label_index):
    return max(abs(r["iia"][label_index][k] - r["clean_run"][key]) for r in out["pairs"] for k, key in enumerate(criss_cross.ANSWERS))


def _cells(adapter, inputs, row, positions):
    tokens = inputs.images[row][0]
    where = {int(p): (int(r), int(c)) for p, r, c in zip(tokens.positions, tokens.rows, tokens.cols)}
    return [where[int(p)] for p in positions]


def test_regions_on_the_models_own_grid(adapter):
    task = _squares(adapter)
    geometry = task.geometry
    n, k = geometry.tokens_per_side, geometry.object_tokens
    items = [i for i in task.items(None) if i.relation in ("left", "above")][::40][:4]
    assert {i.axis for i in items} == {"horizontal", "vertical"}
    inputs = encode_items(adapter, task, items)
    objects_a, objects_b = criss_cross.end_regions(inputs, items, "object")
    strips_a, strips_b = criss_cross.end_regions(inputs, items, "strip")
    for row, item in enumerate(items):
        for index, region in ((0, objects_a[row]), (2, objects_b[row])):
            row0, col0, row1, col1 = item.objects[index].box_cells
            expected = [(r, c) for r in range(row0, row1) for c in range(col0, col1)]
            assert _cells(adapter, inputs, row, region) == expected  # raster order: swapped token by token
        for objects, strip in ((objects_a[row], strips_a[row]), (objects_b[row], strips_b[row])):
            cells = _cells(adapter, inputs, row, strip)
            outer = geometry.strip_bands()[0][1]  # the end strips are the outer bands of the tiling
            assert len(cells) == outer * n
            along = {c for _, c in cells} if item.axis == "horizontal" else {r for r, _ in cells}
            across = {r for r, _ in cells} if item.axis == "horizontal" else {c for _, c in cells}
            assert len(along) == outer and across == set(range(n))  # a full band
            assert along in (set(range(outer)), set(range(n - outer, n)))
            assert set(objects.tolist()) <= set(strip.tolist())
        assert not set(strips_a[row].tolist()) & set(strips_b[row].tolist())
        assert len(objects_a[row]) == k * k
        # without the recorded strip cells, the strip is the object box widened by the spacing
        bare = Item.from_dict({**item.to_dict(), "meta": {}})
        for index in (0, 2):
            assert regions.strip_box(bare, index) == pytest.approx(regions.strip_box(item, index))


def test_flipped_answer_is_the_attribute_at_the_mirrored_position():
    task = get_task("squares")
    for pair in make_pairs(task, task.items(12, seed=4), CF_REVERSED):
        words = criss_cross.tracked_answers(pair)
        assert words["clean"] == pair.clean.answer
        assert words["flipped"] == pair.clean.objects[2 - pair.clean.target].attribute == pair.counterfactual.answer
        assert words["flipped"] != words["clean"]


def test_result_schema_with_embeddings_row(adapter, tmp_path):
    region = REGION_OF[adapter.family]
    result = load_result(_run(adapter, tmp_path, region).parent)
    metrics = result["metrics"]
    labels = ["emb", *range(adapter.num_layers)]
    assert result["config"]["region"] == region and metrics["region"] == region
    assert metrics["layers"] == labels and metrics["n_pairs"] == 4 and metrics["pairs"]["kept"] == 4
    assert set(metrics["curves"]) == set(metrics["top1"]) == {"clean", "flipped"}
    for series in (*metrics["curves"].values(), *metrics["top1"].values(), metrics["flip_rate"], metrics["top1_unchanged"]):
        assert len(series) == len(labels) and all(0.0 <= v <= 1.0 for v in series)
    assert metrics["flip_rate"] == metrics["top1"]["flipped"]
    assert set(metrics["flip_layers"]) <= set(labels) and 0.0 <= metrics["max_flip_rate"] <= 1.0
    folder = tmp_path / ("criss-cross-strip" if region == "strip" else "criss-cross")
    curves = _csv(folder / "curves.csv")
    assert [(r["layer"], r["answer"]) for r in curves[:2]] == [("emb", "clean"), ("emb", "flipped")]
    assert len(curves) == 2 * len(labels)
    assert len(_csv(folder / "pairs.csv")) == 4
    assert all((folder / name).stat().st_size > 0 for name in ("iia_curves.png", "iia_curves.svg"))


@pytest.mark.parametrize("region", criss_cross.REGIONS)
def test_patching_regions_from_the_same_input_is_the_clean_run(adapter, region):
    task = _squares(adapter)
    pairs = [Pair(item, item, "identity") for item in task.items(4, seed=1)]
    out = criss_cross.sweep_batch(Engine(adapter), task, pairs, region=region, layers=range(adapter.num_layers), mapping="aligned")
    assert out["layers"] == ["emb", *range(adapter.num_layers)]
    for record in out["pairs"]:
        assert record["predictions"] == [record["clean_prediction"]] * len(out["layers"])  # top-1 agreement 1.0
    for index in range(len(out["layers"])):
        assert _change(out, index) < SAME


def test_the_criss_cross_swap_moves_the_curves(adapter):
    task = _squares(adapter)
    pairs = make_pairs(task, task.items(4, seed=2), CF_REVERSED)
    out = criss_cross.sweep_batch(Engine(adapter), task, pairs, region="strip", layers=range(adapter.num_layers))
    assert max(_change(out, index) for index in range(len(out["layers"]))) > MOVED


def test_sweep_applies_the_callers_interventions(adapter):
    """`backup` passes ablations for the inputs it built: the clean and counterfactual runs must use them."""
    task = _squares(adapter)
    engine = Engine(adapter)
    pairs = make_pairs(task, task.items(2, seed=5), CF_REVERSED)
    clean, counter = criss_cross.encode_pairs(adapter, task, pairs)
    ablate_clean = [Ablate("projector.out", image_positions(clean), "zero")]
    ablate_counter = [Ablate("projector.out", image_positions(counter), "zero")]
    out = criss_cross.sweep_batch(
        engine, task, pairs, region="object", layers=[0, adapter.num_layers - 1], clean_inputs=clean, counter_inputs=counter,
        target_interventions=ablate_clean, source_interventions=ablate_counter,
    )
    words = [criss_cross.tracked_answers(p) for p in pairs]
    expected = engine.answer_probabilities(clean, patching.answer_sets(adapter, pairs, words), ablate_clean)
    for row, record in enumerate(out["pairs"]):
        assert [record["clean_run"][k] for k in criss_cross.ANSWERS] == pytest.approx(expected[row].tolist(), abs=SAME)
        # every image token is zero in both runs, so swapping them changes nothing at any layer
        for probs in record["iia"]:
            assert probs == pytest.approx(expected[row].tolist(), abs=SAME)
    plain = criss_cross.sweep_batch(engine, task, pairs, region="object", layers=[0])
    assert not torch.allclose(torch.tensor(plain["pairs"][0]["iia"][0]), torch.tensor(out["pairs"][0]["iia"][0]), atol=SAME)


def test_resume_after_interruption_gives_the_same_metrics(tmp_path):
    adapter = adapter_class("qwen2-vl").tiny(0)
    first = load_result(_run(adapter, tmp_path, "strip").parent)
    folder = tmp_path / "criss-cross-strip"
    kept_unit = folder / "units" / "batch-00000.json"
    stamp = kept_unit.stat().st_mtime_ns
    (folder / "result.json").unlink()
    (folder / "units" / "batch-00001.json").unlink()
    resumed = load_result(_run(adapter, tmp_path, "strip", resume=True).parent)
    assert resumed["metrics"] == first["metrics"]
    assert kept_unit.stat().st_mtime_ns == stamp


def test_bad_region_and_task_are_user_errors():
    adapter = adapter_class("qwen2-vl").tiny(0)
    with pytest.raises(UserInputError, match="region"):
        criss_cross.config_from({"region": "diagonal"}, adapter)
    assert criss_cross.config_from({"region": None}, adapter)["region"] == "object"
    with pytest.raises(UserInputError, match="does not run on task"):
        run_experiment("criss-cross", adapter, out_root="unused", task="scenes", options={})


@pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="bundled model not trained yet")
def test_cli_on_the_bundled_model(tmp_path, capsys):
    from spatialmech.cli import main

    code = main(["run", "criss-cross", "--region", "strip", "--n", "2", "--layers", "0,1", "--out", str(tmp_path), "--batch-size", "2"])
    assert code == 0, capsys.readouterr().err
    assert not (tmp_path / "criss-cross").exists()  # the strip run has its own folder
    metrics = load_result(tmp_path / "criss-cross-strip")["metrics"]
    assert metrics["region"] == "strip" and metrics["layers"] == ["emb", 0, 1] and 1 <= metrics["n_pairs"] <= 2


@pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="bundled model not trained yet")
def test_regions_hold_the_objects_on_the_trained_model():
    """Control on the bundled model: giving the clean run the reversed image's tokens of *all three*
    object boxes, each at the same place, shows it the reversed image's objects, so the flipped
    attribute must take over; a region that missed the objects would move nothing (the strips'
    ordinals are the same in both images). The end objects alone move it far less on the shipped
    model: its vision tower encodes each object's neighbours, and it reads the answer off the
    reference (middle) object's tokens, which the end-object criss-cross leaves in place."""
    from spatialmech.engine import Patch
    from spatialmech.experiments.common import filter_correct_pairs
    from spatialmech.models import load_model

    adapter = load_model("bundled")
    task = _squares(adapter)
    candidates = make_pairs(task, task.items(None)[::7], CF_REVERSED)
    pairs, _ = filter_correct_pairs(adapter, task, candidates, n=12, batch_size=12)  # right on both inputs
    assert len(pairs) == 12
    engine = Engine(adapter)
    clean_inputs, counter_inputs = criss_cross.encode_pairs(adapter, task, pairs)

    def object_positions(inputs, items):
        return [
            torch.cat([regions.region_positions(inputs.images[row][0], item.box_fraction(i), order="raster") for i in range(3)])
            for row, item in enumerate(items)
        ]

    targets = object_positions(clean_inputs, [p.clean for p in pairs])
    sources = object_positions(counter_inputs, [p.counterfactual for p in pairs])
    assert [t.numel() for t in targets] == [s.numel() for s in sources]
    values = engine.cache(counter_inputs, {criss_cross.EMBEDDINGS_SITE: sources})[criss_cross.EMBEDDINGS_SITE]
    patched_logits = engine.logits(clean_inputs, [Patch(criss_cross.EMBEDDINGS_SITE, targets, values)])
    words = [criss_cross.tracked_answers(p) for p in pairs]
    records = patching.batch_records(
        adapter, pairs, words, patched_logits[None], engine.logits(clean_inputs), engine.logits(counter_inputs))
    all_objects = sum(r["iia"][0][1] for r in records) / len(pairs)  # P(flipped) with every object patched
    clean = sum(r["clean_run"]["flipped"] for r in records) / len(pairs)
    assert all_objects > clean + 0.5, (all_objects, clean)
    assert sum(r["top1"][0][1] for r in records) >= len(pairs) // 2
    ends = criss_cross.sweep_batch(engine, task, pairs, region="object", layers=[], mapping="aligned")
    end_objects = sum(r["iia"][0][1] for r in ends["pairs"]) / len(pairs)
    assert end_objects < all_objects, (end_objects, all_objects)


def test_flip_summary():
    summary = criss_cross.flip_summary(["emb", 0, 1, 2], [0.9, 0.6, 0.5, 0.1])
    assert summary == {"flip_rate": [0.9, 0.6, 0.5, 0.1], "max_flip_rate": 0.9, "flip_layers": ["emb", 0], "last_flip_layer": 0}
    assert criss_cross.flip_summary(["emb"], [0.0])["last_flip_layer"] is None

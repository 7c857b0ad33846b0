"""`amplify --protocol paper`: the authors' coco_amplification code, point by point (SPEC section 7).

Pins: the "touched" token rule (coco_amplification/src/qwen.py `bbox_to_patch_coords_qwen2`); their
95/5 item split (common.py `train_axis_probes`); Table 2 arithmetic as `print_amp_summary` computes it
(accuracy = (correct + fixed) / n, best alpha over alpha > 0, random at its own best); the authors'
probe arrays loaded with allow_pickle=False and refused when D is not the model's hidden size; and a
run on the bundled model that re-runs only failed option orders and records the protocol.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spatialmech.engine import Engine, regions
from spatialmech.errors import UserInputError
from spatialmech.experiments import amplify, amplify_fit, amplify_sweep
from spatialmech.experiments.common import encode_items
from spatialmech.experiments.probing import load_author_probes
from spatialmech.experiments.runner import load_result, protocol_of, run_experiment
from spatialmech.models import adapter_class
from spatialmech.models.registry import bundled_model_path
from spatialmech.tasks import get_task


def _tokens():
    adapter = adapter_class("qwen2-vl").tiny(0)
    task = get_task("scenes", geometry=adapter.grid_spec())
    item = task.items(1, seed=0)[0]
    return adapter, encode_items(adapter, task, [item]).images[0][0]


def test_touched_rule_takes_every_cell_the_box_overlaps():
    _, tokens = _tokens()
    rows, cols = tokens.grid_shapes[tokens.main_tile]
    cell_w, cell_h = 1 / cols, 1 / rows
    tiny = (0.1 * cell_w + cell_w, 0.1 * cell_h, 0.2 * cell_w + cell_w, 0.2 * cell_h)  # inside cell (0, 1)
    index = regions.touched_indices(tokens, tiny)
    assert index.numel() == 1 and (int(tokens.rows[index]), int(tokens.cols[index])) == (0, 1)
    assert regions.region_indices(tokens, tiny).numel() == 0  # the centre rule finds nothing there
    spans = (0.5 * cell_w, 0.5 * cell_h, 2 * cell_w, 1.5 * cell_h)  # ends exactly on a column border: 2 cols x 2 rows
    got = {(int(tokens.rows[i]), int(tokens.cols[i])) for i in regions.touched_indices(tokens, spans)}
    assert got == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert torch.equal(regions.touched_positions(tokens, spans), tokens.positions[regions.touched_indices(tokens, spans)].long())


def test_their_95_5_item_split():
    assert [amplify_fit.paper_test_count(n) for n in (1, 2, 3, 19, 20, 21, 40, 279)] == [0, 1, 1, 1, 1, 2, 2, 14]


def test_summary_arithmetic_as_the_authors():
    # 10 clean items: 6 right, 4 failed (3 horizontal, 1 vertical); fixed flags per alpha > 0
    curves = {"probe": {1: [True, False, False, False], 2: [True, True, False, True], 3: [True, True, False, True]},
              "random": {1: [False, False, False, False], 2: [False, True, False, False], 3: [True, True, False, False]}}
    s = amplify_sweep.paper_summary(10, 6, ["horizontal", "horizontal", "horizontal", "vertical"], ["horizontal"] * 4 + ["vertical"] * 2, curves)
    assert s["baseline_accuracy"] == 0.6 and s["best_alpha"] == 2  # ties between 2 and 3: the first (smallest)
    assert s["accuracy"] == pytest.approx(0.9) and s["fails_fixed"] == pytest.approx(0.75)
    assert s["random_best_alpha"] == 3 and s["random_accuracy"] == pytest.approx(0.8) and s["random_fails_fixed"] == 0.5
    assert s["random_accuracy_at_probe_alpha"] == pytest.approx(0.7) and s["oracle_accuracy"] == pytest.approx(0.9)
    assert s["per_axis"]["vertical"] == {"n": 3, "baseline_accuracy": 2 / 3, "accuracy": 1.0, "random_accuracy": 2 / 3, "oracle_accuracy": 1.0}


def test_authors_probe_arrays_load_and_wrong_size_is_refused(tmp_path):
    adapter, _ = _tokens()
    hidden = adapter.hidden_size
    for axis in ("horizontal", "vertical"):
        np.save(tmp_path / f"qwen2-vl-2b_coco_spatial_probe_{axis}_W_FP32.npy", np.random.randn(hidden, 2).astype(np.float32))
        np.save(tmp_path / f"qwen2-vl-2b_coco_spatial_probe_{axis}_b_FP32.npy", np.zeros(2, np.float32))
    loaded = load_author_probes(tmp_path)
    assert set(loaded.probes) == {"horizontal", "vertical"} and loaded.probes["vertical"].classes == ["above", "below"]
    one = load_author_probes(tmp_path / "qwen2-vl-2b_coco_spatial_probe_vertical_b_FP32.npy")  # a file names its whole set
    assert torch.equal(one.probes["horizontal"].weight, loaded.probes["horizontal"].weight)
    task = get_task("scenes", geometry=adapter.grid_spec())
    items = task.items(2, seed=1)
    inputs = encode_items(adapter, task, items)
    assert amplify.amplification_interventions(adapter, inputs, items, tmp_path, 3.0)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for axis in ("horizontal", "vertical"):
        np.save(wrong / f"m_coco_spatial_probe_{axis}_W_FP32.npy", np.zeros((hidden + 1, 2), np.float32))
        np.save(wrong / f"m_coco_spatial_probe_{axis}_b_FP32.npy", np.zeros(2, np.float32))
    with pytest.raises(UserInputError, match="hidden size"):
        amplify.amplification_interventions(adapter, inputs, items, wrong, 3.0)
    np.save(wrong / "m_coco_spatial_probe_horizontal_W_FP32.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(UserInputError, match="not readable"):
        load_author_probes(wrong)


def test_protocol_option_is_checked():
    assert protocol_of({}) == "paper" and protocol_of({"protocol": "strict"}) == "strict"
    with pytest.raises(UserInputError, match="not a protocol"):
        protocol_of({"protocol": "loose"})


@pytest.mark.skipif(not (bundled_model_path() / "config.json").is_file(), reason="the bundled model is not installed")
def test_paper_run_reruns_only_failed_orders(tmp_path, monkeypatch):
    from spatialmech.api import load_model

    adapter = load_model("bundled").adapter
    rows_run: list[int] = []
    real = Engine.logits

    def counting(self, inputs, *args, **kwargs):
        rows_run.append(inputs.batch_size)
        return real(self, inputs, *args, **kwargs)

    monkeypatch.setattr(Engine, "logits", counting)
    path = run_experiment("amplify", adapter, out_root=tmp_path, options={"n": 16, "alphas": [0, 3]}, batch_size=8, progress=False)
    result = load_result(path.parent)
    m = result["metrics"]
    assert result["config"]["protocol"] == "paper" == m["protocol"]
    assert m["n"] + m["dropped_off_axis"] == 16 and m["baseline_correct"] + m["baseline_failed"] == m["n"]
    assert m["best_alpha"] == 3  # the only alpha > 0
    assert m["accuracy"] >= m["baseline_accuracy"]
    items = {row["id"]: row for row in _csv(path.parent / "items.csv")}
    failed_orders = sum(len(r["failed_orders"].split("/")) for r in items.values() if r["failed_orders"])
    # baseline: 16 items x 2 orders; sweep: each failed order once per direction set (probe, random) at alpha 3
    assert sum(rows_run) == 2 * 16 + 2 * failed_orders


def _csv(path):
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))

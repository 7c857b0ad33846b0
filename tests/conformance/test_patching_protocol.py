"""The patching experiments' protocol points of issue 17 (layer axis, last-token pairs and answers),
each test naming the authors' file (GitHub Nix07/spatial-variable-binding) it follows."""

from __future__ import annotations

import json

import pytest
import torch

from spatialmech.engine import Engine, last_position
from spatialmech.experiments import last_token, layer_axis
from spatialmech.experiments.common import encode_items
from spatialmech.experiments.runner import load_result, run_experiment
from spatialmech.models import adapter_class
from spatialmech.tasks import get_task

CLOSE = 1e-5  # logits of two equal patches computed along different engine paths


@pytest.fixture(scope="module")
def adapter():
    return adapter_class("qwen2-vl").tiny(0)


def test_layer_axis_is_embed_then_each_layers_output(adapter):
    """last_token_exp/src/patch.py: slot 0 = resid_pre of layer 0, slot l+1 = resid_post of layer l;
    last_token_exp/plot.py labels them "Embed", 0, 1, ... So our label l must be layer l's *output*:
    patching it equals patching the input of layer l+1."""
    task = get_task("squares", geometry=adapter.grid_spec())
    pairs = [p for group in last_token.drawn_pairs(task, seed=0, limit=1).values() for p in group]
    engine = Engine(adapter)
    layers = list(range(adapter.num_layers))
    sweep = layer_axis.sweep_layer_axis(
        engine, *(encode_items(adapter, task, [getattr(p, side) for p in pairs]) for side in ("clean", "counterfactual")),
        *(last_position(encode_items(adapter, task, [getattr(p, side) for p in pairs])) for side in ("clean", "counterfactual")),
        layers=layers,
    )
    assert sweep.labels == ["emb", *layers] and sweep.logits.shape[0] == adapter.num_layers + 1
    clean = encode_items(adapter, task, [p.clean for p in pairs])
    counter = encode_items(adapter, task, [p.counterfactual for p in pairs])
    inputs = engine.patch_sweep(clean, counter, last_position(clean), last_position(counter), site="lm.resid_pre.{l}",
                                layers=layers, keep_logits=True, method="naive")
    assert torch.allclose(sweep.logits[0], inputs.logits[0], atol=CLOSE)  # emb = input to layer 0
    for layer in layers[:-1]:  # output of layer l = input to layer l+1
        assert torch.allclose(sweep.logits[layer + 1], inputs.logits[layer + 1], atol=CLOSE)
    assert not torch.allclose(sweep.logits[-1], inputs.logits[-1], atol=CLOSE)  # the last layer's output is new


def test_layers_option_picks_layer_outputs_and_keeps_emb(adapter):
    """plot.py's axis: `--layers 1` gives the points "emb" and 1 (the output of layer 1)."""
    config = last_token.config_from({"layers": "1"}, adapter)
    assert layer_axis.layer_labels(config) == ["emb", 1]
    assert config["sites"] == ["lm.resid_pre.0", "lm.resid_post.{l}"]


def test_last_token_defaults_are_50_pairs_per_direction_and_five_objects(adapter):
    """last_token_exp/build_cf_pairs.py: --target 50 survivors per direction over left/right/above/below,
    random 5-tuples (seed 0); last_token_exp/plot.py: lines c0..c4, one panel per direction."""
    config = last_token.config_from({}, adapter)
    assert config["n"] == 50 and config["per"] == "direction"
    groups = last_token.drawn_pairs(get_task("squares"), seed=0, limit=60)
    assert list(groups) == ["left", "right", "above", "below"]
    assert all(50 <= len(pairs) <= 60 for pairs in groups.values())  # 60 draws, repeats skipped as theirs
    assert last_token.ANSWERS == ("c0", "c1", "c2", "c3", "c4")


def test_run_per_direction_panels_with_std_and_their_pairs_file(adapter, tmp_path):
    """`--pairs FILE` runs the pairs of last_token_exp/cf_pairs/<task>.json (their JSON form); the result
    has per-direction mean and std (plot.py's shaded bands)."""
    pairs_file = tmp_path / "squares.json"
    pairs_file.write_text(json.dumps({"qwen2-vl-7b": {
        "left": [["Black", "Gray", "Red", "Blue", "Brown"], ["Red", "Green", "Blue", "Black", "Gray"]],
        "above": [["Blue", "Brown", "Black", "Red", "Gray"]],
    }}))
    options = {"n": 50, "filter_correct": False, "layers": "0", "pairs": str(pairs_file)}
    path = run_experiment("last-token", adapter, out_root=tmp_path / "out", options=options, batch_size=2, progress=False)
    result = load_result(path.parent)
    metrics = result["metrics"]
    assert metrics["n_pairs"] == 3 and metrics["layers"] == ["emb", 0]
    assert {d: v["n"] for d, v in metrics["by_direction"].items()} == {"left": 2, "above": 1}
    left = metrics["by_direction"]["left"]
    assert set(left["mean"]) == set(left["std"]) == set(last_token.ANSWERS)
    assert metrics["pairs"]["by_group"]["left"]["kept"] == 2
    rows = (path.parent / "pairs.csv").read_text().splitlines()
    assert any("Black" in row and "Brown" in row for row in rows[1:])  # their tuple, c4 included
    assert result["figures"] == ["iia_curves.png", "iia_curves.svg"]


def test_criss_cross_runs_their_pairs_file_as_given(adapter, tmp_path):
    """criss_cross_patching/run_experiment.py runs cf_pairs/<task>.json as given (3-tuples per direction,
    no correctness re-check); last_token_exp/run_experiment.py re-checks only with --filter. So a
    pairs file is run unfiltered under the paper protocol and filtered under strict; drawn pairs are
    always filtered."""
    from spatialmech.errors import UserInputError
    from spatialmech.experiments import backup, criss_cross

    pairs_file = tmp_path / "squares.json"
    pairs_file.write_text(json.dumps({"qwen2-vl-7b": {
        "left": [["Black", "Gray", "Red"], ["Red", "Green", "Blue"]], "below": [["Blue", "Brown", "Black"]]}}))
    paper = criss_cross.config_from({"pairs": str(pairs_file)}, adapter)
    assert paper["pairs_file"] == str(pairs_file.resolve()) and paper["filter_correct"] is False
    assert criss_cross.config_from({"pairs": str(pairs_file), "protocol": "strict"}, adapter)["filter_correct"] is True
    assert criss_cross.config_from({}, adapter)["filter_correct"] is True
    assert last_token.config_from({"pairs": str(pairs_file)}, adapter)["filter_correct"] is False
    with pytest.raises(UserInputError, match="last-token and criss-cross only"):
        backup.config_from({"pairs": str(pairs_file)}, adapter)
    with pytest.raises(UserInputError, match="is not a file"):
        criss_cross.config_from({"pairs": str(tmp_path / "missing.json")}, adapter)

    path = run_experiment("criss-cross", adapter, out_root=tmp_path / "out",
                          options={"layers": "0", "pairs": str(pairs_file)}, batch_size=2, progress=False)
    metrics = load_result(path.parent)["metrics"]
    assert metrics["n_pairs"] == 3 and metrics["pairs"]["filter_correct"] is False
    assert metrics["pairs"]["by_group"]["left"]["kept"] == 2 and metrics["pairs"]["by_group"]["below"]["kept"] == 1
    with pytest.raises(UserInputError, match="pairs of another experiment"):
        run_experiment("last-token", adapter, out_root=tmp_path / "lt", options={"layers": "0", "pairs": str(pairs_file)},
                       batch_size=2, progress=False)

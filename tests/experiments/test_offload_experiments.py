"""Every experiment on a model that accelerate splits over CPU and disk gives the plain run's metrics.

The done-when of issue 19 for one machine without a GPU: (1) `spatialmech run last-token --n 8
--device-map auto --max-memory cpu=2MiB --offload-folder DIR` (the whole model offloaded to disk)
equals the plain run within float32 tolerance, and (2) a device map that puts half the decoder layers
on the CPU and the other half on disk equals it for every experiment (tiny random Qwen2-VL, small n).
"""

from __future__ import annotations

import math

import pytest

from spatialmech.catalog import EXPERIMENT_MODULES
from spatialmech.cli import main
from spatialmech.experiments.runner import load_result, run_experiment
from spatialmech.models import load_model
from spatialmech.models.placement import make_placement
from spatialmech.models.registry import adapter_class

pytest.importorskip("accelerate")

LAYERS = 4
# A random model answers few pairs right: patch unfiltered pairs (`filter_correct` is a test-only option).
OPTIONS: dict[str, dict] = {
    "behavior": {"n": 4},
    "last-token": {"n": 1, "filter_correct": False},  # per direction
    "probe": {"n": 4},
    "criss-cross": {"n": 2, "filter_correct": False},
    "ablate-vision": {"n": 2, "filter_correct": False},
    "backup": {"n": 2, "filter_correct": False},
    "amplify": {"n": 4, "alphas": [0, 4], "filter_correct": False},
}


def assert_metrics_close(got, want, path: str = "metrics") -> None:
    """Equal structure; numbers equal within float32 tolerance; anything else equal."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for key in want:
            assert_metrics_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want)):
            assert_metrics_close(a, b, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, (int, float)), path
        assert (math.isnan(got) and math.isnan(want)) or math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-5), (path, got, want)
    else:
        assert got == want, (path, got, want)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-qwen2-vl")
    adapter_class("qwen2-vl").tiny(0, num_layers=LAYERS).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def models(checkpoint, tmp_path_factory):
    device_map = {"model.visual": "cpu", "model.language_model.embed_tokens": "cpu", "model.language_model.rotary_emb": "cpu",
                  "model.language_model.norm": "cpu", "lm_head": "disk"}
    for layer in range(LAYERS):
        device_map[f"model.language_model.layers.{layer}"] = "cpu" if layer < LAYERS // 2 else "disk"
    placement = make_placement("auto", device_map, None, str(tmp_path_factory.mktemp("offload")))
    return load_model(checkpoint, device="cpu"), load_model(checkpoint, device=placement)


@pytest.mark.parametrize("experiment", list(EXPERIMENT_MODULES))
def test_every_experiment_on_split_layers_equals_plain(models, experiment, tmp_path):
    plain, split = models
    assert split.decoder_layers()[-1].mlp.up_proj.weight.device.type == "meta"  # really on disk
    results = []
    for adapter, name in ((plain, "plain"), (split, "split")):
        path = run_experiment(experiment, adapter, out_root=tmp_path / name, options=dict(OPTIONS[experiment]),
                              batch_size=4, progress=False)
        results.append(load_result(path.parent))
    assert_metrics_close(results[1]["metrics"], results[0]["metrics"])


def test_cli_last_token_fully_offloaded_to_disk_equals_plain(tmp_path, capsys):
    common = ["run", "last-token", "--n", "2"]  # per direction: 8 pairs
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    offloaded = [*common, "--device-map", "auto", "--max-memory", "cpu=2MiB", "--offload-folder", str(tmp_path / "offload"),
                 "--out", str(tmp_path / "offloaded")]
    assert main(offloaded) == 0
    plain = load_result(tmp_path / "plain" / "last-token")
    result = load_result(tmp_path / "offloaded" / "last-token")
    assert_metrics_close(result["metrics"], plain["metrics"])

"""The engine on a model placed by accelerate: everything offloaded to disk (device_map="auto" with a
2 MiB CPU budget), and a device map that splits the decoder layers between CPU and disk.

Caching, patching, ablation, steering, encode_images, generation and every sweep method must give
the plain CPU model's numbers, and our hooks must fire on modules whose weights live on 'meta' until
accelerate's hooks stream them in. (No GPU here: the cross-device moves are the same code paths.)
"""

from __future__ import annotations

import pytest
import torch

from spatialmech.engine import Ablate, Engine, Patch, Steer, add_direction, image_positions, last_position
from spatialmech.models import load_model
from spatialmech.models.placement import make_placement

pytest.importorskip("accelerate")

from conftest import make_pairs  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-4)


def split_layers_map(num_layers: int) -> dict[str, str]:
    """The bundled Qwen2-VL with its first half of decoder layers on CPU, the rest (and the final norm)
    offloaded to disk."""
    device_map = {
        "model.visual": "cpu",
        "model.language_model.embed_tokens": "cpu",
        "model.language_model.rotary_emb": "cpu",
        "model.language_model.norm": "disk",
        "lm_head": "cpu",
    }
    for layer in range(num_layers):
        device_map[f"model.language_model.layers.{layer}"] = "cpu" if layer < num_layers // 2 else "disk"
    return device_map


@pytest.fixture(scope="module")
def plain():
    return load_model(None, device="cpu")


@pytest.fixture(scope="module", params=["all-offloaded", "split-layers"])
def placed(request, plain, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp(request.param))
    if request.param == "all-offloaded":
        placement = make_placement("auto", "auto", "cpu=2MiB", folder)
    else:
        placement = make_placement("auto", split_layers_map(plain.num_layers), None, folder)
    return load_model(None, device=placement)


@pytest.fixture(scope="module")
def pairs(plain):
    return make_pairs(plain, 3)


def test_weights_really_leave_memory(placed):
    device_map = placed.model.hf_device_map
    assert "disk" in device_map.values()
    assert placed.device == torch.device("cpu")  # inputs go to the CPU, the execution device
    layers = placed.decoder_layers()
    assert layers[-1].mlp.up_proj.weight.device.type == "meta"  # streamed in by accelerate per forward


def test_logits_cache_and_encoder_sites_equal_plain(plain, placed, pairs):
    record = {"lm.resid_pre.0": last_position, "lm.resid_post.5": last_position, "lm.attn.6": last_position,
              "lm.mlp.7": last_position, "vision.out": image_positions, "projector.out": image_positions}
    spec = {site: fn(pairs.target) for site, fn in record.items()}
    ref, out = Engine(plain).run(pairs.target, record=spec), Engine(placed).run(pairs.target, record=spec)
    torch.testing.assert_close(out.logits, ref.logits, **TOL)
    for site in spec:
        for a, b in zip(out.activations[site], ref.activations[site]):
            assert a.device.type == "cpu"
            torch.testing.assert_close(a, b, **TOL)


def test_interventions_equal_plain(plain, placed, pairs):
    target = pairs.target
    last = last_position(target)
    source = Engine(plain).cache(pairs.source, "lm.resid_pre.6", last)
    direction = torch.randn(plain.hidden_size, generator=torch.Generator().manual_seed(0))
    interventions = [
        Ablate("projector.out", image_positions(target), mode="zero"),
        Patch("lm.resid_pre.6", last, source["lm.resid_pre.6"]),  # a layer offloaded in the split map
        Steer("lm.resid_post.1", last, add_direction(direction, 2.0)),
    ]
    for chosen in ([interventions[0]], [interventions[1]], [interventions[2]], interventions):
        ref = Engine(plain).logits(target, chosen)
        torch.testing.assert_close(Engine(placed).logits(target, chosen), ref, **TOL)


def test_encode_images_and_generate_equal_plain(plain, placed, pairs):
    ref = Engine(plain).logits(pairs.target)
    encoded = Engine(placed).encode_images(pairs.target)
    torch.testing.assert_close(Engine(placed).logits(encoded), ref, **TOL)
    spec = {"projector.out": image_positions(pairs.target)}
    recorded = Engine(placed).run(encoded, record=spec).activations["projector.out"]
    for a, b in zip(recorded, Engine(plain).run(pairs.target, record=spec).activations["projector.out"]):
        torch.testing.assert_close(a, b, **TOL)
    assert torch.equal(Engine(placed).generate(pairs.target, max_new_tokens=3), Engine(plain).generate(pairs.target, max_new_tokens=3))


@pytest.mark.parametrize("method", ["naive", "resume", "suffix"])
def test_every_sweep_method_equals_plain(plain, placed, pairs, method):
    """The KV-reuse sweeps call decoder layers one by one outside the model's forward: accelerate's
    per-layer hooks still stream offloaded weights in, so the fast paths stay exact."""
    kwargs = dict(layers=[1, 4, 7], keep_logits=True)  # a CPU layer, the first and the last disk layer
    last = last_position(pairs.target)
    ref = Engine(plain).patch_sweep(pairs.target, pairs.source, last, method="naive", **kwargs)
    out = Engine(placed).patch_sweep(pairs.target, pairs.source, last, method=method, **kwargs)
    assert out.method == method
    torch.testing.assert_close(out.logits, ref.logits, **TOL)
    region = image_positions(pairs.target)
    ref = Engine(plain).patch_sweep(pairs.target, pairs.source, region, method="naive", site="lm.resid_post.{l}", **kwargs)
    out = Engine(placed).patch_sweep(pairs.target, pairs.source, region, site="lm.resid_post.{l}", **kwargs)
    torch.testing.assert_close(out.logits, ref.logits, **TOL)

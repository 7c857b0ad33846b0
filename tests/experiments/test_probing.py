"""The shared linear-probe module: training learns what is linearly there, files round-trip, errors are clear."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from spatialmech.errors import UserInputError
from spatialmech.experiments.probing import (
    PROBE_FORMAT,
    LinearProbe,
    ProbeTraining,
    held_out_count,
    image_key,
    load_probes,
    save_probes,
    split_indices,
    train_probe,
)
from spatialmech.tasks import get_task


def _separable(n_per_class: int, hidden: int = 32, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose class is written linearly (a class-specific offset) under unit Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, hidden, generator=gen) * 2.0
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = means[labels] + torch.randn(labels.numel(), hidden, generator=gen)
    return features, labels


def test_paper_hyperparameters_are_the_defaults():
    assert ProbeTraining() == ProbeTraining(lr=1e-3, weight_decay=1e-4, epochs=200)


def test_probe_learns_a_linearly_encoded_label():
    x, y = _separable(60)
    train, test = split_indices(len(y), 45, seed=3)
    probe = train_probe(x[train], y[train], ["a", "b", "c"], seed=0)
    assert probe.weight.shape == (32, 3) and probe.bias.shape == (3,)
    assert probe.accuracy(x[train], y[train]) == 1.0
    assert probe.accuracy(x[test], y[test]) >= 0.97


def test_probe_on_shuffled_labels_is_at_chance():
    x, y = _separable(100, seed=1)
    train, test = split_indices(len(y), 150, seed=0)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]
    probe = train_probe(x[train], shuffled[train], ["a", "b", "c"])
    assert probe.accuracy(x[test], y[test]) < 0.6


def test_training_is_deterministic_and_leaves_global_rng_alone():
    x, y = _separable(20)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = train_probe(x, y, ["a", "b", "c"], seed=7)
    after = torch.rand(3)
    b = train_probe(x, y, ["a", "b", "c"], seed=7)
    c = train_probe(x, y, ["a", "b", "c"], seed=8)
    assert torch.equal(before, after)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)


def test_json_form_is_exact():
    x, y = _separable(10)
    probe = train_probe(x, y, ["a", "b", "c"], ProbeTraining(epochs=5))
    back = LinearProbe.from_json(json.loads(json.dumps(probe.to_json())))
    assert torch.equal(back.weight, probe.weight) and torch.equal(back.bias, probe.bias) and back.classes == probe.classes


def test_save_load_round_trip_is_plain_safetensors(tmp_path):
    x, y = _separable(10)
    probes = {
        "horizontal": train_probe(x, y, ["left", "middle", "right"], ProbeTraining(epochs=3)),
        "vertical": train_probe(x, y, ["top", "middle", "bottom"], ProbeTraining(epochs=3), seed=1),
    }
    probes["horizontal"].info["test_accuracy"] = 0.5
    path = save_probes(tmp_path / "p.safetensors", probes, {"site": "projector.out", "model": {"sha256": "abc"}})
    # a safetensors file: 8-byte little-endian header length, then a JSON header; no pickle anywhere
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    assert header["__metadata__"]["format"] == PROBE_FORMAT
    tensors = load_file(str(path))
    assert set(tensors) == {"horizontal.weight", "horizontal.bias", "vertical.weight", "vertical.bias"}
    loaded = load_probes(path)
    assert loaded.metadata["site"] == "projector.out" and loaded.metadata["model"] == {"sha256": "abc"}
    for name, probe in probes.items():
        assert torch.equal(loaded.probes[name].weight, probe.weight)
        assert torch.equal(loaded.probes[name].bias, probe.bias)
        assert loaded.probes[name].classes == probe.classes
    assert loaded.probes["horizontal"].info["test_accuracy"] == 0.5


def test_bad_probe_files_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        load_probes(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserInputError, match="unreadable or damaged"):
        load_probes(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(UserInputError, match="not a spatialmech probe file"):
        load_probes(foreign)
    with pytest.raises(UserInputError, match="is a folder"):
        save_probes(tmp_path, {"h": LinearProbe(torch.zeros(2, 2), torch.zeros(2), ["a", "b"])}, {})


def test_probe_shape_errors():
    with pytest.raises(UserInputError):
        LinearProbe(torch.zeros(4, 3), torch.zeros(2), ["a", "b", "c"])
    probe = LinearProbe(torch.zeros(4, 2), torch.zeros(2), ["a", "b"])
    with pytest.raises(UserInputError, match="expects features of size 4"):
        probe.predict(torch.zeros(3, 5))
    with pytest.raises(UserInputError, match="no examples"):
        train_probe(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), ["a", "b"])


def test_splits():
    train, test = split_indices(10, 3, seed=0)
    assert len(test) == 3 and sorted(train + test) == list(range(10))
    assert split_indices(10, 3, seed=0) == (train, test) and split_indices(10, 3, seed=1) != (train, test)
    assert held_out_count(120, 0.25) == 30 and held_out_count(20, 0.05) == 1 and held_out_count(1, 0.5) == 0
    assert held_out_count(2, 0.9) == 1


def test_image_key_groups_questions_about_one_picture():
    task = get_task("squares")
    items = task.items()
    by_key: dict[str, set[str]] = {}
    for item in items:
        by_key.setdefault(image_key(item), set()).add(item.relation)
    assert len(by_key) == 240  # 120 orderings x 2 axes, each asked in 2 directions
    assert all(len(relations) == 2 for relations in by_key.values())

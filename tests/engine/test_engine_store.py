"""Streaming activations to safetensors shards: same values as in memory, resumable, lazy to read."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_pairs

from spatialmech.engine import ActivationStore, ActivationWriter, Engine, image_positions, last_position
from spatialmech.errors import UserInputError

SITES = ["projector.out", "lm.resid_post.0", "lm.resid_post.2"]


def test_store_round_trip_matches_memory(qwen, tmp_path):
    engine = Engine(qwen)
    batches = [make_pairs(qwen, 2, seed=s).target for s in range(3)]
    store = engine.cache_to_disk(iter(batches), SITES, tmp_path / "acts", positions=image_positions, shard_items=3)
    assert store.num_items == 6 and store.sites == SITES
    index = json.loads((tmp_path / "acts" / "index.json").read_text())
    assert [s["items"] for s in index["shards"]] == [4, 2]  # a shard is written once >= 3 items are waiting
    expected = {site: [] for site in SITES}
    positions = []
    for inputs in batches:
        acts = engine.cache(inputs, SITES, image_positions(inputs))
        for site in SITES:
            expected[site].extend(acts[site])
        positions.extend(image_positions(inputs))
    for site in SITES:
        assert all(torch.equal(a, b) for a, b in zip(store.iter(site), expected[site], strict=True))
        assert torch.equal(store.item(site, 5), expected[site][5])
        assert all(torch.equal(a, b) for a, b in zip(store.load(site, [4, 1]), [expected[site][4], expected[site][1]]))
        assert torch.equal(store.positions(site, 3), positions[3])


def test_resume_appends_and_interrupted_run_keeps_written_shards(qwen, tmp_path):
    engine = Engine(qwen)
    batches = [make_pairs(qwen, 2, seed=s).target for s in range(3)]
    folder = tmp_path / "acts"

    def interrupted():
        yield batches[0]
        yield batches[1]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.cache_to_disk(interrupted(), ["lm.resid_pre.1"], folder, positions=last_position, shard_items=2)
    assert ActivationStore(folder).num_items == 4
    store = engine.cache_to_disk(iter(batches[2:]), ["lm.resid_pre.1"], folder, positions=last_position, shard_items=2)
    assert store.num_items == 6
    reference = engine.cache(batches[2], "lm.resid_pre.1", last_position(batches[2]))["lm.resid_pre.1"]
    assert torch.equal(store.item("lm.resid_pre.1", 4), reference[0])
    assert not list(folder.glob(".*.tmp"))  # no half-written files left behind


def test_store_errors(qwen, tmp_path):
    engine = Engine(qwen)
    batch = make_pairs(qwen, 2).target
    folder = tmp_path / "acts"
    engine.cache_to_disk([batch], ["lm.resid_pre.1"], folder, positions=last_position)
    with pytest.raises(UserInputError, match="the store holds"):
        engine.cache_to_disk([batch], ["lm.resid_pre.0"], folder, positions=last_position)
    with pytest.raises(UserInputError, match="not in the store"):
        ActivationStore(folder).item("lm.resid_pre.0", 0)
    with pytest.raises(UserInputError, match="outside the store"):
        ActivationStore(folder).item("lm.resid_pre.1", 2)
    with pytest.raises(UserInputError, match="not an activation store"):
        ActivationStore(tmp_path)
    with pytest.raises(UserInputError, match="shard_items"):
        ActivationWriter(tmp_path / "other", shard_items=0)


def test_streaming_never_holds_two_batches(qwen, tmp_path):
    """The caller's batch is released before the next one is built (memory stays at one batch)."""
    import gc
    import weakref

    engine = Engine(qwen)
    previous: list[weakref.ref] = []

    def batches():
        for seed in range(3):
            gc.collect()
            assert not previous or previous[-1]() is None, "the previous batch is still alive"
            inputs = make_pairs(qwen, 2, seed=seed).target
            previous.append(weakref.ref(inputs))
            yield inputs
            del inputs

    store = engine.cache_to_disk(batches(), ["lm.resid_pre.1"], tmp_path / "acts", positions=last_position)
    assert store.num_items == 6

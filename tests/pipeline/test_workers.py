"""The Ray worker pool on a real local cluster (2 CPU slots, started once for the module).

The factory builds a tiny random Qwen2-VL once per actor; tasks score items on it. Results must equal
the same scoring in this process, arrive exactly once each, survive a worker dying mid-run, and stop
cleanly when the caller is interrupted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from ray import cloudpickle  # noqa: E402  (the copy Ray pickles functions with)

from spatialmech.errors import UserInputError  # noqa: E402
from spatialmech.pipeline.workers import WorkerLost, WorkerPool, ray_cluster  # noqa: E402

# The workers cannot import this test module by name: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PROMPTS = ["Is the red square left of the blue one?", "What is above the circle?", "Name the colour.", "Which is right?"]


def build_tiny(seed: int):
    """The factory: a tiny random Qwen2-VL of the real architecture, built once per actor."""
    from spatialmech.models.registry import adapter_class

    adapter = adapter_class("qwen2-vl").tiny(seed)
    adapter.loaded_in_pid = os.getpid()
    return adapter


def score(adapter, payload: dict) -> dict:
    """A task: the last-position logits of one text prompt, plus which process computed it."""
    marker = payload.get("die_once")
    if marker is not None and not Path(marker).exists():
        Path(marker).write_text("died")
        os._exit(1)  # the actor process dies mid-task, on this task's first attempt only
    inputs = adapter.build_inputs([[]], [payload["prompt"]])
    return {"logits": adapter.forward(inputs)[0], "pid": adapter.loaded_in_pid}


def payloads(n: int) -> list[dict]:
    return [{"prompt": PROMPTS[i % len(PROMPTS)] + " x" * i} for i in range(n)]


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster(workers=2, object_store_memory=80 * 1024 * 1024) as resources:
        yield resources
    assert not ray.is_initialized()  # we started it, so we shut it down


@pytest.fixture(scope="module")
def expected():
    adapter = build_tiny(0)
    return [score(adapter, p)["logits"] for p in payloads(8)]


def test_one_actor_per_cpu_slot_and_results_equal_one_process(cluster, expected):
    assert cluster["CPU"] == 2
    with WorkerPool(build_tiny, 0) as pool:
        assert pool.num_workers == 2 and not pool.uses_gpus
        results = list(pool.map(score, payloads(8), progress=False))
    assert sorted(index for index, _ in results) == list(range(8))
    for index, result in results:
        torch.testing.assert_close(result["logits"], expected[index], atol=1e-5, rtol=1e-4)
    assert len({result["pid"] for _, result in results}) == 2  # both workers took tasks


def test_a_task_whose_worker_dies_is_rerun_once_on_a_replacement(cluster, expected, tmp_path):
    items = payloads(8)
    items[3] = {**items[3], "die_once": str(tmp_path / "died")}
    with WorkerPool(build_tiny, 0) as pool:
        results = list(pool.map(score, items, progress=False))
        assert pool.replaced == 1
    assert (tmp_path / "died").exists()
    assert sorted(index for index, _ in results) == list(range(8))  # every result exactly once
    for index, result in results:
        torch.testing.assert_close(result["logits"], expected[index], atol=1e-5, rtol=1e-4)


def always_die(state, payload):
    os._exit(1)


def test_a_task_that_kills_every_worker_gives_up(cluster):
    with WorkerPool(build_tiny, 0, num_workers=1, max_attempts=2) as pool, pytest.raises(WorkerLost, match="task 0 lost its worker 2 times"):
        list(pool.map(always_die, [{}], progress=False))


def bad_input(state, payload):
    raise UserInputError("bad payload", "fix it")


def test_a_task_error_reaches_the_caller_as_its_own_type(cluster):
    with WorkerPool(build_tiny, 0, num_workers=1) as pool, pytest.raises(UserInputError, match="bad payload"):
        list(pool.map(bad_input, [{}], progress=False))


def slow(state, payload):
    import time

    time.sleep(payload)
    return payload


def test_interrupt_cancels_work_and_frees_every_worker(cluster):
    pool = WorkerPool(build_tiny, 0)
    with pytest.raises(KeyboardInterrupt):
        for _index, _result in pool.map(slow, [0.1, 0.1, 30, 30, 30], progress=False):
            raise KeyboardInterrupt  # Ctrl-C while the caller writes the first result
    assert pool._actors == []
    import time

    deadline = time.time() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2  # the killed actors gave their slots back


def test_bad_cluster_options_are_one_line_errors(monkeypatch):
    with pytest.raises(UserInputError, match="both given"), ray_cluster(workers=2, address="auto"):
        pass
    with pytest.raises(UserInputError, match="--workers 0 must be at least 1"), ray_cluster(workers=0):
        pass
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(UserInputError, match=r"--ray-address needs ray.*pip install -e \.\[distributed\]"), ray_cluster(address="x:1"):
        pass


def prompt_logits(adapter, prompt: str) -> torch.Tensor:
    return adapter.forward(adapter.build_inputs([[]], [prompt]))[0]


def test_model_spec_factory_loads_the_model_in_each_worker(cluster):
    """The factory the runner uses: `load_adapter(ModelSpec)`, device 'auto' resolved in the worker."""
    from spatialmech.models import load_model
    from spatialmech.models.placement import make_placement
    from spatialmech.pipeline.workers import ModelSpec, load_adapter

    spec = ModelSpec("bundled", placement=make_placement("auto"))
    local = load_adapter(spec)
    assert local.device == load_model(None, device="cpu").device
    with WorkerPool(load_adapter, spec) as pool:
        results = dict(pool.map(prompt_logits, PROMPTS, progress=False))
    for index, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(results[index], prompt_logits(local, prompt), atol=1e-5, rtol=1e-4)
    with pytest.raises(UserInputError, match="gpus_per_worker 0 must be at least 1"):
        WorkerPool(load_adapter, spec, gpus_per_worker=0)

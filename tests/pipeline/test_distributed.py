"""`reproduce` and `run` with their units on a real local 2-worker Ray cluster (one per module).

The model is a tiny random Qwen2-VL saved to a folder (workers load it from there, as from a hub id);
the plan is the whole `reproduce --quick` plan at the report tests' tiny sizes: every step, so every
kind of work runs on the workers (one-stage behavior, last-token's kept pairs then the batches that
depend on them, probe's feature stores written by a worker then fitted, the patching sweeps, the vision
ablation, amplify's four stages). Metrics must equal the one-process run's exactly, also when a worker
dies mid-run, and `--resume` must dispatch only the units that are not saved.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from ray import cloudpickle  # noqa: E402

from spatialmech.cli import main  # noqa: E402
from spatialmech.errors import UserInputError  # noqa: E402
from spatialmech.io import read_json  # noqa: E402
from spatialmech.models.placement import make_placement  # noqa: E402
from spatialmech.pipeline.distributed import Cluster, UnitPayload, work_on_worker  # noqa: E402
from spatialmech.pipeline.reproduce import reproduce  # noqa: E402
from spatialmech.pipeline.steps import build_plan  # noqa: E402
from spatialmech.pipeline.workers import ModelSpec, WorkerPool, load_adapter, ray_cluster  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
from report_helpers import TINY_OPTIONS, TINY_SIZES, reproduce_args  # noqa: E402

STEPS = [step.folder for step in build_plan(quick=True)]


def _args(model: Path, out: Path, **extra):
    args = reproduce_args(model, out, resume=extra.pop("resume", False))
    args.only = None
    for key, value in extra.items():
        setattr(args, key, value)
    return args


def _run(args, cluster: Cluster | None = None) -> Path:
    reproduce(args, sizes=TINY_SIZES, extra_options=TINY_OPTIONS, progress=False, log=lambda _: None, cluster=cluster)
    return Path(args.out)


def _metrics(run: Path) -> dict[str, dict]:
    return {path.parent.name: read_json(path)["metrics"] for path in sorted(run.glob("*/result.json"))}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spatialmech.models.qwen2_vl import Adapter

    folder = tmp_path_factory.mktemp("tiny-qwen2-vl")
    Adapter.tiny(seed=0).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def one_process(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-process run, on one torch thread as each Ray worker is: the same reduction order, so the
    results can be compared byte for byte (at another thread count they agree to float32 rounding)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = _run(_args(tiny_dir, tmp_path_factory.mktemp("one") / "run"))
    finally:
        torch.set_num_threads(threads)
    assert sorted(_metrics(run)) == sorted(STEPS)
    return run


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster(workers=2, object_store_memory=80 * 1024 * 1024) as resources:
        yield resources


@pytest.fixture(scope="module")
def pool(cluster, tiny_dir: Path):
    """Two model workers shared by the tests below (each loads the model once for all of them)."""
    with WorkerPool(load_adapter, ModelSpec(str(tiny_dir), placement=make_placement("cpu"))) as workers:
        _shared_pool.append(workers)
        yield workers


_shared_pool: list[WorkerPool] = []


def die_once(adapter, payload: UnitPayload):
    """The worker's task, except that the first last-token unit to arrive kills its worker process on its
    first attempt (a marker file in the run folder remembers the attempt and the process)."""
    folder = Path(payload.out_dir)
    marker = folder.parent / "died"
    if folder.name == "last-token" and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return work_on_worker(adapter, payload)


def test_two_workers_give_the_one_process_metrics_even_when_one_dies(pool: WorkerPool, one_process: Path, tiny_dir: Path,
                                                                      tmp_path: Path) -> None:
    replaced = pool.replaced
    run = _run(_args(tiny_dir, tmp_path / "run"), Cluster(pool, progress=False, work=die_once))
    assert pool.num_workers == 2 and pool.replaced == replaced + 1
    assert int((run / "died").read_text()) != os.getpid()  # a worker died, not this process
    assert _metrics(run) == _metrics(one_process)
    assert all(step["status"] == "done" for step in read_json(run / "reproduce.json")["steps"])
    units = sorted((one_process / "last-token" / "units").glob("*.json"))
    assert len(units) > 1
    for unit in units:  # every unit file the same, byte for byte
        assert (run / "last-token" / "units" / unit.name).read_bytes() == unit.read_bytes(), unit.name


def record_keys(adapter, payload: UnitPayload):
    """The worker's task, noting which units were dispatched (one file per unit, beside the run)."""
    (Path(payload.out_dir).parent / f"dispatched-{Path(payload.out_dir).name}-{payload.key}").touch()
    return work_on_worker(adapter, payload)


def test_resume_dispatches_only_the_units_not_saved(pool: WorkerPool, one_process: Path, tiny_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(one_process, run)
    (run / "last-token" / "result.json").unlink()
    units = sorted((run / "last-token" / "units").glob("batch-*.json"))
    assert units
    units[0].unlink()
    _run(_args(tiny_dir, run, resume=True), Cluster(pool, progress=False, work=record_keys))
    assert sorted(p.name for p in run.glob("dispatched-*")) == [f"dispatched-last-token-{units[0].stem}"]
    assert _metrics(run) == _metrics(one_process)
    steps = {step["folder"]: step["status"] for step in read_json(run / "reproduce.json")["steps"]}
    assert steps == {**dict.fromkeys(STEPS, "reused"), "last-token": "done"}


def test_run_command_with_workers_equals_the_one_process_run(cluster, tiny_dir: Path, tmp_path: Path) -> None:
    """The CLI's path: `--workers 2` (Ray is already up in this module: `ray_cluster` reuses it and
    starts its own two workers, so the shared pool gives its CPU slots back first)."""
    for shared in _shared_pool:
        shared.close()
    common = ["run", "behavior", "--model", str(tiny_dir), "--device", "cpu", "--n", "4", "--batch-size", "2"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    one, two = (read_json(tmp_path / name / "behavior" / "result.json")["metrics"] for name in ("one", "two"))
    assert one == two


def test_cluster_flags_without_ray_or_with_a_bad_step_are_one_line_errors(tiny_dir: Path, tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    with pytest.raises(UserInputError, match="--only 'nope' names no step"):
        _run(_args(tiny_dir, tmp_path / "run", only="nope"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    code = main(["reproduce", "--quick", "--model", str(tiny_dir), "--out", str(tmp_path / "r"), "--workers", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--workers needs ray" in err and "pip install -e .[distributed]" in err

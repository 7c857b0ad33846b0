"""Interrupting `spatialmech run`: SIGKILL at random points, then `--resume`, must end bit for bit where
an uninterrupted run ends; SIGINT stops cleanly (exit 130), keeping finished units and writing no result.

The runs are real processes: children forked from this test process (which has already imported
torch and transformers, so each start costs milliseconds instead of seconds) that call the CLI's
`main` exactly as the console script does, and are killed with real signals.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from spatialmech.cli import main
from spatialmech.models.registry import bundled_model_path

# experiment -> arguments of a small run with several units on a tiny random model
RUNS: dict[str, list[str]] = {
    "behavior": ["--task", "squares", "--n", "192"],  # 3 units of 64 items
    "probe": ["--task", "squares", "--n", "48", "--layers", "0-1"],  # 2 feature units (stores) + 4 probe fits
    "ablate-vision": ["--n", "8"],  # 3 tasks, one unit each
    # strict: this untrained model gets none of 4 items right in both orders, so the paper protocol (probes on the
    # evaluation set's correct items) has nothing to fit; probe features and fits, then baseline and sweep units (34 in all)
    "amplify": ["--n", "4", "--protocol", "strict"],
}


def _detach_from_parent() -> None:
    """What a forked child must drop so that killing it cannot hang anyone else.

    tqdm's default write lock holds a multiprocessing RLock as a *class* attribute: a semaphore in
    memory shared with the parent across fork. A child SIGKILLed while drawing a progress bar would
    leave it held forever, and the parent's next bar (and every later child's) would block on it.
    """
    import threading

    import torch
    import tqdm

    torch.set_num_threads(1)  # as DataLoader workers do after fork
    tqdm.tqdm.set_lock(threading.RLock())  # a lock of this process alone
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _child(argv: list[str], log: str) -> None:
    """Body of the forked child: the CLI, its output to `log`, its exit code as the process's."""
    _detach_from_parent()
    with open(log, "w", buffering=1) as stream:
        sys.stdout = sys.stderr = stream
        code = main(argv)
        stream.flush()
    os._exit(code)


def start(argv: list[str], log: Path) -> multiprocessing.Process:
    process = multiprocessing.get_context("fork").Process(target=_child, args=([str(a) for a in argv], str(log)), daemon=True)
    process.start()
    return process


def run_args(experiment: str, model: Path, out: Path, *extra: str) -> list[str]:
    return ["run", experiment, "--model", str(model), "--out", str(out), *RUNS[experiment], *extra]


def units(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("units/**/*") if p.is_file() and not p.name.endswith(".tmp"))


def science(folder: Path) -> dict:
    """result.json without provenance (times), plus the exact bytes of every CSV table."""
    result = json.loads((folder / "result.json").read_text())
    result.pop("provenance")
    tables = {name: (folder / file).read_bytes() for name, file in result["tables"].items()}
    return {"result": result, "tables": tables}


def wait_for_units(process: multiprocessing.Process, out: Path, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(units(out)) < count and process.is_alive():
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def references(tiny_model, tmp_path_factory) -> dict[str, dict]:
    """Uninterrupted runs (in this process) to compare interrupted ones with."""
    out = {}
    for experiment in RUNS:
        folder = tmp_path_factory.mktemp(f"reference-{experiment}")
        assert main(run_args(experiment, tiny_model, folder)) == 0
        out[experiment] = {"science": science(folder / experiment), "units": len(units(folder))}
    return out


def check_interrupted_folder(folder: Path) -> None:
    """What a killed run leaves: never a result.json, only complete units (temporary files aside)."""
    assert not (folder / "result.json").exists()
    for unit in units(folder):
        if unit.suffix == ".json":
            json.loads(unit.read_text())


def kill_at_random_points_then_resume(args: list[str], experiment: str, reference: dict, total_units: int, tmp_path: Path) -> None:
    """Start `args`, SIGKILL it at a random point, resume and kill again (three times), then resume to
    the end: the result must equal `reference`."""
    rng = random.Random(f"kill-{experiment}")
    out = Path(args[args.index("--out") + 1])
    kills = 0
    for attempt in range(3):
        resume = ["--resume"] if attempt else []
        process = start([*args, *resume], tmp_path / f"log-{attempt}.txt")
        wait_for_units(process, out, rng.randrange(len(units(out)), total_units))  # a random point between units...
        time.sleep(rng.uniform(0.0, 0.05))  # ... and a random moment inside the next one
        process.kill()
        process.join(30)
        if process.exitcode == 0:  # finished before the signal landed: nothing left to interrupt
            break
        assert process.exitcode == -signal.SIGKILL
        kills += 1
        check_interrupted_folder(out / experiment)
    assert kills >= 1
    # what a kill inside an atomic write leaves (the signal rarely lands there by chance): a partial temp file
    for folder in (out / experiment, out / experiment / "units"):
        folder.mkdir(parents=True, exist_ok=True)  # a kill can land before the units folder exists
        (folder / ".result.json.k1ll3d.tmp").write_text('{"experiment": ')
    process = start([*args, "--resume"], tmp_path / "log-final.txt")
    process.join(300)
    assert process.exitcode == 0, (tmp_path / "log-final.txt").read_text()
    assert science(out / experiment) == reference
    assert not list(out.rglob("*.tmp")), "a resumed run clears the temporary files of the killed ones"


@pytest.mark.parametrize("experiment", sorted(RUNS))
def test_sigkill_at_random_points_then_resume(experiment, tiny_model, references, tmp_path):
    args = run_args(experiment, tiny_model, tmp_path / "out")
    kill_at_random_points_then_resume(args, experiment, references[experiment]["science"], references[experiment]["units"], tmp_path)


# Patching experiments keep only pairs the model answers right, so they need a trained model: the bundled one.
BUNDLED_RUNS: dict[str, list[str]] = {
    "last-token": ["--n", "1", "--layers", "0-1", "--batch-size", "1"],  # pairs unit + 4 batch units (1 pair per direction)
    "criss-cross": ["--n", "4", "--layers", "0-1", "--batch-size", "1"],
}


@pytest.mark.skipif(not (bundled_model_path() / "config.json").is_file(), reason="the bundled model is not installed")
@pytest.mark.parametrize("experiment", sorted(BUNDLED_RUNS))
def test_sigkill_then_resume_patching_experiment_on_bundled_model(experiment, tmp_path):
    reference_out = tmp_path / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the forked runs: float sums depend on the thread count
    try:
        assert main(["run", experiment, "--out", str(reference_out), *BUNDLED_RUNS[experiment]]) == 0
    finally:
        torch.set_num_threads(threads)
    reference = science(reference_out / experiment)
    args = ["run", experiment, "--out", str(tmp_path / "out"), *BUNDLED_RUNS[experiment]]
    kill_at_random_points_then_resume(args, experiment, reference, len(units(reference_out)), tmp_path)


def _die_holding_the_progress_lock() -> None:
    import tqdm

    _detach_from_parent()
    tqdm.tqdm.get_lock().acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_child_killed_while_drawing_a_bar_does_not_block_the_parent():
    """The hang this file once caused in CI: the kill landed while a child held tqdm's shared lock."""
    import tqdm

    tqdm.tqdm.get_lock()  # the parent's lock exists before the fork, as after any earlier bar
    process = multiprocessing.get_context("fork").Process(target=_die_holding_the_progress_lock, daemon=True)
    process.start()
    process.join(30)
    assert process.exitcode == -signal.SIGKILL
    lock = tqdm.tqdm.get_lock()
    assert all(part.acquire(timeout=5) for part in lock.locks), "the killed child left the parent's bar lock held"
    lock.release()


def test_sigint_saves_finished_units_and_writes_no_result(tiny_model, references, tmp_path):
    out = tmp_path / "out"
    log = tmp_path / "log.txt"
    process = start(run_args("behavior", tiny_model, out), log)
    wait_for_units(process, out, 1)
    assert process.is_alive(), "the run finished before it could be interrupted"
    os.kill(process.pid, signal.SIGINT)
    process.join(60)
    assert process.exitcode == 130, log.read_text()
    messages = [line for line in log.read_text().splitlines() if line.startswith("spatialmech ")]
    assert messages == ["spatialmech run: interrupted; finished work is saved, rerun with --resume"]
    saved = units(out)
    assert saved and not list(out.rglob("*.tmp"))
    check_interrupted_folder(out / "behavior")
    before = {p: p.read_bytes() for p in saved}
    assert main(run_args("behavior", tiny_model, out, "--resume")) == 0
    assert all(p.read_bytes() == data for p, data in before.items()), "finished units are reused, not redone"
    assert science(out / "behavior") == references["behavior"]["science"]

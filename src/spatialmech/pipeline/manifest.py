"""reproduce.json and resuming: each step's status and timing, saved atomically after every change,
and whether a step's folder already holds this run's result (reuse), part of it (continue) or not."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spatialmech.errors import UserInputError
from spatialmech.io import read_json, write_json
from spatialmech.report.html import MANIFEST_FILE, REPORT_FILE, build_report


@dataclass
class StepRecord:
    """What happened to a step, as saved in reproduce.json."""

    folder: str
    experiment: str
    task: str
    options: dict[str, Any]
    what: str
    status: str = "pending"  # pending | running | done | reused | failed
    estimated_seconds: float | None = None
    seconds: float | None = None
    cpu_seconds: float | None = None  # process CPU time (all threads): comparable across busy machines
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


def run_identity_of(step: StepRecord, config: Mapping[str, Any], fingerprint: Mapping[str, Any], seed: int,
                    data_root: str | None) -> dict[str, Any]:
    """What a step's result and run_config.json must match to be this run's: weights (the model's
    fingerprint), task, config, seed, data (the fields `ExperimentContext.prepare` writes to run_config.json)."""
    from spatialmech.experiments.runner import data_hashes, run_identity

    return run_identity(step.experiment, fingerprint, step.task, config, seed, data_hashes(step.task, data_root))


def _read_or_none(path: Path) -> Any:
    try:
        return read_json(path, "result file") if path.is_file() else None
    except UserInputError:
        return None


def resume_state(out_root: Path, step: StepRecord, identity: Mapping[str, Any]) -> str:
    """'finished' (its result.json is this run's: reuse it), 'partial' (units of this run: continue them)
    or 'fresh' (nothing of this run there: start it from scratch)."""
    from spatialmech.experiments.runner import RESULT_FILE, saved_identity

    folder = out_root / step.folder
    result = _read_or_none(folder / RESULT_FILE)
    if result is not None:
        seen = {"experiment": result.get("experiment"), "model": result.get("model_fingerprint"), "task": result.get("task"),
                "config": result.get("config"), "seed": (result.get("provenance") or {}).get("seed"), "inputs": result.get("inputs")}
        if seen == dict(identity):
            return "finished"
    if saved_identity(folder) == dict(identity):
        return "partial"
    return "fresh"


# ------------------------------------------------------------------------------------------ manifest
class Manifest:
    """reproduce.json: the plan, each step's status and timing; saved atomically after every change."""

    def __init__(self, out_root: Path, header: dict[str, Any], records: list[StepRecord]):
        self.path = out_root / MANIFEST_FILE
        self.header = header
        self.records = records

    def save(self) -> None:
        write_json(self.path, {**self.header, "steps": [asdict(r) for r in self.records]})

    @property
    def failed(self) -> list[StepRecord]:
        return [r for r in self.records if r.status == "failed"]


def check_resumable(out_root: Path, header: Mapping[str, Any]) -> None:
    """--resume must continue the same kind of run: same mode, model, seed and data."""
    path = out_root / MANIFEST_FILE
    if not path.is_file():
        return
    previous = read_json(path, "reproduce manifest")
    for key, flag in (("quick", "--quick"), ("protocol", "--protocol"), ("model", "--model"), ("seed", "--seed"), ("data", "--data")):
        if previous.get(key) != header.get(key):
            raise UserInputError(
                f"--resume: {out_root} holds a run with {key}={previous.get(key)!r}, not {header.get(key)!r}",
                f"pass the same {flag} as the interrupted run, or a new --out folder",
            )


def refresh_report(out_root: Path) -> None:
    """Rewrite report.html from what is on disk now (so a crash leaves an accurate, incomplete report);
    if it cannot be built yet (e.g. a resumed folder still holds another model's result), remove it."""
    try:
        build_report(out_root)
    except UserInputError:
        (out_root / REPORT_FILE).unlink(missing_ok=True)

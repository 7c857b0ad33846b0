"""Loading a run folder for the report: its planned steps (reproduce.json) and their result files.

Steps of a reproduce run that failed or never ran are kept as entries without a result, so the report
marks them instead of looking complete; results from different models or data are refused, never mixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spatialmech.catalog import EXPERIMENTS
from spatialmech.errors import UserInputError
from spatialmech.io import read_json

MANIFEST_FILE = "reproduce.json"
EXPERIMENT_ORDER = EXPERIMENTS  # the paper's order, from the one experiment registry
FINISHED = ("done", "reused")


@dataclass
class Entry:
    """One planned step (or one result folder when there is no reproduce.json) and its result."""

    folder: str
    experiment: str
    task: str | None
    status: str
    result: dict[str, Any] | None
    what: str = ""
    error: str | None = None
    seconds: float | None = None
    estimated_seconds: float | None = None

    @property
    def finished(self) -> bool:
        return self.result is not None


@dataclass
class Run:
    root: Path
    entries: list[Entry]
    manifest: dict[str, Any] | None
    others: list[str] = field(default_factory=list)  # result folders that are not part of the reproduce plan

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        return {e.folder: e.result for e in self.entries if e.result is not None}


def collect_results(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """result.json of every finished experiment under run_dir (keyed by folder name)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserInputError(f"run folder {root} does not exist", "pass the --out folder of a reproduce or run command")
    return {path.parent.name: read_json(path, "result file") for path in sorted(root.glob("*/result.json"))}


def load_run(run_dir: str | Path) -> Run:
    """The run's steps in order, each with its result (None when it failed or did not finish)."""
    root = Path(run_dir)
    results = collect_results(root)
    manifest_path = root / MANIFEST_FILE
    if manifest_path.is_file():
        manifest = read_json(manifest_path, "reproduce manifest")
        entries = []
        for step in manifest.get("steps", []):
            status, result = str(step.get("status")), results.get(step["folder"])
            if status == "failed":
                result = None  # shown as failed even if an older result.json survived
            elif result is not None:
                status = status if status in FINISHED else "done"  # result.json is written last: the step finished
            else:
                status = {"running": "interrupted", "interrupted": "interrupted", "pending": "not run"}.get(status, "result.json missing")
            entries.append(Entry(step["folder"], step["experiment"], step.get("task"), status, result, step.get("what", ""),
                                 step.get("error"), step.get("seconds"), step.get("estimated_seconds")))
        planned = {e.folder for e in entries}
        return Run(root, entries, manifest, sorted(f for f in results if f not in planned))
    if not results:
        raise UserInputError(f"{root} holds no finished experiment results", "run `spatialmech reproduce` or `spatialmech run` first")
    entries = [Entry(name, str(r.get("experiment", name)), r.get("task"), "done", r) for name, r in results.items()]
    entries.sort(key=lambda e: (_order(e.experiment), e.folder))
    return Run(root, entries, None)


def _order(experiment: str) -> int:
    return EXPERIMENT_ORDER.index(experiment) if experiment in EXPERIMENT_ORDER else len(EXPERIMENT_ORDER)


def check_consistent(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Refuse to mix results from different models or different data; return the shared identity."""
    if not results:
        return {"model": None, "fingerprint": None}
    models = {name: json.dumps(r.get("model_fingerprint", {}).get("sha256")) for name, r in results.items()}
    if len(set(models.values())) > 1:
        groups: dict[str, list[str]] = {}
        for name, key in models.items():
            groups.setdefault(key, []).append(name)
        raise UserInputError(
            f"results come from different models ({'; '.join(', '.join(v) for v in groups.values())})",
            "report each model's run folder separately",
        )
    data: dict[str, tuple[str, str]] = {}
    for name, result in results.items():
        files = (result.get("inputs") or {}).get("files")
        if files:
            for file, digest in files.items():
                if data.setdefault(file, (digest, name))[0] != digest:
                    raise UserInputError(
                        f"results {data[file][1]} and {name} used different versions of {file}",
                        "rerun them on the same data, or report them separately",
                    )
    first = next(iter(results.values()))
    return {"model": first.get("model"), "fingerprint": first.get("model_fingerprint")}



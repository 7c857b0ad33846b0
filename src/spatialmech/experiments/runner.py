"""What every experiment shares: its output folder, resumable units, and the result contract.

An experiment is a function `run(ctx: ExperimentContext) -> ExperimentOutput`. It does its work in
*units* (a batch of pairs, one layer sweep, one probe fit...) saved with `ctx.unit(key, compute)`:
each finished unit is written atomically under `OUT/<experiment>/units/`, so a killed run resumed
with `--resume` skips finished units and ends with the same result as an uninterrupted run.
`result.json` is written last (atomically) and removed at the start of a run, so a folder with a
`result.json` always holds a complete result (SPEC section 6).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spatialmech.errors import UserInputError
from spatialmech.io import ensure_writable_dir, read_json, to_jsonable, write_csv, write_json
from spatialmech.provenance import provenance, utc_now

RESULT_FILE = "result.json"
UNITS_DIR = "units"
_UNIT_KEY = re.compile(r"^[A-Za-z0-9_.=-]+$")


def model_fingerprint(adapter: Any) -> dict[str, Any]:
    """Identify the model a result came from (id, family, weights hash); computed once per adapter."""
    return adapter.fingerprint()


@dataclass
class ExperimentOutput:
    """What an experiment returns: headline metrics, tables (-> CSV), figure files, extra JSON data."""

    metrics: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentContext:
    """Everything an experiment needs besides the science: model, task, config, output, resume."""

    experiment: str
    adapter: Any  # VLMAdapter (Any keeps this module import-light)
    task_name: str
    out_root: Path
    config: dict[str, Any]
    seed: int = 0
    resume: bool = False
    batch_size: int = 8
    data_root: str | None = None
    progress: bool = True
    started_at: str = field(default_factory=utc_now)
    input_hashes: dict[str, Any] = field(default_factory=dict)
    folder: str | None = None  # output folder name under out_root (default: the experiment name)

    @property
    def out_dir(self) -> Path:
        return self.out_root / (self.folder or self.experiment)

    @property
    def units_dir(self) -> Path:
        return self.out_dir / UNITS_DIR

    def prepare(self) -> None:
        """Make the output folder; without --resume start clean; never leave an old result looking current."""
        ensure_writable_dir(self.out_dir)
        (self.out_dir / RESULT_FILE).unlink(missing_ok=True)
        for stale in self.out_dir.rglob(".*.tmp"):  # temporary files of writes a killed run never finished
            stale.unlink(missing_ok=True)
        manifest_path = self.out_dir / "run_config.json"
        manifest = {"experiment": self.experiment, "model": model_fingerprint(self.adapter), "task": self.task_name,
                    "config": to_jsonable(self.config), "seed": self.seed, "inputs": to_jsonable(self.input_hashes)}
        if self.resume and manifest_path.is_file():
            previous = read_json(manifest_path, "run manifest", fix="rerun without --resume to start this experiment afresh")
            current = json.loads(json.dumps(manifest))
            if previous != current:
                names = {"inputs": "data"}
                changed = [names.get(key, key) for key in current if not isinstance(previous, dict) or previous.get(key) != current[key]]
                raise UserInputError(
                    f"--resume: {self.out_dir} was started with a different {' and '.join(changed) or 'run manifest'}",
                    "rerun without --resume, or use the same arguments (and model and data) as the interrupted run",
                )
        elif self.units_dir.exists():
            shutil.rmtree(self.units_dir)
        write_json(manifest_path, manifest)

    def unit(self, key: str, compute: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        """Return the saved unit `key`, or compute, save (atomically) and return it."""
        if not _UNIT_KEY.match(key):
            raise ValueError(f"unit key {key!r} must be letters, digits, '_', '.', '=', '-'")
        path = self.units_dir / f"{key}.json"
        if path.is_file():
            return read_json(path, "saved unit", fix="delete it to recompute that unit, or rerun without --resume")
        value = to_jsonable(dict(compute()))
        write_json(path, value)
        return json.loads(json.dumps(value))

    def figure_path(self, stem: str) -> Path:
        return self.out_dir / stem

    def finish(self, output: ExperimentOutput, model_label: str | None = None) -> Path:
        """Write tables (CSV), then result.json last: the run is complete only once this returns."""
        tables = {}
        for name, rows in output.tables.items():
            path = write_csv(self.out_dir / f"{name}.csv", rows)
            tables[name] = path.name
        result = {
            "experiment": self.experiment,
            "model": model_label or str(self.adapter.model_id),
            "model_fingerprint": model_fingerprint(self.adapter),
            "task": self.task_name,
            "config": self.config,
            "metrics": output.metrics,
            "tables": tables,
            "figures": [Path(f).name for f in output.figures],
            "data": output.data,
            "inputs": self.input_hashes,
            "provenance": provenance(self.seed, self.started_at, device=str(self.adapter.device)),
        }
        return write_json(self.out_dir / RESULT_FILE, result)


def load_result(folder: str | Path) -> dict[str, Any]:
    """Read a finished experiment's result.json, refusing folders without one."""
    path = Path(folder) / RESULT_FILE
    if not path.is_file():
        raise UserInputError(f"{folder} holds no finished result ({RESULT_FILE} missing)", "run the experiment (or --resume it) first")
    return read_json(path, "result file")


def parse_layers(spec: str | None, num_layers: int) -> list[int]:
    """'0-11', '0,4,8', '3' or None (all) -> sorted layer list, with clear errors."""
    if spec is None or spec in ("", "all"):
        return list(range(num_layers))
    layers: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                layers.update(range(lo, hi + 1))
            else:
                layers.add(int(part))
    except ValueError as exc:
        raise UserInputError(f"--layers {spec!r} is not a layer list", "use e.g. '0-11' or '0,4,8'") from exc
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise UserInputError(f"--layers {spec!r} names layers {bad} that do not exist", f"this model has layers 0..{num_layers - 1}")
    return sorted(layers)


def chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]

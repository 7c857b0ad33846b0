"""What every experiment shares: its output folder, resumable units, and the result contract.

An experiment is a plan of *units* (`experiments.plan`: `plan`, `compute_unit`, `combine`) run on an
`ExperimentContext` into an `ExperimentOutput`. Each unit (a batch of pairs, one layer sweep, one
probe fit...) is saved with `ctx.unit(key, compute)`: written atomically under `OUT/<experiment>/units/`,
so a killed run resumed with `--resume` skips finished units and ends with the same result as an
uninterrupted run.
`result.json` is written last (atomically) and removed at the start of a run, so a folder with a
`result.json` always holds a complete result (SPEC section 6).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spatialmech.catalog import EXPERIMENT_MODULES
from spatialmech.errors import UserInputError
from spatialmech.io import ensure_writable_dir, read_json, to_jsonable, write_csv, write_json
from spatialmech.provenance import provenance, utc_now

RESULT_FILE = "result.json"
CUSTOM_TASK = "custom"  # the user's own data (--task custom --data FILE): any experiment whose needs its items carry
UNITS_DIR = "units"
MANIFEST_FILE = "run_config.json"
EXECUTION_KEY = "execution"  # manifest entry for workers; not part of the run's identity
_UNIT_KEY = re.compile(r"^[A-Za-z0-9_.=-]+$")
# paper: the authors' code on every point of SPEC section 7; strict: our stricter variants where they
# differ (today only amplify's). Every result.json records which one it ran under (config.protocol).
PROTOCOLS = ("paper", "strict")
DEFAULT_PROTOCOL = "paper"


def protocol_of(options: Mapping[str, Any]) -> str:
    """The protocol an experiment's options ask for (default paper), refused in one line when unknown."""
    protocol = options.get("protocol") or DEFAULT_PROTOCOL
    if protocol not in PROTOCOLS:
        raise UserInputError(f"--protocol {protocol!r} is not a protocol", f"use one of {', '.join(PROTOCOLS)}")
    return str(protocol)


def resolve_config(module: Any, options: Mapping[str, Any], adapter: Any) -> dict[str, Any]:
    """An experiment's full config from its options: its own `config_from`, plus the protocol."""
    config = module.config_from(dict(options), adapter)
    config.setdefault("protocol", protocol_of(options))
    return config


def model_fingerprint(adapter: Any) -> dict[str, Any]:
    """Identify the model a result came from (id, family, weights hash); computed once per adapter."""
    return adapter.fingerprint()


def run_identity(experiment: str, fingerprint: Mapping[str, Any], task: str, config: Mapping[str, Any], seed: int,
                 input_hashes: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two runs of an experiment the same run (the one run manifest, `run_config.json`):
    weights (the model's fingerprint), task, config, seed and data. `--resume` and `reproduce` compare it."""
    return json.loads(json.dumps(to_jsonable({
        "experiment": experiment, "model": dict(fingerprint), "task": task, "config": dict(config), "seed": seed,
        "inputs": dict(input_hashes),
    })))


def saved_identity(out_dir: Path) -> dict[str, Any] | None:
    """The run identity a folder's `run_config.json` records, or None when there is none (or it is unreadable)."""
    path = out_dir / MANIFEST_FILE
    try:
        manifest = read_json(path, "run manifest") if path.is_file() else None
    except UserInputError:
        return None
    if not isinstance(manifest, dict):
        return None
    manifest.pop(EXECUTION_KEY, None)
    return manifest


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
    _shared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

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
        manifest_path = self.out_dir / MANIFEST_FILE
        manifest = run_identity(self.experiment, model_fingerprint(self.adapter), self.task_name, self.config, self.seed,
                                self.input_hashes)
        if self.resume and manifest_path.is_file():
            previous = read_json(manifest_path, "run manifest", fix="rerun without --resume to start this experiment afresh")
            if isinstance(previous, dict):
                previous.pop(EXECUTION_KEY, None)
            current = manifest
            if previous != current:
                names = {"inputs": "data"}
                changed = [names.get(key, key) for key in current if not isinstance(previous, dict) or previous.get(key) != current[key]]
                raise UserInputError(
                    f"--resume: {self.out_dir} was started with a different {' and '.join(changed) or 'run manifest'}",
                    "rerun without --resume, or use the same arguments (and model and data) as the interrupted run",
                )
        elif self.units_dir.exists():
            shutil.rmtree(self.units_dir)
        # what a worker in another process needs besides the manifest's identity (`from_manifest`)
        manifest[EXECUTION_KEY] = {"batch_size": self.batch_size, "data_root": self.data_root, "folder": self.folder,
                                   "started_at": self.started_at}
        write_json(manifest_path, manifest)

    @classmethod
    def from_manifest(cls, out_dir: Path, adapter: Any, progress: bool = False) -> ExperimentContext:
        """The context of a prepared run folder, from its `run_config.json` alone (for remote workers)."""
        manifest = read_json(out_dir / MANIFEST_FILE, "run manifest", fix="prepare the run (run_experiment) first")
        execution = manifest.get(EXECUTION_KEY, {})
        return cls(
            experiment=manifest["experiment"], adapter=adapter, task_name=manifest["task"], out_root=out_dir.parent,
            config=manifest["config"], seed=int(manifest["seed"]), resume=True,
            batch_size=int(execution.get("batch_size", 8)), data_root=execution.get("data_root"), progress=progress,
            started_at=execution.get("started_at") or utc_now(), input_hashes=manifest.get("inputs", {}),
            folder=execution.get("folder") or out_dir.name,
        )

    def shared(self, name: str, factory: Callable[[], Any]) -> Any:
        """A per-process object (task, engine, ablation) built once and reused by every unit run here."""
        if name not in self._shared:
            self._shared[name] = factory()
        return self._shared[name]

    def load_unit(self, key: str) -> dict[str, Any]:
        """A saved unit's result (for a later stage's keys or the combine step)."""
        return read_json(self.units_dir / f"{key}.json", "saved unit", fix="run the experiment (or --resume it) first")

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


def experiment_module(name: str):
    if name not in EXPERIMENT_MODULES:
        raise UserInputError(f"unknown experiment {name!r}", f"use one of {', '.join(EXPERIMENT_MODULES)}")
    return importlib.import_module(f"spatialmech.experiments.{EXPERIMENT_MODULES[name]}")


def data_hashes(task_name: str, data_root: str | None) -> dict[str, Any]:
    """Hash the real data files a task reads, so reports refuse to mix results from different data."""
    from spatialmech.provenance import file_sha256

    if data_root is None:
        return {"data_root": None}
    from spatialmech.tasks.whatsup import SEARCH_FOLDERS

    root = Path(data_root)
    if root.is_file():  # custom data (--task custom --data FILE): the items file itself
        return {"data_root": str(root.resolve()), "files": {root.name: file_sha256(root)}}
    hashes: dict[str, str] = {}
    # The loaders look in the root and in data/ (the What'sUp repository layout); key by the name they
    # look for, so results from either layout compare. The first folder wins, as in the loaders.
    for folder in SEARCH_FOLDERS:
        base = root / folder
        for path in sorted(base.glob("*.json")) + sorted(base.glob("annotations/*.json")):
            name = str(path.relative_to(base))
            if path.is_file() and name not in hashes:
                hashes[name] = file_sha256(path)
    return {"data_root": str(root.resolve()), "files": hashes}


def run_experiment(
    name: str,
    adapter: Any,
    *,
    out_root: str | Path,
    task: str | None = None,
    options: dict[str, Any] | None = None,
    seed: int = 0,
    resume: bool = False,
    batch_size: int = 8,
    data_root: str | None = None,
    model_label: str | None = None,
    progress: bool = True,
    folder: str | None = None,
    executor: Any = None,
) -> Path:
    """Run one experiment on an already-loaded adapter; return the path of its result.json.

    `folder` names the output folder under `out_root` (default: the module's `default_folder(config)`
    where it has one, else the experiment's name), so one run can hold the same experiment twice
    (e.g. `criss-cross` and `criss-cross-strip`). `executor` runs the experiment's units
    (`experiments.plan`; default: in this process, in order).
    """
    module = experiment_module(name)
    task_name = task or module.DEFAULT_TASK
    if task_name not in module.TASKS and task_name != CUSTOM_TASK:
        raise UserInputError(f"experiment {name} does not run on task {task_name!r}", f"use one of {', '.join(module.TASKS)}")
    config = resolve_config(module, options or {}, adapter)
    ctx = ExperimentContext(
        experiment=name,
        adapter=adapter,
        task_name=task_name,
        out_root=Path(out_root),
        config=config,
        seed=seed,
        resume=resume,
        batch_size=batch_size,
        data_root=data_root,
        progress=progress,
        input_hashes=data_hashes(task_name, data_root),
        folder=folder or getattr(module, "default_folder", lambda config: None)(config),
    )
    ctx.prepare()
    from spatialmech.experiments.plan import execute

    output = execute(ctx, module, executor)
    return ctx.finish(output, model_label=model_label)


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

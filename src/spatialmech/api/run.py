"""The experiment side of the public API: tasks (your own data included), what a data set can
run (from the catalog's `EXPERIMENT_NEEDS`), and `run` -> `Result`. `_run_experiment` is the one
adapter onto the experiments layer (the runner)."""

from __future__ import annotations

import csv
import io as _bytes_io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spatialmech import io
from spatialmech.api.model import Model, _adapter, load_model
from spatialmech.catalog import EXPERIMENT_NEEDS
from spatialmech.errors import UserInputError
from spatialmech.models.base import VLMAdapter
from spatialmech.tasks import TASKS, Task, get_task
from spatialmech.tasks.custom import CustomTask


# ------------------------------------------------------------------------------------------ tasks
def load_task(name_or_path: str | Path, model: Model | VLMAdapter | None = None, *, data: str | None = None) -> Task:
    """A task by name (drawn on `model`'s token grid when given; `data` for whatsup / coco-spatial), or
    your own data: a .jsonl (render's items.jsonl) or .csv file, or a folder holding items.jsonl."""
    geometry = _adapter(model).grid_spec() if model is not None else None
    if str(name_or_path) in TASKS and str(name_or_path) != CustomTask.name:
        if model is not None:  # the model's grid and tokenizer, as every experiment loads it
            from spatialmech.experiments.common import get_task_for

            return get_task_for(_adapter(model), str(name_or_path), data)
        return get_task(str(name_or_path), data_root=data)
    if str(name_or_path) == CustomTask.name:
        if data is None:
            raise UserInputError("task custom needs its data file", "pass data='FILE.jsonl' or load_task('FILE.jsonl')")
        name_or_path = data
    if not Path(name_or_path).exists():
        raise UserInputError(f"{name_or_path!r} is neither a task nor a data file", f"use one of {', '.join(TASKS)} or a .jsonl/.csv path")
    task = CustomTask(name_or_path, geometry=geometry)
    task.check_data()
    return task


def supported_experiments(task: Task) -> dict[str, str | None]:
    """Experiment -> None if it can run on this (custom) task's items, else why not."""
    items = task.items(None) if isinstance(task, CustomTask) else None
    out: dict[str, str | None] = {}
    for name, (kinds, objects, what) in EXPERIMENT_NEEDS.items():
        if items is None:
            out[name] = None
            continue
        missing = [k for k in kinds if k not in task.counterfactual_kinds]
        few = any(len(i.objects) < objects for i in items)
        if name == "backup" and not missing:  # the counterfactual run is ablated too: it needs its own sources
            missing = [k for i in items for cf in task.counterfactuals(i, "reversed") for k in ("alone", "blank")
                       if k not in task.kinds_of(cf.item)]
        if name == "probe":
            few = few or not any(i.grid and all(o.box_cells and o.ordinal for o in i.objects) for i in items)
        out[name] = f"needs {what}" if missing or few else None
    return out


def require_support(experiment: str, task: Task) -> None:
    """Refuse, in one line, an experiment the (custom) task's items cannot feed."""
    why = supported_experiments(task).get(experiment)
    if why is not None:
        raise UserInputError(f"experiment {experiment} cannot run on {getattr(task, 'file', task.name)}: it {why}", describe_support(task))


def describe_support(task: Task) -> str:
    """One line: which experiments the data runs and which it cannot, and why."""
    support = supported_experiments(task)
    runs = [name for name, why in support.items() if why is None]
    cannot = [f"{name} ({why})" for name, why in support.items() if why is not None]
    return f"custom data {getattr(task, 'file', '')}: runs {', '.join(runs)}" + (f"; cannot run {'; '.join(cannot)}" if cannot else "")


# ------------------------------------------------------------------------------------------ run
@dataclass
class Result:
    """One experiment's result as plain data: `.metrics`, `.tables` (name -> list of row dicts),
    `.config`, `.data`; `.figure()` shows its figure, `.save(dir)` writes the result folder."""

    experiment: str
    task: str
    metrics: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]]
    config: dict[str, Any]
    data: dict[str, Any]
    raw: dict[str, Any]
    figure_files: dict[str, bytes] = field(default_factory=dict)
    folder: Path | None = None  # where the run wrote it (None for a run without `out`)

    def figure(self, name: str | None = None):
        """The experiment's figure (the first PNG, or the one named) as a matplotlib Figure."""
        import matplotlib.image as mpimg
        import matplotlib.pyplot as plt

        pngs = [f for f in self.figure_files if f.endswith(".png")]
        if not pngs:
            raise UserInputError(f"experiment {self.experiment} draws no figure", "read result.metrics and result.tables instead")
        chosen = name if name is not None else pngs[0]
        if chosen not in self.figure_files:
            raise UserInputError(f"no figure {chosen!r}", f"use one of {', '.join(pngs)}")
        picture = mpimg.imread(_bytes_io.BytesIO(self.figure_files[chosen]), format="png")
        fig, ax = plt.subplots(figsize=(picture.shape[1] / 100, picture.shape[0] / 100), dpi=100)
        ax.imshow(picture)
        ax.axis("off")
        fig.subplots_adjust(0, 0, 1, 1)
        return fig

    def save(self, folder: str | Path) -> Path:
        """Write result.json, the tables as CSV and the figures into `folder`; return result.json's path."""
        out = io.ensure_writable_dir(folder)
        for name, rows in self.tables.items():
            io.write_csv(out / f"{name}.csv", rows)
        for name, content in self.figure_files.items():
            io.atomic_write_bytes(out / name, content)
        return io.write_json(out / "result.json", self.raw)  # last: the folder is complete once it exists


def _typed(value: str) -> Any:
    """A CSV cell back to int / float / bool / None where it reads as one."""
    if value in ("", "None"):
        return None
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def _read_result(folder: Path) -> Result:
    from spatialmech.experiments.runner import load_result

    raw = load_result(folder)
    tables = {}
    for name, file in raw.get("tables", {}).items():
        with open(folder / file, newline="", encoding="utf-8") as handle:
            tables[name] = [{k: _typed(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    figures = {}
    for name in raw.get("figures", []):
        for path in sorted(folder.glob(f"{Path(name).stem}.*")):
            if path.suffix in (".png", ".svg"):
                figures[path.name] = path.read_bytes()
    return Result(raw["experiment"], raw["task"], raw["metrics"], tables, raw.get("config", {}), raw.get("data", {}),
                  raw, figures, folder)


def _run_experiment(experiment: str, adapter: VLMAdapter, out_root: Path, task: str, data: str | None, *,
                    options: dict[str, Any], seed: int, batch_size: int, resume: bool, model_label: str,
                    progress: bool, executor: Any = None) -> Path:
    """The one adapter onto the experiments layer: run it, return the folder holding result.json."""
    from spatialmech.experiments.runner import run_experiment

    path = run_experiment(experiment, adapter, out_root=out_root, task=task, options=options, seed=seed, resume=resume,
                          batch_size=batch_size, data_root=data, model_label=model_label, progress=progress,
                          executor=executor)
    return path.parent


def _task_and_data(task: str | Path | Task | None, data: str | None) -> tuple[str | None, str | None]:
    if task is None or isinstance(task, str) and task in TASKS:
        return task, data  # type: ignore[return-value]
    if isinstance(task, CustomTask):
        return CustomTask.name, str(task.file)
    if isinstance(task, Task):
        return task.name, str(task.root) if hasattr(task, "root") else data
    return CustomTask.name, str(task)  # a path to the user's own data


def run(
    experiment: str,
    model: Model | VLMAdapter | str,
    task: str | Path | Task | None = None,
    n: int | None = None,
    out: str | Path | None = None,
    *,
    data: str | None = None,
    seed: int = 0,
    batch_size: int = 8,
    resume: bool = False,
    progress: bool = False,
    executor: Any = None,
    **options: Any,
) -> Result:
    """Run one of the paper's experiments and return its `Result`.

    `task` is a task name, a `Task` from `load_task`, or a path to your own data (.jsonl / .csv);
    default: the experiment's own. `n`: items or pairs (default: the paper's). `out`: keep the result
    folder there (`out/<experiment>/`); without it the run happens in a temporary folder. Other
    options are the CLI's (`layers="0-3"`, `region="strip"`, `variant="add"`, `save_probe=FILE`...).
    `executor`: where the units run (`experiments.plan`; e.g. a `pipeline.distributed.Cluster` of Ray
    workers; default: this process)."""
    if isinstance(model, str):
        model = load_model(model)
    adapter = _adapter(model)
    label = model.name if isinstance(model, Model) else str(adapter.model_id)
    task_name, data = _task_and_data(task, data)
    if n is not None and n < 1:
        raise UserInputError(f"n={n} must be at least 1", "pass a positive number of items")
    if task_name == CustomTask.name:
        custom = load_task(CustomTask.name, adapter, data=data)
        require_support(experiment, custom)
        data = str(custom.file)  # a folder given for its items.jsonl: results record (and hash) the file
    settings = {"n": n, **options}
    kwargs = dict(options=settings, seed=seed, batch_size=batch_size, resume=resume, model_label=label, progress=progress,
                  executor=executor)
    if out is not None:
        return _read_result(_run_experiment(experiment, adapter, Path(out), task_name, data, **kwargs))
    with tempfile.TemporaryDirectory(prefix="spatialmech-") as tmp:
        result = _read_result(_run_experiment(experiment, adapter, Path(tmp), task_name, data, **kwargs))
    result.folder = None
    return result

"""The public Python API: `import spatialmech as sm`.

It sits at the top, beside the CLI (which is a thin layer over it), and speaks words, pictures and
plain data instead of token ids, nested image lists and experiment contexts:

    model = sm.load_model("bundled")
    inputs = model.inputs(image, "The color of the square to the left of the green square is")
    engine = sm.Engine(model)
    engine.answer_probabilities(inputs, ["Red", "Blue"])      # spelling variants summed for you
    inputs.image_tokens[0].box(28, 140, 84, 196)              # LM positions of a pixel box
    result = sm.run("last-token", model, task="squares", n=8)
    result.metrics, result.tables["curves"], result.figure(), result.save("out/")
"""

from __future__ import annotations

import csv
import io as _bytes_io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spatialmech import io
from spatialmech.engine import Ablate, Patch, Steer, add_direction, amplify_projection
from spatialmech.engine import Engine as _CoreEngine
from spatialmech.errors import UserInputError
from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT, BatchInputs, GridSpec, ImageTokens, VLMAdapter
from spatialmech.tasks import TASKS, Task, get_task
from spatialmech.tasks.custom import CustomTask
from spatialmech.tasks.vocabulary import answer_variants

ImageLike = Any  # a PIL image or a path to one
# Words tracked for every row, or per row a list of words / token-id sets (the core engine's form).
Answers = Sequence[str] | Sequence[Sequence[str]] | Sequence[Sequence[Sequence[int]]]


# ------------------------------------------------------------------------------------------ model
class Model:
    """A loaded VLM behind its family adapter (`.adapter`), with inputs built from plain pictures and text."""

    def __init__(self, adapter: VLMAdapter, name: str):
        self.adapter = adapter
        self.name = name

    def __repr__(self) -> str:
        return f"Model({self.name!r}, family={self.family!r}, layers={self.num_layers}, device={self.device})"

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    @property
    def hidden_size(self) -> int:
        return self.adapter.hidden_size

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def grid(self) -> GridSpec:
        """The token grid of the model's square input: draw on it to put objects on whole tokens."""
        return self.adapter.grid_spec()

    def sites(self) -> list[str]:
        """Every hookable site name (`projector.out`, `lm.resid_pre.3`, ...)."""
        return self.adapter.sites()

    def inputs(self, images: ImageLike | Sequence[ImageLike], prompts: str | Sequence[str], system: str | None = None) -> Inputs:
        """Model inputs: one image (PIL or path) or a list, one prompt or a list (one row per prompt;
        a single image is shared by every prompt). `system=None` uses the model's default system prompt."""
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        pictures = [_open(images)] * len(texts) if not isinstance(images, (list, tuple)) else [_open(i) for i in images]
        if len(pictures) != len(texts):
            raise UserInputError(f"{len(pictures)} images for {len(texts)} prompts", "pass one image, or one image per prompt")
        batch = self.adapter.build_inputs([[p] for p in pictures], texts, system=system)
        return Inputs(batch.model_kwargs, batch.images, batch.prompts, batch.row_order, [p.size for p in pictures])

    def answer_ids(self, word: str) -> list[int]:
        """Token ids of a word's single-token spelling variants (" Red", "Red", " red", "red")."""
        return self.adapter.answer_token_ids(answer_variants(word))


def _open(image: ImageLike):
    if isinstance(image, (str, Path)):
        return io.open_image(image, "image")
    if not hasattr(image, "convert"):
        raise UserInputError(f"{type(image).__name__} is not an image", "pass a PIL image or a path to a PNG/JPEG")
    return image.convert("RGB")


def load_model(
    model: str = "bundled",
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> Model:
    """Load a checkpoint ("bundled", a folder, or a hub id) behind its family adapter.

    `dtype` is "float32" / "bfloat16" / "float16" or a torch dtype (default: the checkpoint's);
    `device_map` spreads a large model over devices where this install supports it."""
    import inspect

    from spatialmech.models import load_model as load_adapter

    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise UserInputError(f"dtype {dtype!r} is not supported", "use float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "device": device, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        if "device_map" not in inspect.signature(load_adapter).parameters:
            raise UserInputError("device_map is not supported by this install's model loader", "pass device= instead")
        kwargs["device_map"] = device_map
    return Model(load_adapter(model, **kwargs), name=str(model))


def _adapter(model: Model | VLMAdapter) -> VLMAdapter:
    return model.adapter if isinstance(model, Model) else model


# ------------------------------------------------------------------------------------------ image tokens
@dataclass
class ImageTokenMap:
    """Where one image's tokens sit in the LM sequence: positions of a box, a grid cell, a strip.

    Every method returns a 1-D LongTensor of LM positions (for `Patch`, `Ablate`, `engine.cache`).
    Boxes are in pixels of the original image (x1/y1 exclusive), or fractions with `fraction=True`;
    a token belongs to a box when its centre lies inside. Tiled models answer on their global view."""

    tokens: ImageTokens
    image_size: tuple[int, int]

    @property
    def positions(self) -> torch.Tensor:
        """Every LM position of the image's tokens (all tiles)."""
        return self.tokens.positions

    @property
    def grid(self) -> torch.Tensor:
        """(rows, cols) table of LM positions on the main grid (-1 where a cell has no token)."""
        return self.tokens.cell_positions()

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.grid_shapes[self.tokens.main_tile])  # type: ignore[return-value]

    def box(self, x0: float, y0: float, x1: float, y1: float, *, fraction: bool = False) -> torch.Tensor:
        """Positions of the tokens whose centre is inside the box."""
        if not fraction:
            width, height = self.image_size
            x0, y0, x1, y1 = x0 / width, y0 / height, x1 / width, y1 / height
        return self.tokens.positions_in_box((x0, y0, x1, y1))

    def cell(self, row: int, col: int) -> torch.Tensor:
        """The position of the token at grid cell (row, col) of the main grid, as a 1-element tensor."""
        rows, cols = self.shape
        if not (0 <= row < rows and 0 <= col < cols):
            raise UserInputError(f"cell ({row}, {col}) is outside the {rows}x{cols} token grid", "use 0-based row and column indices")
        value = self.grid[row, col]
        return value.reshape(1) if int(value) >= 0 else value.new_empty(0)

    def strip(self, axis: str, start: int, stop: int | None = None) -> torch.Tensor:
        """Whole rows (axis "horizontal": a band across the image) or columns ("vertical") of the grid,
        `start` to `stop` (exclusive; default one row or column)."""
        stop = start + 1 if stop is None else stop
        table = self.grid
        if axis == "horizontal":
            band = table[start:stop, :]
        elif axis == "vertical":
            band = table[:, start:stop]
        else:
            raise UserInputError(f"axis {axis!r} is not horizontal or vertical", "use 'horizontal' (rows) or 'vertical' (columns)")
        band = band.T.reshape(-1) if axis == "vertical" else band.reshape(-1)
        return band[band >= 0].sort().values


@dataclass
class Inputs(BatchInputs):
    """Model inputs (a `BatchInputs`, accepted wherever the engine takes one) plus the image-token map."""

    image_sizes: list[tuple[int, int]] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Inputs:
        moved = super().to(device)
        return Inputs(moved.model_kwargs, moved.images, moved.prompts, moved.row_order, self.image_sizes)

    @property
    def image_tokens(self) -> list[ImageTokenMap]:
        """Per batch row, the token map of its image: `inputs.image_tokens[row].box(...)`."""
        return [ImageTokenMap(row[0], size) for row, size in zip(self.images, self.image_sizes)]

    @property
    def last(self) -> list[torch.Tensor]:
        """The next-token position of every row (where the answer is read)."""
        from spatialmech.engine import last_position

        return last_position(self)


# ------------------------------------------------------------------------------------------ engine
class Engine(_CoreEngine):
    """The intervention engine (see `spatialmech.engine`) taking answer *words*: their spelling
    variants are found and summed for you. Token-id sets are still accepted."""

    def __init__(self, model: Model | VLMAdapter):
        super().__init__(_adapter(model))

    def token_sets(self, answers: Answers, batch_size: int) -> list[list[list[int]]]:
        """Per row, per tracked answer, the token ids: words tracked for every row (["Red", "Blue"]),
        per-row words ([["Red"], ["Blue"]]), or token-id sets as the core engine takes them."""
        if isinstance(answers, str):
            answers = [answers]
        answers = list(answers)
        if all(isinstance(a, str) for a in answers):
            shared = [self.adapter.answer_token_ids(answer_variants(a)) for a in answers]  # type: ignore[arg-type]
            return [shared for _ in range(batch_size)]
        if len(answers) != batch_size:
            raise UserInputError(f"{len(answers)} answer lists for a batch of {batch_size}", "pass one list per row, or words shared by every row")
        out = []
        for row in answers:
            row = [row] if isinstance(row, str) else list(row)  # type: ignore[list-item]
            out.append([list(a) if not isinstance(a, str) else self.adapter.answer_token_ids(answer_variants(a)) for a in row])
        return out

    def answer_probabilities(self, inputs: BatchInputs, answers: Answers, interventions: Sequence[Any] = ()) -> torch.Tensor:
        """(batch, n_answers): P of each answer word, summed over its spelling variants."""
        return super().answer_probabilities(inputs, self.token_sets(answers, inputs.batch_size), interventions)

    def predict(self, inputs: BatchInputs, interventions: Sequence[Any] = ()) -> list[str]:
        """The model's next token per row, as text (with its leading space, if any)."""
        top = self.logits(inputs, interventions).argmax(-1).tolist()
        return [self.adapter.tokenizer.decode([t]) for t in top]

    def patch_sweep(self, target: BatchInputs, source: BatchInputs, target_positions: Any, source_positions: Any = None,
                    *, answers: Answers | None = None, **kwargs: Any):
        """`spatialmech.engine.Engine.patch_sweep`, with `answers` as words."""
        sets = None if answers is None else self.token_sets(answers, target.batch_size)
        return super().patch_sweep(target, source, target_positions, source_positions, answers=sets, **kwargs)


# ------------------------------------------------------------------------------------------ tasks
def load_task(name_or_path: str | Path, model: Model | VLMAdapter | None = None, *, data: str | None = None) -> Task:
    """A task by name (drawn on `model`'s token grid when given; `data` for whatsup / coco-spatial), or
    your own data: a .jsonl (render's items.jsonl) or .csv file, or a folder holding items.jsonl."""
    geometry = _adapter(model).grid_spec() if model is not None else None
    if str(name_or_path) in TASKS and str(name_or_path) != CustomTask.name:
        return get_task(str(name_or_path), geometry=geometry, data_root=data)
    if str(name_or_path) == CustomTask.name:
        if data is None:
            raise UserInputError("task custom needs its data file", "pass data='FILE.jsonl' or load_task('FILE.jsonl')")
        name_or_path = data
    if not Path(name_or_path).exists():
        raise UserInputError(f"{name_or_path!r} is neither a task nor a data file", f"use one of {', '.join(TASKS)} or a .jsonl/.csv path")
    task = CustomTask(name_or_path, geometry=geometry)
    task.check_data()
    return task


# What each experiment needs from custom items, checked before it runs: (counterfactual kinds, objects
# needed, why). Probe also needs three objects with ordinals and grid cells along an axis.
EXPERIMENT_NEEDS: dict[str, tuple[tuple[str, ...], int, str]] = {
    "behavior": ((), 0, ""),
    "last-token": (("opposite_query",), 2, "'opposite_query' counterfactuals and objects"),
    "criss-cross": (("reversed",), 2, "'reversed' counterfactuals and object boxes"),
    "ablate-vision": (("alone", "blank"), 1, "'alone' and 'blank' counterfactuals and object boxes"),
    "backup": (("alone", "blank", "reversed"), 2,
               "'alone', 'blank' and 'reversed' counterfactuals (the reversed ones with their own 'alone' and 'blank') and object boxes"),
    "probe": ((), 3, "three objects per image with ordinal positions and grid cells, as render writes for grid tasks"),
    "amplify": ((), 2, "a subject and a reference object box per item"),
}


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
                    progress: bool) -> Path:
    """The one adapter onto the experiments layer: run it, return the folder holding result.json."""
    from spatialmech.experiments.commands import run_experiment

    path = run_experiment(experiment, adapter, out_root=out_root, task=task, options=options, seed=seed, resume=resume,
                          batch_size=batch_size, data_root=data, model_label=model_label, progress=progress)
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
    **options: Any,
) -> Result:
    """Run one of the paper's experiments and return its `Result`.

    `task` is a task name, a `Task` from `load_task`, or a path to your own data (.jsonl / .csv);
    default: the experiment's own. `n`: items or pairs (default: the paper's). `out`: keep the result
    folder there (`out/<experiment>/`); without it the run happens in a temporary folder. Other
    options are the CLI's (`layers="0-3"`, `region="strip"`, `variant="add"`, `save_probe=FILE`...)."""
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
    kwargs = dict(options=settings, seed=seed, batch_size=batch_size, resume=resume, model_label=label, progress=progress)
    if out is not None:
        return _read_result(_run_experiment(experiment, adapter, Path(out), task_name, data, **kwargs))
    with tempfile.TemporaryDirectory(prefix="spatialmech-") as tmp:
        result = _read_result(_run_experiment(experiment, adapter, Path(tmp), task_name, data, **kwargs))
    result.folder = None
    return result


__all__ = [
    "SYNTHETIC_SYSTEM_PROMPT",
    "Ablate",
    "Engine",
    "ImageTokenMap",
    "Inputs",
    "Model",
    "Patch",
    "Result",
    "Steer",
    "add_direction",
    "amplify_projection",
    "describe_support",
    "load_model",
    "load_task",
    "require_support",
    "run",
    "supported_experiments",
]

"""`custom`: the user's own images and questions, from a JSONL or CSV file.

The JSONL form is exactly what `spatialmech render` writes (`items.jsonl`: one `Item` dict per line plus
`image_file`, a path relative to the file, and `counterfactuals`, kind -> item dicts with their own
`image_file`), so rendered stimuli round-trip. Hand-written rows need only `image_file` (or `image`),
`prompt` and `answer`; `options`, `objects` (each `name` plus `box_px` in pixels, x1/y1 exclusive),
`axis`, `relation`, `target`, `reference`, `answer_variants`, `prompt_swapped` (the question with
the options in the other order: then the row is scored strictly, right in both orders) and `id` are
optional.

The CSV form (columns `image`, `prompt`, `answer`, optional `options`, `boxes`, `axis`, `relation`,
`prompt_swapped`) is
for quick use: options are separated by `|` (`left|right`), boxes are `name:x0,y0,x1,y1` (or spaces between
the numbers; quote the cell when it holds commas) separated by `|`; the first box is the object the question asks about, the second its reference.

Every row is checked when the task is opened (before a model loads): a bad row is a one-line error
naming the file, the row and the field.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from spatialmech import io
from spatialmech.errors import UserInputError
from spatialmech.tasks.base import AXIS_OF, Counterfactual, Item, SceneObject, Task
from spatialmech.tasks.vocabulary import answer_variants

JSONL_SUFFIXES = (".jsonl", ".json")
CSV_SUFFIXES = (".csv",)
DEFAULT_FILE = "items.jsonl"  # what `spatialmech render` writes; a folder holding it is accepted too


class RowError(UserInputError):
    """A bad row: names the file, the row (1-based, header excluded) and the field."""

    def __init__(self, file: Path, row: int, field: str, problem: str, fix: str):
        super().__init__(f"{file} row {row}, field {field!r}: {problem}", fix)


def resolve_data_file(path: str | Path) -> Path:
    """The data file for a path: the file itself, or `items.jsonl` inside a folder."""
    file = Path(path)
    if file.is_dir():
        file = file / DEFAULT_FILE
    if not file.is_file():
        raise UserInputError(f"custom data file {file} does not exist", "pass --data FILE.jsonl or FILE.csv (e.g. the items.jsonl of `spatialmech render`)")
    if file.suffix.lower() not in JSONL_SUFFIXES + CSV_SUFFIXES:
        raise UserInputError(f"custom data file {file} is neither .jsonl nor .csv", "save it as items.jsonl (render's format) or as a .csv")
    return file


def _csv_rows(file: Path) -> list[dict[str, Any]]:
    with open(file, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("image", "prompt", "answer") if c not in (reader.fieldnames or [])]
        if missing:
            raise UserInputError(f"{file} has no column {missing[0]!r}", "the header needs image, prompt, answer (options, boxes, axis, relation optional)")
        rows = []
        for number, raw in enumerate(reader, start=1):
            row: dict[str, Any] = {k: (v or "").strip() for k, v in raw.items() if k}
            if row.get("options"):
                row["options"] = [o.strip() for o in row["options"].split("|") if o.strip()]
            else:
                row.pop("options", None)
            if row.get("boxes"):
                row["objects"] = [_csv_box(file, number, spec) for spec in row["boxes"].split("|") if spec.strip()]
            row.pop("boxes", None)
            rows.append({k: v for k, v in row.items() if v not in ("", None)})
    return rows


def _csv_box(file: Path, number: int, spec: str) -> dict[str, Any]:
    name, _, coords = spec.rpartition(":")
    try:
        box = [int(round(float(v))) for v in coords.replace(",", " ").split()]
    except ValueError:
        box = []
    if not name.strip() or len(box) != 4:
        raise RowError(file, number, "boxes", f"{spec.strip()!r} is not name:x0,y0,x1,y1", "write each box as e.g. cup:10,20,60,80, boxes separated by |")
    return {"name": name.strip(), "box_px": box}


def _jsonl_rows(file: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RowError(file, number, "(line)", f"is not JSON ({exc.msg})", "write one JSON object per line") from exc
        if not isinstance(row, dict):
            raise RowError(file, number, "(line)", "is not a JSON object", "write one JSON object per line")
        rows.append(row)
    return rows


class CustomTask(Task):
    """Items read from a user's JSONL/CSV file; images are loaded from paths relative to that file."""

    name = "custom"
    description = "your own images and questions (--data FILE.jsonl|FILE.csv; render's items.jsonl round-trips)"

    def __init__(self, data_file: str | Path, geometry: Any = None):
        self.file = resolve_data_file(data_file)
        self.root = self.file.parent
        self.geometry = geometry
        self._items: list[Item] | None = None
        self._counterfactuals: dict[str, dict[str, list[Counterfactual]]] = {}
        self.synthetic = False
        self.counterfactual_kinds: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.all_items())

    def check_data(self) -> None:
        """Read and check every row (and that every image exists), so a bad row fails before a model loads."""
        self.all_items()

    def all_items(self) -> list[Item]:
        if self._items is None:
            self._load()
        assert self._items is not None
        return self._items

    def items(self, n: int | None = None, seed: int = 0) -> list[Item]:
        from spatialmech.tasks.synthetic import subset

        return subset(self.all_items(), n, seed)

    def image(self, item: Item):
        return io.open_image(io.resolve_under(self.root, item.image_path or "", "image_file"), "custom image")

    def counterfactuals(self, item: Item, kind: str) -> list[Counterfactual]:
        found = self._counterfactuals.get(item.id, {}).get(kind)
        if found is None:
            raise UserInputError(f"item {item.id} of {self.file} has no {kind!r} counterfactuals",
                                 "add them under the row's \"counterfactuals\" (as `spatialmech render` writes them)")
        return found

    def kinds_of(self, item: Item) -> tuple[str, ...]:
        """The counterfactual kinds this item (a row or one of its counterfactuals) carries."""
        self.all_items()
        return tuple(sorted(self._counterfactuals.get(item.id, {})))

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        rows = _csv_rows(self.file) if self.file.suffix.lower() in CSV_SUFFIXES else _jsonl_rows(self.file)
        if not rows:
            raise UserInputError(f"{self.file} holds no rows", "add one question per line (or CSV row)")
        items, synthetic, kinds = [], [], None
        for number, row in enumerate(rows, start=1):
            item = self._item(row, number, f"item-{number:05d}")
            if item.id in self._counterfactuals:
                raise RowError(self.file, number, "id", f"{item.id!r} repeats an earlier row's id", "give every row its own id")
            cfs = self._register(row, item, number)
            kinds = set(cfs) if kinds is None else kinds & set(cfs)
            synthetic.append(bool(row.get("synthetic", _drawn_task(row.get("task")))))
            items.append(item)
        self.synthetic = all(synthetic)
        self.counterfactual_kinds = tuple(sorted(kinds or ()))
        self._items = items

    def _register(self, row: dict[str, Any], item: Item, number: int, prefix: str = "") -> dict[str, Any]:
        """Read a row's counterfactuals (and theirs, e.g. the `alone` objects of a `reversed` image,
        which `backup` ablates) into the lookup `counterfactuals` answers from."""
        cfs = row.get("counterfactuals") or {}
        if not isinstance(cfs, dict):
            raise RowError(self.file, number, prefix + "counterfactuals", "is not an object of kind -> rows", "write it as render does")
        found: dict[str, list[Counterfactual]] = {}
        for kind, entries in cfs.items():
            found[kind] = []
            for i, cf in enumerate(entries if isinstance(entries, list) else []):
                field = f"{prefix}counterfactuals.{kind}[{i}]."
                cf_item = self._item(cf, number, f"{item.id}#{kind}{i}", field)
                self._register(cf, cf_item, number, field)
                found[kind].append(Counterfactual(kind, cf_item, cf.get("source_object")))
        self._counterfactuals[item.id] = found
        return cfs

    def _item(self, row: dict[str, Any], number: int, default_id: str, prefix: str = "") -> Item:
        """One checked `Item` from a row (render's full item dict or the short hand-written form)."""

        def fail(field: str, problem: str, fix: str) -> RowError:
            return RowError(self.file, number, prefix + field, problem, fix)

        image_file = row.get("image_file", row.get("image"))
        if not isinstance(image_file, str) or not image_file.strip():
            raise fail("image_file", "is missing", "give the image's path relative to the data file")
        try:
            path = io.resolve_under(self.root, image_file, "image_file")
        except UserInputError as exc:
            raise fail("image_file", str(exc), "use a path inside the data file's folder") from exc
        if not path.is_file():
            raise fail("image_file", f"{image_file} does not exist in {self.root}", "check the path (relative to the data file)")
        size = _image_size(path)
        if size is None:
            raise fail("image_file", f"{image_file} is not a readable image", "replace it with a PNG or JPEG")
        prompt, answer = row.get("prompt"), row.get("answer")
        if not isinstance(prompt, str) or not prompt.strip():
            raise fail("prompt", "has no text", "write the question to ask about the image")
        if not isinstance(answer, str) or not answer.strip():
            raise fail("answer", "is missing", "give the expected answer word")
        options = row.get("options")
        if options is not None:
            if not isinstance(options, list) or not all(isinstance(o, str) for o in options) or len(options) < 2:
                raise fail("options", f"{options!r} is not a list of at least two words", "write e.g. [\"left\", \"right\"] (CSV: left|right)")
            if answer.strip().lower() not in {o.strip().lower() for o in options}:
                raise fail("answer", f"{answer!r} is not among the options {options}", "make the answer one of the options")
        objects = [self._object(o, i, size, fail) for i, o in enumerate(row.get("objects") or [])]
        relation = row.get("relation") or (answer.strip().lower() if answer.strip().lower() in AXIS_OF else None)
        axis = row.get("axis") or AXIS_OF.get(relation or "")
        target = row.get("target", _index_of(objects, answer, default=0 if objects else -1))
        reference = row.get("reference", 1 if len(objects) > 1 else -1)
        for field, value in (("target", target), ("reference", reference)):
            if not isinstance(value, int) or not -1 <= value < max(len(objects), 1) or (objects == [] and value != -1):
                raise fail(field, f"{value!r} is not an index into the row's {len(objects)} objects", "use 0-based object indices")
        variants = row.get("answer_variants") or answer_variants(answer.strip())
        known = set(Item.__dataclass_fields__)
        extra = {k: row[k] for k in ("grid", "background", "meta") if k in row and k in known}
        if isinstance(row.get("prompt_swapped"), str) and row["prompt_swapped"].strip():  # strict two-order scoring
            extra["meta"] = {**extra.get("meta", {}), "prompt_swapped": row["prompt_swapped"]}
        return Item(
            id=str(row.get("id", default_id)), task=str(row.get("task", "custom")), prompt=prompt, answer=answer.strip(),
            answer_variants=list(variants), axis=axis, relation=relation, reference=reference, target=target,
            objects=objects, image_size=size, image_path=image_file, options=options, **extra,
        )

    @staticmethod
    def _object(data: Any, index: int, size: tuple[int, int], fail) -> SceneObject:
        field = f"objects[{index}]"
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise fail(field, "is not an object with a name", "write e.g. {\"name\": \"cup\", \"box_px\": [10, 20, 60, 80]}")
        box = data.get("box_px", data.get("box"))
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            raise fail(f"{field}.box_px", f"{box!r} is not [x0, y0, x1, y1]", "give the box in pixels, x1/y1 exclusive")
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        width, height = size
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise fail(f"{field}.box_px", f"{[x0, y0, x1, y1]} is outside the {width}x{height} image (or empty)",
                       "give a box inside the image, in pixels")
        cells = data.get("box_cells")
        return SceneObject(
            name=data["name"], attribute=str(data.get("attribute", data["name"])), box_px=(x0, y0, x1, y1),
            box_cells=tuple(cells) if cells else None, ordinal=dict(data.get("ordinal") or {}),
            color=tuple(data["color"]) if data.get("color") else None, shape=data.get("shape"),
        )


def _drawn_task(name: Any) -> bool:
    """Rows rendered from a drawn task (squares ... scenes) are asked with the synthetic system prompt."""
    from spatialmech.tasks import TASKS, needs_data

    return name in TASKS and name != CustomTask.name and not needs_data(name)


def _index_of(objects: list[SceneObject], answer: str, default: int) -> int:
    word = answer.strip().lower()
    return next((i for i, o in enumerate(objects) if word in (o.attribute.lower(), o.name.lower())), default)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return tuple(image.size)  # type: ignore[return-value]
    except (UnidentifiedImageError, OSError):
        return None

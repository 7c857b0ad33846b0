"""Reading untrusted inputs and writing results safely.

Writes are atomic (temp file in the same folder, fsync, rename), so an interrupted run never leaves a
half-written file that looks complete. Reads turn every way a file can be wrong into a one-line
`UserInputError` naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from spatialmech.errors import UserInputError

# Largest image we agree to decode (pixels); guards against decompression bombs.
MAX_IMAGE_PIXELS = 64_000_000


# ----------------------------------------------------------------------------------------- writing


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and check we can write into it, before any work is done."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-", delete=True):
            pass
    except OSError as exc:
        raise UserInputError(
            f"output folder {folder} is not writable ({exc.strerror or exc})",
            "choose another --out folder or fix its permissions",
        ) from exc
    return folder


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing; rename it over `path` only on success."""
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        binary = "b" in mode
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise UserInputError(
            f"could not write {target} ({exc.strerror or exc})", "free disk space or choose another --out folder"
        ) from exc
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def to_jsonable(value: Any) -> Any:
    """Convert tensors, numpy values, paths and dataclasses into plain JSON values (NaN -> None)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if hasattr(value, "tolist"):  # torch tensors and numpy arrays/scalars
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(to_jsonable(r)) + "\n" for r in rows))


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV; columns default to the union of keys in first-seen order."""
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: to_jsonable(row.get(k)) for k in columns})
    return atomic_write_text(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------- reading


def read_json(path: str | os.PathLike, what: str = "JSON file", fix: str | None = None) -> Any:
    """Parse a JSON file, with one-line errors for missing, empty and malformed files.

    `fix` replaces the default advice for an unreadable, empty or malformed file (e.g. for files we
    wrote ourselves, where the fix is to recompute them rather than to find a good copy).
    """
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"{what} {file} does not exist", "check the path (or --data folder)")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{what} {file} cannot be read ({exc})", fix or "replace it with a valid UTF-8 JSON file") from exc
    if not text.strip():
        raise UserInputError(f"{what} {file} is empty", fix or "replace it with a complete copy")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(
            f"{what} {file} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            fix or "replace it with a complete, uncorrupted copy",
        ) from exc


def read_jsonl(path: str | os.PathLike, what: str = "JSONL file") -> list[Any]:
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"{what} {file} does not exist", "check the path")
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{what} {file} line {number} is not valid JSON ({exc.msg})", "regenerate the file") from exc
    return rows


def resolve_under(root: str | os.PathLike, relative: str | os.PathLike, what: str = "path") -> Path:
    """Join `relative` (a path written in a data file) onto `root`, never leaving `root`.

    The written path is checked as text: absolute paths and `..` that climb out are refused. Folders
    on the way may be symlinks the user made (`val2017 -> /shared/coco/val2017`, the usual cluster
    set-up), so they are followed; only a symlinked *file* must still land inside the root or inside
    the folder that holds the link (a stray link to /etc/passwd in a downloaded archive is refused).
    The result is the resolved root joined with the normalised relative path.
    """
    base = Path(root).resolve()
    rel = Path(relative)
    if rel.is_absolute():
        raise UserInputError(f"{what} {relative!s} is absolute", f"data files must use paths relative to {base}")
    normal = Path(os.path.normpath(rel)) if str(rel) not in ("", ".") else Path(".")
    if normal.parts[:1] == ("..",):
        raise UserInputError(
            f"{what} {relative!s} escapes the data root {base}",
            "remove '..' or symlinks pointing outside the data folder",
        )
    candidate = base / normal
    if candidate.is_symlink():
        target = candidate.resolve()
        folder = candidate.parent.resolve()
        inside = [b for b in (base, folder) if target == b or b in target.parents]
        if not inside:
            raise UserInputError(
                f"{what} {relative!s} escapes the data root {base} (it is a symlink to {target})",
                "remove '..' or symlinks pointing outside the data folder",
            )
    return candidate


def open_image(path: str | os.PathLike, what: str = "image"):
    """Load an image fully as RGB, with one-line errors for missing, empty, corrupt, truncated or huge files."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"{what} {file} does not exist", "check the path or re-download the data set")
    if file.stat().st_size == 0:
        raise UserInputError(f"{what} {file} is an empty (zero-byte) file", "replace it with a complete copy")
    try:
        with Image.open(file) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise UserInputError(
                    f"{what} {file} is {width}x{height} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit",
                    "downscale it before use",
                )
            image.load()
            return image.convert("RGB")
    except UserInputError:
        raise
    except Image.DecompressionBombError as exc:  # PIL refuses even to open it: far over our limit too
        raise UserInputError(
            f"{what} {file} is over the {MAX_IMAGE_PIXELS:,}-pixel limit ({exc})", "downscale it before use"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserInputError(
            f"{what} {file} is corrupt or truncated ({exc})", "replace it with a complete copy"
        ) from exc

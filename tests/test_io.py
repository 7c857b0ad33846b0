"""Result I/O: atomic writes, JSON/CSV, provenance, and safe reading of untrusted inputs."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from spatialmech.errors import UserInputError
from spatialmech.io import (
    atomic_write_text,
    ensure_writable_dir,
    open_image,
    read_json,
    resolve_under,
    write_csv,
    write_json,
)
from spatialmech.provenance import provenance, utc_now


def test_write_json_roundtrip_with_tensors_and_nan(tmp_path):
    import torch

    path = write_json(tmp_path / "r.json", {"a": torch.tensor([1.0, 2.0]), "b": float("nan"), "c": (1, 2)})
    assert json.loads(path.read_text()) == {"a": [1.0, 2.0], "b": None, "c": [1, 2]}


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path):
    from spatialmech.io import atomic_open

    target = tmp_path / "result.json"
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("{half")
        raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_existing(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_csv_columns_union(tmp_path):
    path = write_csv(tmp_path / "t.csv", [{"a": 1}, {"b": 2}])
    assert path.read_text().splitlines() == ["a,b", "1,", ",2"]


def test_read_json_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": ')
    with pytest.raises(UserInputError, match="not valid JSON"):
        read_json(bad)
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(UserInputError, match="empty"):
        read_json(empty)


def test_resolve_under_refuses_escapes(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "ok.jpg").write_bytes(b"x")
    assert resolve_under(root, "ok.jpg") == (root / "ok.jpg").resolve()
    with pytest.raises(UserInputError, match="escapes"):
        resolve_under(root, "../secret.txt")
    with pytest.raises(UserInputError, match="absolute"):
        resolve_under(root, "/etc/passwd")
    os.symlink("/etc/passwd", root / "link")
    with pytest.raises(UserInputError, match="escapes"):
        resolve_under(root, "link")
    # A folder the user linked elsewhere (val2017 -> a shared COCO copy) is followed.
    shared = tmp_path / "shared" / "val2017"
    shared.mkdir(parents=True)
    (shared / "1.jpg").write_bytes(b"x")
    os.symlink(shared, root / "val2017", target_is_directory=True)
    assert resolve_under(root, "val2017/1.jpg").read_bytes() == b"x"
    with pytest.raises(UserInputError, match="escapes"):
        resolve_under(root, "val2017/../../secret.txt")


def test_open_image_errors(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(good)
    assert open_image(good).getpixel((0, 0)) == (255, 0, 0)
    zero = tmp_path / "zero.png"
    zero.write_bytes(b"")
    with pytest.raises(UserInputError, match="zero-byte"):
        open_image(zero)
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good.read_bytes()[:20])
    with pytest.raises(UserInputError, match="corrupt or truncated"):
        open_image(truncated)
    with pytest.raises(UserInputError, match="does not exist"):
        open_image(tmp_path / "nope.png")


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserInputError, match="not writable"):
        ensure_writable_dir(blocker / "sub")


def test_provenance_fields():
    block = provenance(seed=3, started_at=utc_now())
    assert block["seed"] == 3
    assert block["packages"]["torch"]
    assert {"git_revision", "started_at", "finished_at", "device"} <= set(block)

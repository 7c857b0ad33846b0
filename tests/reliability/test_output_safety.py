"""Writing results: unwritable output folders, a disk that fills up mid-run, damaged saved work.

A full disk is simulated in two ways that work anywhere (os.fsync or the temporary file's creation
raising ENOSPC inside the atomic writer, at every write of a run in turn) and, where this process may
mount, with a real tiny tmpfs. After every failure: exit 2 with one line, no result.json, no leftover
temporary file, every file present complete; and `--resume` afterwards still gives the full result.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from reliability_helpers import assert_bad_input, assert_no_partial_result, run_cli

N_ITEMS = 2


def eval_out(model: Path, out: Path, *extra) -> list:
    return ["eval", "--model", model, "--task", "squares", "--n", N_ITEMS, "--out", out, *extra]


def run_out(model: Path, out: Path, *extra) -> list:
    return ["run", "behavior", "--model", model, "--task", "squares", "--n", N_ITEMS, "--out", out, *extra]


def science(result_file: Path) -> dict:
    """A result without its provenance (start/end times): what must be identical across runs."""
    result = json.loads(result_file.read_text())
    result.pop("provenance")
    return result


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory) -> dict:
    """The result of an uninterrupted run, to compare resumed runs with."""
    from spatialmech.cli import main

    out = tmp_path_factory.mktemp("reference")
    assert main([str(a) for a in run_out(tiny_model, out)]) == 0
    return science(out / "behavior" / "result.json")


# ------------------------------------------------------------------------------------------ not writable


def test_out_below_a_file(tiny_model, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_bad_input(run_cli(eval_out(tiny_model, blocker / "out"), capsys), "not writable", "--out")
    assert_bad_input(run_cli(run_out(tiny_model, blocker), capsys), "not writable", "--out")
    assert_bad_input(run_cli(["render", "squares", "--n", 1, "--out", blocker], capsys), "not writable")
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_out_folder_without_write_permission(tiny_model, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_bad_input(run_cli(eval_out(tiny_model, locked / "out"), capsys), "not writable")
        assert_bad_input(run_cli(run_out(tiny_model, locked), capsys), "not writable")
    finally:
        locked.chmod(0o755)
    assert not list(locked.iterdir())


def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True, check=False)


def test_read_only_filesystem(tiny_model, tmp_path, capsys):
    mount = tmp_path / "readonly"
    if not _mount_tmpfs(mount, "ro,size=64k"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        assert_bad_input(run_cli(run_out(tiny_model, mount), capsys), "not writable", "Read-only file system")
    finally:
        _unmount(mount)


# ------------------------------------------------------------------------------------------ disk full


def _disk_full_at(monkeypatch: pytest.MonkeyPatch, failing_call: int) -> list[int]:
    """Make the `failing_call`-th os.fsync raise ENOSPC (0 = never); returns the call counter."""
    calls = [0]
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] == failing_call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_disk_full_at_every_write(tiny_model, reference, tmp_path, capsys, monkeypatch):
    """Fail each write of a run in turn (manifest, unit, table, result): exit 2, nothing half-written,
    and `--resume` on a healthy disk then finishes with exactly the uninterrupted result."""
    counter = _disk_full_at(monkeypatch, 0)
    assert run_cli(run_out(tiny_model, tmp_path / "count"), capsys).code == 0
    writes = counter[0]
    assert writes >= 4  # run manifest, at least one unit, the predictions table, result.json
    for failing in range(1, writes + 1):
        out = tmp_path / f"full-at-{failing}"
        _disk_full_at(monkeypatch, failing)
        message = assert_bad_input(run_cli(run_out(tiny_model, out), capsys), "could not write", "No space left on device")
        assert "free disk space" in message
        assert_no_partial_result(out)
        monkeypatch.undo()  # a healthy disk again
        assert run_cli(run_out(tiny_model, out, "--resume"), capsys).code == 0
        assert science(out / "behavior" / "result.json") == reference


def test_disk_full_when_creating_the_temporary_file(tiny_model, tmp_path, capsys, monkeypatch):
    """ENOSPC (or no free inodes) already when the atomic writer creates its temporary file."""
    real_open = os.open
    out = tmp_path / "out"

    def open_(path, flags, *args, **kwargs):
        if str(path).startswith(str(out)) and str(path).endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    assert_bad_input(run_cli(eval_out(tiny_model, out), capsys), "could not write", "No space left on device")
    assert_no_partial_result(out)


def test_real_full_tmpfs(tiny_model, reference, tmp_path, capsys):
    mount = tmp_path / "small-disk"
    if not _mount_tmpfs(mount, "size=12k"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        out = mount / "run"
        result = run_cli(["run", "behavior", "--model", tiny_model, "--task", "squares", "--n", 16, "--out", out], capsys)
        assert_bad_input(result, "No space left on device")
        assert_no_partial_result(out)
    finally:
        _unmount(mount)


# ------------------------------------------------------------------------------------------ damaged saved work


def _finished_run(model: Path, out: Path, capsys) -> Path:
    assert run_cli(run_out(model, out), capsys).code == 0
    (out / "behavior" / "result.json").unlink()  # as if killed just before the end
    return out / "behavior"


def test_damaged_unit_on_resume(tiny_model, reference, tmp_path, capsys):
    folder = _finished_run(tiny_model, tmp_path / "out", capsys)
    (unit,) = (folder / "units").glob("*.json")
    unit.write_text('{"rows": [')
    message = assert_bad_input(run_cli(run_out(tiny_model, tmp_path / "out", "--resume"), capsys), unit.name)
    assert "delete it to recompute" in message
    assert not (folder / "result.json").exists()
    unit.unlink()  # the advised fix
    assert run_cli(run_out(tiny_model, tmp_path / "out", "--resume"), capsys).code == 0
    assert science(folder / "result.json") == reference


def test_damaged_manifest_on_resume(tiny_model, tmp_path, capsys):
    folder = _finished_run(tiny_model, tmp_path / "out", capsys)
    (folder / "run_config.json").write_bytes(b"")
    message = assert_bad_input(run_cli(run_out(tiny_model, tmp_path / "out", "--resume"), capsys), "run_config.json")
    assert "without --resume" in message


@pytest.mark.parametrize("change", ["n", "seed", "model"])
def test_resume_with_different_arguments(change, tiny_model, tmp_path, capsys):
    """Resuming must not splice units computed for another model, config or seed into one result."""
    _finished_run(tiny_model, tmp_path / "out", capsys)
    model = tiny_model
    if change == "model":
        from spatialmech.models.registry import adapter_class

        model = tmp_path / "other-model"
        adapter_class("qwen2-vl").tiny(1).save_pretrained(str(model))
    args = run_out(model, tmp_path / "out", "--resume")
    if change == "n":
        args[args.index("--n") + 1] = N_ITEMS + 1
    if change == "seed":
        args += ["--seed", 7]
    expected = {"n": "different config", "seed": "different seed", "model": "different model"}[change]
    assert_bad_input(run_cli(args, capsys), expected, "without --resume")
    assert_no_partial_result(tmp_path / "out")


def test_resume_after_the_data_changed(tiny_model, data, tmp_path, capsys):
    """The run manifest holds the data files' hashes: resuming on edited data is refused."""
    args = ["run", "behavior", "--model", tiny_model, "--task", "coco-spatial", "--data", data, "--out", tmp_path / "out"]
    assert run_cli(args, capsys).code == 0
    (tmp_path / "out" / "behavior" / "result.json").unlink()
    questions = data / "data" / "coco_qa_two_obj.json"
    questions.write_text(json.dumps(json.loads(questions.read_text())[:3]))
    assert_bad_input(run_cli([*args, "--resume"], capsys), "different data")
    assert_no_partial_result(tmp_path / "out")

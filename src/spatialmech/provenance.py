"""Provenance stamped beside every result: what produced it, from what, when, where."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = ("spatialmech", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pillow")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision() -> str | None:
    """The checkout's commit (with '-dirty' if modified), or None outside a git checkout."""
    source = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{rev}-dirty" if dirty else rev
    except (OSError, subprocess.SubprocessError):
        return None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def provenance(seed: int | None, started_at: str, device: str = "cpu", **extra: Any) -> dict[str, Any]:
    """The provenance block of the results contract (SPEC section 6)."""
    return {
        "packages": package_versions(),
        "git_revision": git_revision(),
        "seed": seed,
        "started_at": started_at,
        "finished_at": utc_now(),
        "device": device,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **extra,
    }

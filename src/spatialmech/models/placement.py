"""Where a model's weights live: one device, or split by accelerate over GPUs, CPU and disk.

The one place that resolves `--device`, parses `--max-memory` and turns `--device-map` /
`--offload-folder` into `from_pretrained` arguments, so every loading path (CLI, reproduce, Ray
workers) places models the same way. A `Placement` is a small frozen dataclass: picklable, so a Ray
worker can be told how to load its model.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spatialmech.errors import UserInputError

DEVICE_MAPS = ("auto", "balanced", "sequential")
DISTRIBUTED_INSTALL = "pip install -e .[distributed]"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Placement:
    """How to place a model: `device` for a whole model, or accelerate's `device_map` (a strategy name
    or an explicit module -> device dict) with optional per-device `max_memory` and `offload_folder`."""

    device: str = "auto"
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[str | int, str] = field(default_factory=dict)
    offload_folder: str | None = None

    @property
    def sharded(self) -> bool:
        return self.device_map is not None


def resolve_device(name: str | None) -> str:
    """'auto' (or None) -> 'cuda' when CUDA is present, else 'cpu'; an explicit device is checked, so
    `--device cuda` on a machine without CUDA is a one-line error rather than a crash mid-load."""
    name = (name or "auto").strip()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserInputError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"--device {name}: this machine has no CUDA GPU (or torch is a CPU build)", "use --device auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserInputError(
                f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices", "use cuda:0 .. cuda:N-1 or --device auto"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserInputError(f"--device {name}: MPS is not available here", "use --device auto or cpu")
    return name


def require_extra(module: str, flag: str) -> None:
    """A one-line exit-2 error when an optional `distributed` dependency (accelerate, ray) is missing."""
    if importlib.util.find_spec(module) is None:
        raise UserInputError(f"{flag} needs {module}, which is not installed", f"install the extra: {DISTRIBUTED_INSTALL}")


def parse_max_memory(text: str | None) -> dict[str | int, str]:
    """'cuda:0=20GiB,cpu=64GiB' (or '0=20GiB') -> {0: '20GiB', 'cpu': '64GiB'}, accelerate's format."""
    if text is None or not text.strip():
        return {}
    out: dict[str | int, str] = {}
    for part in text.split(","):
        device, sep, size = part.partition("=")
        device, size = device.strip(), size.strip()
        if not sep or not device or not size:
            raise UserInputError(f"--max-memory entry {part.strip()!r} is not DEVICE=SIZE", "write e.g. --max-memory cuda:0=20GiB,cpu=64GiB")
        if not _SIZE.match(size):
            raise UserInputError(f"--max-memory size {size!r} for {device} is not a size", "use a number with a unit, e.g. 20GiB, 512MiB or 2GB")
        key = _memory_key(device)
        if key in out:
            raise UserInputError(f"--max-memory names device {device} twice", "give each device once")
        out[key] = size.replace(" ", "")
    return out


def _memory_key(device: str) -> str | int:
    if device in ("cpu", "disk", "mps"):
        return device
    if device.isdigit():
        return int(device)
    match = re.fullmatch(r"cuda:(\d+)", device)
    if match:
        return int(match.group(1))
    raise UserInputError(f"--max-memory device {device!r} is unknown", "use cuda:N (or N), cpu or mps")


def make_placement(
    device: str | None = "auto",
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[str | int, str] | None = None,
    offload_folder: str | None = None,
) -> Placement:
    """A checked `Placement` from command-line style values (strings), e.g. from argparse."""
    memory = parse_max_memory(max_memory) if isinstance(max_memory, str) or max_memory is None else dict(max_memory)
    if device_map is None:
        if memory or offload_folder:
            raise UserInputError("--max-memory and --offload-folder only apply with --device-map", "add --device-map auto")
        resolve_device(device)  # fail now on a bad name; resolved again where the model loads (a Ray worker's own GPU)
        return Placement(device=device or "auto")
    require_extra("accelerate", "--device-map")
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise UserInputError(f"unknown --device-map {device_map!r}", f"use one of {', '.join(DEVICE_MAPS)}")
    if offload_folder is not None:
        from spatialmech.io import ensure_writable_dir

        ensure_writable_dir(offload_folder)
    return Placement(device="auto" if device is None else device, device_map=device_map, max_memory=memory, offload_folder=offload_folder)


def placement_from_args(args: Any) -> Placement:
    """The placement the model-loading commands' flags ask for (absent flags = defaults)."""
    return make_placement(
        getattr(args, "device", "auto"),
        getattr(args, "device_map", None),
        getattr(args, "max_memory", None),
        getattr(args, "offload_folder", None),
    )


def from_pretrained_kwargs(placement: Placement) -> dict[str, Any]:
    """What `from_pretrained` needs for a sharded placement (an unsharded model is moved with `.to`)."""
    if not placement.sharded:
        return {}
    kwargs: dict[str, Any] = {"device_map": placement.device_map}
    if placement.max_memory:
        kwargs["max_memory"] = dict(placement.max_memory)
    if placement.offload_folder is not None:
        kwargs["offload_folder"] = placement.offload_folder
    return kwargs


def input_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go: for an accelerate-dispatched model the first GPU of its device map
    (CPU when it only holds cpu/disk; offloaded weights sit on 'meta' and are streamed in by
    accelerate's hooks), else the device of its parameters."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        for value in device_map.values():
            if isinstance(value, int):
                return torch.device("cuda", value)
            if isinstance(value, str) and value not in ("cpu", "disk", "meta"):
                return torch.device(value)
        return torch.device("cpu")
    return next(model.parameters()).device

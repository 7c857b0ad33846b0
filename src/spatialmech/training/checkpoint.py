"""Resumable training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a folder with `weights.safetensors` (model + auxiliary heads), `optimizer.safetensors`
(AdamW moments, flattened by parameter index), `rng.safetensors` (torch RNG state) and `state.json`
(stage, step, loss history, timings, optimizer hyper-parameters, Python RNG state). Each file is written
atomically and `state.json` last, so a checkpoint whose `state.json` exists is complete.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from spatialmech.io import atomic_write_bytes, read_json, write_json

STATE_FILE = "state.json"


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW state as flat tensors plus JSON-able param groups."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"{index}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return tensors, {"param_groups": state["param_groups"]}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    folder: Path,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).unlink(missing_ok=True)  # incomplete until state.json is rewritten
    _save_tensors(folder / "weights.safetensors", weights)
    meta: dict[str, Any] = {}
    if optimizer is not None:
        tensors, meta = optimizer_tensors(optimizer)
        _save_tensors(folder / "optimizer.safetensors", tensors)
    _save_tensors(folder / "rng.safetensors", {"torch": torch.get_rng_state()})
    full_state = {**state, "optimizer": meta, "python_random": _random_state_to_json(random.getstate())}
    write_json(folder / STATE_FILE, full_state)


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]] | None:
    """(weights, optimizer tensors, state) of a complete checkpoint, or None if there is none."""
    if not (folder / STATE_FILE).is_file():
        return None
    state = read_json(folder / STATE_FILE, "training checkpoint state")
    weights = load_file(str(folder / "weights.safetensors"))
    optimizer_file = folder / "optimizer.safetensors"
    optimizer = load_file(str(optimizer_file)) if optimizer_file.is_file() else {}
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    random.setstate(_random_state_from_json(state["python_random"]))
    return weights, optimizer, state


def _random_state_to_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _random_state_from_json(value: Any) -> Any:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)

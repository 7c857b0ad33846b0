"""Which adapter handles which checkpoint, and loading by path or hub id.

Adding a family = adding its adapter module to `FAMILY_MODULES` (and its tests). Each module defines
one `VLMAdapter` subclass named `Adapter`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from spatialmech.errors import UserInputError
from spatialmech.io import read_json
from spatialmech.models.base import VLMAdapter
from spatialmech.models.placement import Placement, resolve_device

# family name -> module (relative to spatialmech.models) holding its `Adapter` class.
FAMILY_MODULES: dict[str, str] = {
    "qwen2-vl": "qwen2_vl",
    "qwen2.5-vl": "qwen2_5_vl",
    "gemma3": "gemma3",
    "pixtral": "pixtral",
    "llava": "llava",
    "paligemma": "paligemma",
    "idefics3": "idefics3",
    "internvl": "internvl",
}

BUNDLED_MODEL_NAME = "bundled"


def bundled_model_path() -> Path:
    """Folder of the tiny Qwen2-VL we train and ship (see `spatialmech train-default`)."""
    return Path(__file__).resolve().parent.parent / "assets" / "bundled_model"


def adapter_class(family: str) -> type[VLMAdapter]:
    if family not in FAMILY_MODULES:
        raise UserInputError(f"unknown model family {family!r}", f"use one of {', '.join(FAMILY_MODULES)}")
    module = importlib.import_module(f"spatialmech.models.{FAMILY_MODULES[family]}")
    return module.Adapter


def available_families() -> dict[str, type[VLMAdapter]]:
    """The families whose adapter module is importable in this install."""
    found = {}
    for family in FAMILY_MODULES:
        try:
            found[family] = adapter_class(family)
        except ModuleNotFoundError:
            continue
    return found


def family_for_config(config: dict[str, Any]) -> str:
    """The family whose adapter `handles` this config.json (a dict), e.g. pixtral for a `llava` checkpoint
    with a Pixtral vision tower."""
    for family, cls in available_families().items():
        if cls.handles(config):
            return family
    raise UserInputError(
        f"model type {config.get('model_type')!r} is not a supported VLM family",
        f"use a checkpoint of one of: {', '.join(FAMILY_MODULES)} (see `spatialmech models`)",
    )


def family_for_model_type(model_type: str) -> str:
    """The family of a bare model_type (sub-configs at their defaults: `llava` -> LLaVA-1.5)."""
    return family_for_config({"model_type": model_type})


def _read_model_type(path_or_id: str, trust_remote_code: bool) -> str:
    """Read config.json's model_type from a local folder or the hub, with clear errors."""
    return str(_read_config(path_or_id, trust_remote_code)["model_type"])


def _read_config(path_or_id: str, trust_remote_code: bool) -> dict[str, Any]:
    """Read config.json (as a dict with a model_type) from a local folder or the hub, with clear errors."""
    folder = Path(path_or_id)
    if folder.exists():
        if not folder.is_dir():
            raise UserInputError(f"model path {folder} is a file, not a checkpoint folder", "pass the folder that holds config.json")
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise UserInputError(f"model folder {folder} has no config.json", "pass a Hugging Face checkpoint folder")
        config = read_json(config_file, "model config")
        if not isinstance(config, dict):
            raise UserInputError(f"{config_file} is not a JSON object", "replace it with a Hugging Face config.json")
        if config.get("auto_map") and not trust_remote_code:
            raise UserInputError(
                f"checkpoint {folder} needs remote code (its config has auto_map)",
                "pass --trust-remote-code only if you trust its code, or use a native transformers checkpoint",
            )
        weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.safetensors.index.json"))
        if not weights:
            pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")] + [p.name for p in folder.glob("*.pth")]
            hint = f" (found only pickle weights {', '.join(pickled)}, which we refuse to load)" if pickled else ""
            raise UserInputError(
                f"model folder {folder} has no safetensors weights{hint}",
                "convert the checkpoint to safetensors or pass a folder that has model.safetensors",
            )
        model_type = config.get("model_type")
        if not model_type:
            raise UserInputError(f"{config_file} has no model_type", "pass a Hugging Face checkpoint folder")
        return config
    if path_or_id.count("/") != 1 or path_or_id.startswith((".", "/")):
        raise UserInputError(
            f"model {path_or_id!r} is neither an existing folder nor a hub id (owner/name)",
            "check the path, or use 'bundled' for the shipped model",
        )
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise UserInputError(
            f"cannot fetch model {path_or_id!r} from the hub ({str(exc).splitlines()[0]})",
            "download it to a local folder and pass the folder, or check the id",
        ) from exc
    except ValueError as exc:
        raise UserInputError(f"model {path_or_id!r}: {str(exc).splitlines()[0]}", "pass --trust-remote-code only if you trust it") from exc
    return config.to_dict()


def load_model(
    path_or_id: str | None = None, *, dtype=None, device: str | Placement = "auto", trust_remote_code: bool = False,
    grid: int | None = None,
) -> VLMAdapter:
    """Load any supported checkpoint behind its family adapter. None or 'bundled' = the shipped model.

    `device`: a device name ('auto' = CUDA when present, else CPU) or a `Placement` (accelerate's
    device map over GPUs, CPU and disk; see `spatialmech.models.placement`); checked before weights
    load. `dtype` None = the family's `default_dtype` (the authors' fp32 for Qwen2-VL and Gemma3, bf16
    for Pixtral), else the checkpoint's own. `grid` (--grid): tokens per side to draw synthetic stimuli
    on instead of the family's preset; a processor that cannot keep that size gets the largest it
    allows, and a warning line says so.
    """
    resolve_device(device.device if isinstance(device, Placement) else device)
    if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 1):
        raise UserInputError(f"--grid {grid!r} is not a positive number of tokens per side", "pass e.g. --grid 12")
    if path_or_id in (None, BUNDLED_MODEL_NAME):
        path = bundled_model_path()
        if not (path / "config.json").is_file():
            raise UserInputError(
                "the bundled model is not installed in this copy of spatialmech",
                "run `spatialmech train-default --out DIR` and pass --model DIR",
            )
        path_or_id = str(path)
    family = family_for_config(_read_config(str(path_or_id), trust_remote_code))
    cls = adapter_class(family)
    if dtype is None:
        dtype = cls.default_dtype
    adapter = cls.from_pretrained(str(path_or_id), dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    set_grid(adapter, grid)
    return adapter


def load_adapter_from_args(args: Any) -> VLMAdapter:
    """The adapter a command's model options name: --model, --dtype, --trust-remote-code, --grid, and the
    placement (--device, --device-map, --max-memory, --offload-folder)."""
    import torch

    from spatialmech.models.placement import placement_from_args

    dtype = getattr(torch, args.dtype) if getattr(args, "dtype", None) else None
    return load_model(args.model, dtype=dtype, device=placement_from_args(args), trust_remote_code=args.trust_remote_code,
                      grid=getattr(args, "grid", None))


def set_grid(adapter: VLMAdapter, grid: int | None) -> None:
    """Ask the adapter for a `grid` x `grid` token grid (None = its preset) and print a warning line when
    the processor cannot give it (the note also travels in every item's `grid`)."""
    import sys

    adapter.requested_grid = grid
    try:
        spec = adapter.grid_spec()
    except UserInputError:
        return  # a processor without a square grid: the tasks that need one say so themselves
    note = spec.note
    if grid is not None and not note and spec.tokens_per_side != grid:
        note = f"this {adapter.family} model has a fixed {spec.tokens_per_side}x{spec.tokens_per_side} token grid; --grid {grid} is not possible"
    if note:
        print(f"spatialmech: warning: {adapter.model_id}: {note}", file=sys.stderr)

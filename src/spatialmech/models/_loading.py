"""Loading a Hugging Face checkpoint with one-line errors: weights (safetensors only, placed as asked),
tokenizer (with the processor's chat template when the tokenizer lacks one) and image processor.
Every family adapter loads through these (as `_hf_common.load_*`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from spatialmech.errors import UserInputError
from spatialmech.models.placement import Placement, from_pretrained_kwargs, make_placement, resolve_device

# ------------------------------------------------------------------------------------------ loading


def load_hf_model(
    model_cls: Any,
    path_or_id: str,
    *,
    dtype: torch.dtype | None,
    device: str | Placement,
    trust_remote_code: bool,
) -> nn.Module:
    """`model_cls.from_pretrained` with safetensors only, turning missing/corrupt files into one-line errors.

    `device` is a device name (resolved by `resolve_device`: 'auto' = CUDA if present) or a
    `Placement`; a sharded placement is handed to accelerate at load time (the weights never sit
    whole on one device)."""
    placement = device if isinstance(device, Placement) else make_placement(device)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    kwargs.update(from_pretrained_kwargs(placement))
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = model_cls.from_pretrained(path_or_id, **kwargs)
    except OSError as exc:
        raise UserInputError(
            f"cannot load weights of model {path_or_id!r} ({first_line(exc)})",
            "pass a folder (or hub id) with safetensors weights and a matching config.json",
        ) from exc
    except SafetensorError as exc:
        raise UserInputError(
            f"weights of model {path_or_id!r} are corrupt or truncated ({first_line(exc)})",
            "download or copy the checkpoint again",
        ) from exc
    except Exception as exc:  # anything else transformers raises on a checkpoint's files (bad field types...)
        raise UserInputError(
            f"model {path_or_id!r} does not load ({first_line(exc)})",
            "check that the folder is a complete checkpoint of a supported family",
        ) from exc
    if not placement.sharded:
        model = model.to(resolve_device(placement.device))
    return model.eval()


def load_tokenizer(path_or_id: str, *, trust_remote_code: bool) -> Any:
    """AutoTokenizer, with the chat template taken from the processor's files when the tokenizer lacks one.

    Real VLM checkpoints often keep the chat template in `chat_template.json`/`.jinja` (a processor
    file), which AutoTokenizer does not read; we never build the processor (Qwen's needs torchvision).
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except Exception as exc:  # a malformed tokenizer file fails in many ways (TypeError, KeyError, tokenizers' own)
        raise UserInputError(
            f"cannot load the tokenizer of model {path_or_id!r} ({first_line(exc)})",
            "pass a checkpoint folder that includes its tokenizer files",
        ) from exc
    if not getattr(tokenizer, "chat_template", None):
        template = _read_processor_chat_template(path_or_id)
        if template:
            tokenizer.chat_template = template
    tokenizer.padding_side = "left"
    return tokenizer


def _read_processor_chat_template(path_or_id: str) -> str | None:
    for name in ("chat_template.jinja", "chat_template.json"):
        file = _resolve_file(path_or_id, name)
        if file is None:
            continue
        text = Path(file).read_text(encoding="utf-8")
        if name.endswith(".json"):
            try:
                return json.loads(text).get("chat_template")
            except (json.JSONDecodeError, AttributeError):
                return None
        return text
    return None


def _resolve_file(path_or_id: str, name: str) -> str | None:
    folder = Path(path_or_id)
    if folder.is_dir():
        file = folder / name
        return str(file) if file.is_file() else None
    try:
        from transformers.utils import cached_file

        return cached_file(path_or_id, name, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None


def load_image_processor(processor_cls: Any, path_or_id: str) -> Any:
    """A specific (PIL/numpy backend) image processor class, so nothing needs torchvision."""
    try:
        return processor_cls.from_pretrained(path_or_id)
    except Exception as exc:  # a malformed preprocessor_config.json fails in many ways (AttributeError, TypeError...)
        raise UserInputError(
            f"cannot load the image processor of model {path_or_id!r} ({first_line(exc)})",
            "pass a checkpoint folder that includes preprocessor_config.json",
        ) from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------ adapter base

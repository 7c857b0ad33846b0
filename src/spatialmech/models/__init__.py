"""Model adapters: one small module per VLM family behind `VLMAdapter`."""

from spatialmech.models.base import BatchInputs, GridSpec, HookPoint, ImageTokens, VLMAdapter
from spatialmech.models.registry import FAMILY_MODULES, adapter_class, available_families, load_model

__all__ = [
    "FAMILY_MODULES",
    "BatchInputs",
    "GridSpec",
    "HookPoint",
    "ImageTokens",
    "VLMAdapter",
    "adapter_class",
    "available_families",
    "load_model",
]

"""spatialmech: where and how a vision-language model computes spatial relations.

Data flows one way: tasks -> models (adapters) -> engine -> experiments -> report. The public API
(`spatialmech.api`) is re-exported here lazily, so `import spatialmech` stays light (no torch) and
`spatialmech --help` stays instant:

    import spatialmech as sm
    model = sm.load_model("bundled")
    result = sm.run("last-token", model, task="squares", n=8)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("SYNTHETIC_SYSTEM_PROMPT", "Ablate", "Engine", "ImageTokenMap", "Inputs", "Model", "Patch", "Result", "Steer",
        "add_direction", "amplify_projection", "describe_support", "load_model", "load_task", "require_support", "run",
        "supported_experiments")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from spatialmech import api

        return getattr(api, name)
    raise AttributeError(f"module 'spatialmech' has no attribute {name!r}")

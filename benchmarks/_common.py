"""Shared pieces of the benchmarks: the models benchmarked, machine info, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
from pathlib import Path
from typing import Any

import torch

from spatialmech.io import write_json
from spatialmech.models.base import VLMAdapter
from spatialmech.provenance import package_versions, utc_now

RESULTS = Path(__file__).resolve().parent / "results"

# "mid": a random Qwen2-VL of the brief's size (hidden 1024, 12 layers) with a vision tower whose share of
# the forward (~1/4) is like the real 7B's; same 336 px input / 12x12 token grid as the bundled model.
MID_SIZE = {
    "text_hidden": 1024,
    "text_layers": 12,
    "text_heads": 16,
    "text_kv_heads": 4,
    "text_intermediate": 2816,
    "mrope_section": (8, 12, 12),
    "vision_depth": 8,
    "vision_embed_dim": 384,
    "vision_heads": 6,
}


def load_benchmark_model(name: str) -> tuple[VLMAdapter, str]:
    """("bundled" | "mid") -> (adapter, description). Falls back to the bundled architecture with random
    weights when the trained bundled model is not installed (same compute, so the same timings)."""
    from spatialmech.models.registry import bundled_model_path, load_model
    from spatialmech.training.architecture import ArchitectureConfig, build_adapter

    if name == "bundled":
        if (bundled_model_path() / "config.json").is_file():
            return load_model("bundled"), "bundled model (trained weights)"
        return build_adapter(ArchitectureConfig(), seed=0), "bundled architecture, random weights (bundled model not installed)"
    if name == "mid":
        return build_adapter(ArchitectureConfig(**MID_SIZE), seed=0), f"random Qwen2-VL {MID_SIZE}"
    raise SystemExit(f"unknown model {name!r}: use bundled or mid")


def describe(adapter: VLMAdapter) -> dict[str, Any]:
    text = adapter.model.config.text_config
    vision = adapter.model.config.vision_config
    return {
        "family": adapter.family,
        "parameters_millions": round(sum(p.numel() for p in adapter.model.parameters()) / 1e6, 2),
        "layers": adapter.num_layers,
        "hidden": adapter.hidden_size,
        "intermediate": text.intermediate_size,
        "vision_depth": vision.depth,
        "vision_width": vision.embed_dim,
        "dtype": str(adapter.model.dtype),
        "attention": text._attn_implementation,
    }


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (no GPU available this session)",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "time": utc_now(),
    }


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def save_result(name: str, data: dict[str, Any]) -> Path:
    stamp = utc_now().replace(":", "").replace("-", "").replace("+0000", "Z")
    path = RESULTS / f"{name}-{stamp}.json"
    write_json(path, data)
    write_json(RESULTS / f"{name}-latest.json", data)
    return path


def dumps(data: Any) -> str:
    return json.dumps(data, indent=1, default=str)

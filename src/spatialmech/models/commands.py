"""`spatialmech models`: the supported families and the bundled model."""

from __future__ import annotations

import argparse

from spatialmech.models.registry import FAMILY_MODULES, available_families, bundled_model_path


def models_command(args: argparse.Namespace) -> int:
    families = available_families()
    print("Supported model families (load with --model PATH|HUB_ID):")
    for family in FAMILY_MODULES:
        cls = families.get(family)
        if cls is None:
            print(f"  {family:<12} (adapter not installed)")
            continue
        print(f"  {family:<12} model_type {'/'.join(cls.model_types):<28} {cls.description}")
    path = bundled_model_path()
    state = "installed" if (path / "config.json").is_file() else "missing (run spatialmech train-default)"
    print(f"\nBundled model (--model bundled, the default): tiny Qwen2-VL at {path} [{state}]")
    return 0

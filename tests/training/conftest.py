"""A tiny architecture of the bundled model's family for fast training tests (same code paths)."""

from __future__ import annotations

import pytest

from spatialmech.training.architecture import ArchitectureConfig
from spatialmech.training.recipe import TrainingConfig, quick_config

TINY_ARCHITECTURE = ArchitectureConfig(
    vision_depth=1,
    vision_embed_dim=32,
    vision_heads=2,
    text_hidden=64,
    text_layers=2,
    text_heads=2,
    text_kv_heads=1,
    text_intermediate=128,
)


def tiny_training_config(seed: int = 0) -> TrainingConfig:
    """`--quick` on the tiny architecture, grid tasks plus scenes, evaluated on 2 items per task."""
    from dataclasses import replace

    config = quick_config(seed, TINY_ARCHITECTURE)
    return replace(config, threads=1, eval_n={task: 2 for task in config.tasks}, eval_batch=2)


@pytest.fixture(scope="session")
def tiny_architecture() -> ArchitectureConfig:
    return TINY_ARCHITECTURE

"""Fixtures for the reliability suite: a tiny saved checkpoint and private copies of the data fixture."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from reliability_helpers import WHATSUP_FIXTURE


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2-VL saved as a real checkpoint folder (safetensors, tokenizer, processor)."""
    from spatialmech.models.registry import adapter_class

    folder = tmp_path_factory.mktemp("tiny-qwen2-vl")
    adapter_class("qwen2-vl").tiny(0).save_pretrained(str(folder))
    return folder


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint that a test may break."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A private copy of the What'sUp + COCO fixture (files under data/, as in the What'sUp repo)."""
    return Path(shutil.copytree(WHATSUP_FIXTURE, tmp_path / "whatsup"))

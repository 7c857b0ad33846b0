"""One real reproduce run on a tiny Qwen2-VL saved to a folder, shared by the report tests.

The model is random (untrained), so the run passes `filter_correct=False` (every pair is kept) and
tiny sizes; everything else is the real pipeline: the CLI's model loading from a folder, every
experiment module, result files, reproduce.json and report.html.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from report_helpers import TINY_OPTIONS, TINY_SIZES, reproduce_args

from spatialmech.pipeline.reproduce import reproduce


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spatialmech.models.qwen2_vl import Adapter

    folder = tmp_path_factory.mktemp("tiny-qwen2-vl")
    Adapter.tiny(seed=0).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def loaded_tiny(tiny_model_dir: Path):
    from spatialmech.models import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """OUT folder of `reproduce --quick` on the tiny model (loaded from its folder as the CLI does)."""
    out = tmp_path_factory.mktemp("reproduce") / "run"
    messages: list[str] = []
    report = reproduce(reproduce_args(tiny_model_dir, out), sizes=TINY_SIZES, extra_options=TINY_OPTIONS,
                       progress=False, log=messages.append)
    assert report == out / "report.html"
    (out / "log.txt").write_text("\n".join(messages), encoding="utf-8")
    return out

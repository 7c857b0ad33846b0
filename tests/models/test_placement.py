"""Device resolution, --max-memory parsing and the distributed extra's one-line errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from spatialmech.cli import main
from spatialmech.errors import UserInputError
from spatialmech.models.placement import (
    DISTRIBUTED_INSTALL,
    Placement,
    from_pretrained_kwargs,
    make_placement,
    parse_max_memory,
    require_extra,
    resolve_device,
)

NO_CUDA = not torch.cuda.is_available()


def test_auto_is_cuda_when_present_else_cpu():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(make_placement().device) == resolve_device("auto")


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_one_line_error(name):
    with pytest.raises(UserInputError, match="no CUDA GPU.*--device auto or cpu"):
        resolve_device(name)


def test_unknown_device_is_one_line_error():
    with pytest.raises(UserInputError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_max_memory_parses_into_accelerates_format():
    assert parse_max_memory("cuda:0=20GiB, 1=18GB,cpu=64GiB,disk=1TB") == {0: "20GiB", 1: "18GB", "cpu": "64GiB", "disk": "1TB"}
    assert parse_max_memory("cpu=2 MiB") == {"cpu": "2MiB"}
    assert parse_max_memory(None) == {} and parse_max_memory(" ") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpu", "is not DEVICE=SIZE"),
        ("cpu=", "is not DEVICE=SIZE"),
        ("=2GiB", "is not DEVICE=SIZE"),
        ("cpu=lots", "is not a size"),
        ("cpu=2XB", "is not a size"),
        ("gpu=2GiB", "device 'gpu' is unknown"),
        ("cpu=1GiB,cpu=2GiB", "names device cpu twice"),
    ],
)
def test_bad_max_memory_is_one_line_error(text, message):
    with pytest.raises(UserInputError, match=message) as info:
        parse_max_memory(text)
    assert "\n" not in str(info.value)


def test_placement_flags_need_a_device_map_and_a_known_strategy(tmp_path):
    with pytest.raises(UserInputError, match="only apply with --device-map"):
        make_placement("auto", None, "cpu=1GiB")
    with pytest.raises(UserInputError, match="only apply with --device-map"):
        make_placement("auto", None, None, str(tmp_path))
    if importlib.util.find_spec("accelerate") is not None:
        with pytest.raises(UserInputError, match="unknown --device-map 'fast'"):
            make_placement("auto", "fast")
        placement = make_placement("auto", "sequential", "cpu=3GiB", str(tmp_path / "off"))
        assert from_pretrained_kwargs(placement) == {"device_map": "sequential", "max_memory": {"cpu": "3GiB"},
                                                     "offload_folder": str(tmp_path / "off")}
    assert from_pretrained_kwargs(Placement(device="cpu")) == {}


def _hide(monkeypatch, *modules: str) -> None:
    """Make the optional modules look uninstalled (find_spec is what the check asks)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))


def test_missing_extra_names_the_install_command(monkeypatch):
    _hide(monkeypatch, "accelerate", "ray")
    for module, flag in (("accelerate", "--device-map"), ("ray", "--workers"), ("ray", "--ray-address")):
        with pytest.raises(UserInputError, match=rf"{flag} needs {module}.*pip install -e \.\[distributed\]"):
            require_extra(module, flag)
    assert DISTRIBUTED_INSTALL == "pip install -e .[distributed]"


def test_cli_placement_errors_exit_2_in_one_line(monkeypatch, tmp_path, capsys):
    base = ["run", "last-token", "--n", "2", "--out", str(tmp_path)]
    assert main([*base, "--device-map", "auto", "--max-memory", "cpu=lots"]) == 2
    assert main([*base, "--max-memory", "cpu=1GiB"]) == 2
    if NO_CUDA:
        assert main([*base, "--device", "cuda"]) == 2
    _hide(monkeypatch, "accelerate")
    assert main([*base, "--device-map", "auto"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spatialmech run: error")]
    assert len(lines) == (4 if NO_CUDA else 3)
    assert "pip install -e .[distributed]" in lines[-1]

"""Loading refuses bad checkpoints with one-line `UserInputError`s (the CLI turns them into exit 2).

CLI-level checks (`spatialmech eval --model ...` exit code 2) belong with the `eval` command; here we
test the loader every command goes through.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spatialmech.errors import EXIT_BAD_INPUT, UserInputError
from spatialmech.models.qwen2_vl import Adapter as Qwen2VLAdapter
from spatialmech.models.registry import load_model


def _load_error(path_or_id: str, **kwargs) -> UserInputError:
    with pytest.raises(UserInputError) as exc:
        load_model(path_or_id, **kwargs)
    message = str(exc.value)
    assert "\n" not in message and ";" in message, "one line: problem; fix"
    assert exc.value.exit_code == EXIT_BAD_INPUT
    return exc.value


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-qwen")
    Qwen2VLAdapter.tiny().save_pretrained(str(folder))
    return folder


def _copy_config(source: Path, target: Path, **changes) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_unknown_hub_id(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no 30 s of network retries
    assert "nosuchowner/nosuchmodel" in str(_load_error("nosuchowner/nosuchmodel"))


def test_missing_local_path(tmp_path: Path) -> None:
    assert "neither an existing folder nor a hub id" in str(_load_error(str(tmp_path / "missing" / "deeper" / "x")))


def test_folder_without_weights(saved_tiny: Path, tmp_path: Path) -> None:
    folder = _copy_config(saved_tiny, tmp_path / "no-weights")
    assert "no safetensors weights" in str(_load_error(str(folder)))


def test_folder_with_only_pickle_weights(saved_tiny: Path, tmp_path: Path) -> None:
    folder = _copy_config(saved_tiny, tmp_path / "pickle")
    (folder / "pytorch_model.bin").write_bytes(b"never unpickled")
    message = str(_load_error(str(folder)))
    assert "pytorch_model.bin" in message and "refuse" in message


def test_config_with_auto_map_needs_trust(saved_tiny: Path, tmp_path: Path) -> None:
    folder = _copy_config(saved_tiny, tmp_path / "remote", auto_map={"AutoModel": "modeling_x.XModel"})
    (folder / "model.safetensors").write_bytes((saved_tiny / "model.safetensors").read_bytes())
    assert "remote code" in str(_load_error(str(folder)))


def test_unsupported_model_type(saved_tiny: Path, tmp_path: Path) -> None:
    folder = _copy_config(saved_tiny, tmp_path / "bert", model_type="bert")
    (folder / "model.safetensors").write_bytes((saved_tiny / "model.safetensors").read_bytes())
    assert "not a supported VLM family" in str(_load_error(str(folder)))


def test_truncated_safetensors(saved_tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "truncated"
    folder.mkdir()
    for file in saved_tiny.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _load_error(str(folder))


def test_saved_tiny_loads(saved_tiny: Path) -> None:
    adapter = load_model(str(saved_tiny))
    assert isinstance(adapter, Qwen2VLAdapter)

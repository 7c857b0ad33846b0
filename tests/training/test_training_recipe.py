"""The training recipe on a tiny architecture: losses fall, runs are deterministic and resumable, and
the output is a normal safetensors Qwen2-VL checkpoint with its log and model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARCHITECTURE, tiny_training_config
from safetensors.torch import load_file

from spatialmech.cli import main
from spatialmech.models import load_model
from spatialmech.training import recipe
from spatialmech.training.architecture import build_adapter
from spatialmech.training.data import GRID_TASKS, TrainingSource
from spatialmech.training.stages import (
    PromptEncoder,
    VisionHeads,
    answer_ids,
    build_feature_cache,
    cache_images,
    freeze_vision_blocks,
    language_batch_grouped,
    language_parameters,
    lm_logits_shared_prefix,
    shared_prefix,
    vision_batch,
    vision_loss,
    vision_parameters,
)


def test_each_stage_reduces_its_loss_in_a_few_steps() -> None:
    torch.manual_seed(0)
    adapter = build_adapter(TINY_ARCHITECTURE, seed=0)
    source = TrainingSource(GRID_TASKS, seed=0)
    heads = VisionHeads(adapter.hidden_size, len(source.vocabulary))
    batch = vision_batch(source, seed=0, step=0, batch_size=4)
    parameters = vision_parameters(adapter) + list(heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=3e-3)
    vision_losses = []
    for _ in range(12):
        loss, info = vision_loss(adapter, heads, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        vision_losses.append(float(loss.detach()))
    assert vision_losses[-1] < 0.6 * vision_losses[0]
    assert info["identity_acc"] > 0.9  # what covers each cell is learnt first

    freeze_vision_blocks(adapter)
    assert not any(p.requires_grad for n, p in adapter.model.model.visual.named_parameters() if not n.startswith("merger."))
    cache = build_feature_cache(adapter, cache_images(source, seed=0, count=4))
    encoder = PromptEncoder(adapter)
    images, rows, prompts, answers = language_batch_grouped(cache, seed=0, step=0, images_per_step=4, max_objects=3)
    prefix = shared_prefix(adapter, encoder, prompts[0])
    targets = answer_ids(adapter, answers)
    trainable = [p for p in language_parameters(adapter) if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    language_losses = []
    for _ in range(12):
        logits = lm_logits_shared_prefix(adapter, encoder, prefix, cache.features[images], rows, prompts)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        language_losses.append(float(loss.detach()))
    assert language_losses[-1] < 0.5 * language_losses[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundled-a")
    recipe.train(tiny_training_config(seed=3), out, progress=False, log=lambda _: None)
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_output_is_a_safetensors_qwen2_vl_checkpoint_with_log_and_card(finished_run: Path) -> None:
    files = {p.name for p in finished_run.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json", "MODEL_CARD.md", "training_log.json"} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth"))]
    assert "checkpoint" not in files  # resumable state is removed once the model is finished
    weights = _weights(finished_run)  # pure safetensors, no pickle
    assert not any(name.startswith("heads.") for name in weights)  # auxiliary heads are not shipped
    adapter = load_model(str(finished_run))  # the ordinary Qwen2-VL adapter
    assert adapter.family == "qwen2-vl"
    assert adapter.grid_spec().tokens_per_side == 12
    log = json.loads((finished_run / "training_log.json").read_text())
    assert set(log["held_out"]) == {"squares", "shapes", "objects", "scenes"}
    assert log["seed"] == 3
    assert {"vision", "cache", "language", "evaluate"} <= set(log["timings"])
    assert log["history"]["vision"] and log["history"]["language"]
    card = (finished_run / "MODEL_CARD.md").read_text()
    for task, metrics in log["held_out"].items():
        assert f"| {task} | {metrics['accuracy']:.4f} | {metrics['n']} |" in card


def test_same_seed_gives_identical_weights_and_another_seed_does_not(finished_run: Path, tmp_path: Path) -> None:
    recipe.train(tiny_training_config(seed=3), tmp_path / "again", progress=False, log=lambda _: None, evaluate=False)
    first, again = _weights(finished_run), _weights(tmp_path / "again")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    recipe.train(tiny_training_config(seed=4), tmp_path / "other", progress=False, log=lambda _: None, evaluate=False)
    other = _weights(tmp_path / "other")
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_an_interrupted_run_resumes_to_the_same_weights(
    finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "interrupted"
    real = recipe.lm_logits_shared_prefix
    calls = {"n": 0}

    def interrupt_on_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe, "lm_logits_shared_prefix", interrupt_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        recipe.train(tiny_training_config(seed=3), out, progress=False, log=lambda _: None, evaluate=False)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert (state["stage"], state["step"]) == ("language", 2)
    monkeypatch.setattr(recipe, "lm_logits_shared_prefix", real)
    messages: list[str] = []
    recipe.train(tiny_training_config(seed=3), out, resume=True, progress=False, log=messages.append, evaluate=False)
    assert any("resuming at stage language, step 2" in m for m in messages)
    first, resumed = _weights(finished_run), _weights(out)
    assert all(torch.equal(first[name], resumed[name]) for name in first)


def test_resume_without_a_checkpoint_is_a_one_line_input_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train-default", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no checkpoint" in err and "\n" not in err

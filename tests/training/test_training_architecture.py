"""The bundled architecture: tokenizer, geometry, and that cached-feature training computes eval logits."""

from __future__ import annotations

import pytest
import torch

from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT
from spatialmech.models.tiny_tokenizer import multi_token_words
from spatialmech.tasks import get_task
from spatialmech.tasks.vocabulary import ALL_WORDS, ANSWER_WORDS, answer_variants
from spatialmech.training.architecture import (
    IMAGE_SIDE,
    TOKENS_PER_IMAGE,
    ArchitectureConfig,
    build_adapter,
    build_tokenizer,
    vocabulary_words,
)
from spatialmech.training.data import GRID_TASKS, TrainingSource
from spatialmech.training.stages import (
    PromptEncoder,
    build_feature_cache,
    cache_images,
    language_batch_grouped,
    lm_logits_from_features,
    lm_logits_shared_prefix,
    shared_prefix,
)


def test_every_task_word_and_answer_spelling_is_one_token() -> None:
    tokenizer = build_tokenizer()
    assert multi_token_words(tokenizer, vocabulary_words()) == []
    assert multi_token_words(tokenizer, ALL_WORDS) == []
    for word in ANSWER_WORDS:
        # the canonical answer and its space-prefixed spelling (the variants the model is trained on);
        # other-case variants of lower-case nouns ("Apple") may be several tokens and are then not scored
        for spelling in answer_variants(word)[:2]:
            assert len(tokenizer.encode(spelling, add_special_tokens=False)) == 1, spelling


def test_every_generated_prompt_and_answer_is_in_the_vocabulary() -> None:
    tokenizer = build_tokenizer()
    for name in (*GRID_TASKS, "scenes"):
        for item in get_task(name).items(40, seed=3):
            assert len(tokenizer.encode(item.answer, add_special_tokens=False)) == 1
            assert tokenizer.unk_token_id not in tokenizer.encode(item.prompt, add_special_tokens=False)


def test_the_lm_sees_the_papers_12x12_grid_of_28px_tokens(tiny_architecture: ArchitectureConfig) -> None:
    adapter = build_adapter(tiny_architecture, seed=0)
    spec = adapter.grid_spec()
    assert (spec.tokens_per_side, spec.pixels_per_token) == (12, 28)
    from PIL import Image

    for size in ((IMAGE_SIDE, IMAGE_SIDE), (500, 500)):
        inputs = adapter.build_inputs([[Image.new("RGB", size, "white")]], ["The object to the left of the key is a(n)"])
        tokens = inputs.images[0][0]
        assert len(tokens) == TOKENS_PER_IMAGE
        assert tokens.grid_shapes == [(12, 12)]


def test_default_architecture_fits_the_size_budget_and_has_enough_layers() -> None:
    adapter = build_adapter(ArchitectureConfig(), seed=0)
    parameters = sum(p.numel() for p in adapter.model.parameters())
    assert parameters * 4 <= 25 * 2**20  # fp32 safetensors at most 25 MB
    assert adapter.num_layers >= 6
    assert adapter.model.config.model_type == "qwen2_vl"


@pytest.fixture(scope="module")
def cached_setup(tiny_architecture: ArchitectureConfig):
    adapter = build_adapter(tiny_architecture, seed=1)
    with torch.no_grad():  # random weights give near-uniform logits; make them discriminative
        for parameter in adapter.model.parameters():
            parameter.mul_(3.0)
    source = TrainingSource((*GRID_TASKS, "scenes"), seed=0)
    images = cache_images(source, seed=0, count=6)
    cache = build_feature_cache(adapter, images)
    return adapter, images, cache


def test_cached_feature_paths_match_the_adapters_full_forward(cached_setup) -> None:
    """Training runs the LM from cached vision features (and a shared prefix); both must give the
    logits `Adapter.forward(build_inputs(...))` gives at eval time."""
    adapter, images, cache = cached_setup
    encoder = PromptEncoder(adapter)
    rows_images, rows, prompts, _ = language_batch_grouped(cache, seed=0, step=0, images_per_step=6, max_objects=3)
    image_of_row = [rows_images[r] for r in rows]
    with torch.no_grad():
        full = adapter.forward(
            adapter.build_inputs([[images[i].image] for i in image_of_row], prompts, system=SYNTHETIC_SYSTEM_PROMPT)
        )
        cached = lm_logits_from_features(adapter, encoder, cache.features[image_of_row], prompts)
        prefix = shared_prefix(adapter, encoder, prompts[0])
        shared = lm_logits_shared_prefix(adapter, encoder, prefix, cache.features[rows_images], rows, prompts)
    assert full.std() > 0.1
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(shared, full, atol=1e-4, rtol=1e-4)
    assert len({len(p) for p in prompts}) > 1  # rows of different lengths were padded


def test_training_images_are_deterministic_from_the_seed() -> None:
    first = cache_images(TrainingSource(GRID_TASKS, seed=5), seed=5, count=5)
    second = cache_images(TrainingSource(GRID_TASKS, seed=5), seed=5, count=5)
    other = cache_images(TrainingSource(GRID_TASKS, seed=6), seed=6, count=5)
    assert [a.image.tobytes() for a in first] == [b.image.tobytes() for b in second]
    assert [a.questions for a in first] == [b.questions for b in second]
    assert [a.image.tobytes() for a in first] != [b.image.tobytes() for b in other]

"""The training stages of the bundled model, the way real VLMs are trained.

1. `vision`: the vision tower (patch embed, blocks, merger) learns from dense per-token labels on
   our rendered images: what occupies each LM-token cell, the ordinal of the object whose strip
   holds each cell (background included), and for object cells which object is the nearest
   neighbour on each side (a dense relational caption). Small linear heads read the merger output;
   they are thrown away afterwards.
2. `cache`: the vision blocks are frozen, and their output (`vision.out`, the merger input) is
   computed once per training image and kept in memory.
3. `language`: projector (merger) and LM learn to answer the questions from the cached features,
   with a curriculum from two-object to three-object images. The LM is called exactly as at eval
   time (same chat template, system prompt, token ids and M-RoPE positions) with the image features
   passed through `mm_encoder_outputs`, so only the vision blocks' forward pass is skipped.

Every step's data is a pure function of (seed, stage, step), so a resumed run sees the same batches.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT
from spatialmech.models.qwen2_vl import Adapter
from spatialmech.training.architecture import IMAGE_SIDE, PATCHES_PER_IMAGE, TOKENS_PER_IMAGE, TOKENS_PER_SIDE
from spatialmech.training.data import IGNORE, SIDES, TrainingImage, TrainingSource

MAX_ORDINALS = 3  # grid images hold at most three objects on their line


def step_rng(seed: int, stage: str, step: int) -> random.Random:
    """The data RNG of one step: independent of what ran before, so resuming replays the same data."""
    return random.Random(zlib.crc32(f"{seed}/{stage}/{step}".encode()))


class StageTimer:
    """Wall-clock seconds per named part of a step (data, preprocess, forward, backward, optimizer)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] += now - self._start
        self._start = now

    def reset(self) -> None:
        self._start = time.perf_counter()


class VisionHeads(nn.Module):
    """Linear probes on the merger output used only for the vision stage (not shipped)."""

    def __init__(self, width: int, n_classes: int):
        super().__init__()
        self.identity = nn.Linear(width, n_classes)
        self.neighbours = nn.Linear(width, n_classes * len(SIDES))
        self.ordinal = nn.Linear(width, 1 + MAX_ORDINALS)
        self.n_classes = n_classes

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        neighbours = self.neighbours(tokens).view(-1, len(SIDES), self.n_classes)
        return self.identity(tokens), neighbours, self.ordinal(tokens)


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ------------------------------------------------------------------------------------------ vision


def preprocess(adapter: Adapter, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel patches and grid exactly as the adapter prepares them at eval time."""
    processed = adapter.image_processor(images=list(images), return_tensors="pt")
    return processed["pixel_values"].to(adapter.model.dtype), processed["image_grid_thw"]


def vision_parameters(adapter: Adapter) -> list[nn.Parameter]:
    return list(adapter.model.model.visual.parameters())


def vision_batch(source: TrainingSource, seed: int, step: int, batch_size: int) -> list[TrainingImage]:
    rng = step_rng(seed, "vision", step)
    return [source.sample(rng) for _ in range(batch_size)]


def vision_loss(
    adapter: Adapter,
    heads: VisionHeads,
    batch: list[TrainingImage],
    timer: StageTimer | None = None,
    neighbour_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of the identity, strip-ordinal and neighbour heads on the merger output, per LM-token cell."""
    pixel_values, grid_thw = preprocess(adapter, [example.image for example in batch])
    if timer:
        timer.lap("preprocess")
    tokens = adapter.model.model.visual(pixel_values, grid_thw=grid_thw).pooler_output
    identity_logits, neighbour_logits, ordinal_logits = heads(tokens)
    identity_labels = torch.from_numpy(np.stack([e.cell_labels.reshape(-1) for e in batch]).reshape(-1))
    neighbour_labels = torch.from_numpy(
        np.stack([e.neighbour_labels.reshape(-1, len(SIDES)) for e in batch]).reshape(-1, len(SIDES))
    )
    ordinal_labels = torch.from_numpy(np.stack([e.ordinal_labels.reshape(-1) for e in batch]).reshape(-1))
    identity = nn.functional.cross_entropy(identity_logits, identity_labels)
    in_line = ordinal_labels != IGNORE
    if in_line.any():
        ordinal = nn.functional.cross_entropy(ordinal_logits[in_line], ordinal_labels[in_line])
    else:
        ordinal = ordinal_logits.sum() * 0.0
    supervised = neighbour_labels >= 0
    if supervised.any():
        neighbours = nn.functional.cross_entropy(neighbour_logits[supervised], neighbour_labels[supervised])
    else:
        neighbours = identity_logits.sum() * 0.0
    loss = identity + ordinal + neighbour_weight * neighbours
    with torch.no_grad():
        identity_acc = float((identity_logits.argmax(-1) == identity_labels).float().mean())
        neighbour_hits = neighbour_logits.argmax(-1) == neighbour_labels
        neighbour_acc = float(neighbour_hits[supervised].float().mean()) if supervised.any() else float("nan")
        present = neighbour_labels > 0  # a real neighbour on that side (not 'none')
        neighbour_present_acc = float(neighbour_hits[present].float().mean()) if present.any() else float("nan")
        in_strip = in_line & (ordinal_labels > 0)
        ordinal_acc = float((ordinal_logits[in_strip].argmax(-1) == ordinal_labels[in_strip]).float().mean()) if in_strip.any() else float("nan")
    if timer:
        timer.lap("forward")
    return loss, {"identity_loss": float(identity.detach()), "ordinal_loss": float(ordinal.detach()),
                  "neighbour_loss": float(neighbours.detach()), "identity_acc": identity_acc,
                  "ordinal_acc": ordinal_acc, "neighbour_acc": neighbour_acc,
                  "neighbour_present_acc": neighbour_present_acc}


# ------------------------------------------------------------------------------------------ cache


@dataclass
class FeatureCache:
    """Frozen `vision.out` features (merger input) of the LM-stage training images, plus their questions."""

    features: torch.Tensor  # (images, patches, vision width)
    questions: list[list[tuple[str, str]]]
    n_objects: list[int]
    tasks: list[str]

    def __len__(self) -> int:
        return int(self.features.shape[0])


def cache_images(source: TrainingSource, seed: int, count: int) -> list[TrainingImage]:
    """The LM-stage training images, deterministic from the seed (image i from its own RNG)."""
    return [source.sample(step_rng(seed, "cache", i)) for i in range(count)]


@torch.no_grad()
def build_feature_cache(
    adapter: Adapter, images: list[TrainingImage], batch_size: int = 32, progress: Callable[[int], None] | None = None
) -> FeatureCache:
    visual = adapter.model.model.visual
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        pixel_values, grid_thw = preprocess(adapter, [e.image for e in batch])
        hidden = visual(pixel_values, grid_thw=grid_thw).last_hidden_state
        chunks.append(hidden.view(len(batch), PATCHES_PER_IMAGE, -1).clone())
        if progress:
            progress(len(batch))
    return FeatureCache(
        features=torch.cat(chunks),
        questions=[e.questions for e in images],
        n_objects=[e.n_objects for e in images],
        tasks=[e.task for e in images],
    )


# ------------------------------------------------------------------------------------------ language


@dataclass
class PromptEncoder:
    """Token ids of each prompt exactly as `Adapter.build_inputs` makes them (memoised per prompt)."""

    adapter: Adapter
    system: str = SYNTHETIC_SYSTEM_PROMPT
    _ids: dict[str, torch.Tensor] = field(default_factory=dict)
    _blank: Image.Image | None = None

    def ids(self, prompt: str) -> torch.Tensor:
        if prompt not in self._ids:
            if self._blank is None:
                self._blank = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), (255, 255, 255))
            inputs = self.adapter.build_inputs([[self._blank]], [prompt], system=self.system)
            self._ids[prompt] = inputs.model_kwargs["input_ids"][0].clone()
        return self._ids[prompt]

    def batch(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded input_ids, attention_mask, mm_token_type_ids and image_grid_thw for a batch."""
        rows = [self.ids(prompt) for prompt in prompts]
        length = max(len(row) for row in rows)
        pad = int(self.adapter.tokenizer.pad_token_id)
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, length - len(row) :] = row
            attention_mask[i, length - len(row) :] = 1
        merge = self.adapter.merge_size
        grid = torch.tensor([[1, TOKENS_PER_SIDE * merge, TOKENS_PER_SIDE * merge]] * len(rows))
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": (input_ids == self.adapter.image_token_id).to(torch.int32),
            "image_grid_thw": grid,
        }


def answer_ids(adapter: Adapter, answers: Sequence[str]) -> torch.Tensor:
    return torch.tensor([adapter.answer_token_id(answer) for answer in answers])


def lm_logits_from_features(
    adapter: Adapter, encoder: PromptEncoder, features: torch.Tensor, prompts: Sequence[str]
) -> torch.Tensor:
    """Next-token logits (batch, vocab) of the full model with `vision.out` given (merger + LM run)."""
    merged = adapter.model.model.visual.merger(features.reshape(-1, features.shape[-1]))
    per_image = torch.split(merged, TOKENS_PER_IMAGE)
    kwargs = encoder.batch(prompts)
    out = adapter.model(
        **kwargs,
        mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=per_image)},
        use_cache=False,
        logits_to_keep=1,
    )
    return out.logits[:, -1, :]


def language_batch(
    cache: FeatureCache, seed: int, step: int, batch_size: int, max_objects: int
) -> tuple[list[int], list[str], list[str]]:
    """Sample (image index, prompt, answer) for one step; `max_objects` is the curriculum level."""
    rng = step_rng(seed, "language", step)
    eligible = [i for i, n in enumerate(cache.n_objects) if n <= max_objects and cache.questions[i]]
    indices, prompts, answers = [], [], []
    for _ in range(batch_size):
        index = rng.choice(eligible)
        prompt, answer = rng.choice(cache.questions[index])
        indices.append(index)
        prompts.append(prompt)
        answers.append(answer)
    return indices, prompts, answers


def language_parameters(adapter: Adapter) -> list[nn.Parameter]:
    return list(adapter.model.model.visual.merger.parameters()) + list(adapter.model.model.language_model.parameters()) + list(adapter.model.lm_head.parameters())


def freeze_vision_blocks(adapter: Adapter) -> None:
    visual = adapter.model.model.visual
    for name, parameter in visual.named_parameters():
        parameter.requires_grad_(name.startswith("merger."))


# ------------------------------------------------------------------------------------------ shared prefix


@dataclass
class SharedPrefix:
    """The part of every training sequence up to the image's end, identical for all prompts.

    Training sequences are [system turn, user turn opening, image tokens, <|vision_end|>] + [question,
    assistant opening]. The first part does not depend on the question, so the LM runs it once per
    image and reuses its keys/values for every question about that image (right-padded question rows,
    read at each row's last real token). This is the same computation as the full left-padded forward
    pass at eval time (checked by a test), at about a third of the cost.
    """

    ids: torch.Tensor  # (prefix_len,)
    image_slots: torch.Tensor  # positions of image tokens inside the prefix
    positions: torch.Tensor  # (3, prefix_len) M-RoPE positions
    next_position: int  # text position of the first question token


def shared_prefix(adapter: Adapter, encoder: PromptEncoder, prompt: str) -> SharedPrefix:
    full = encoder.ids(prompt)
    vision_end = int(adapter.model.config.vision_end_token_id)
    cut = int((full == vision_end).nonzero()[-1]) + 1
    ids = full[:cut]
    kwargs = encoder.batch([prompt])
    positions, _ = adapter.model.model.get_rope_index(
        kwargs["input_ids"],
        image_grid_thw=kwargs["image_grid_thw"],
        attention_mask=kwargs["attention_mask"],
        mm_token_type_ids=kwargs["mm_token_type_ids"],
    )
    positions = positions[-3:, 0, :]  # (3, L): temporal, height, width
    return SharedPrefix(
        ids=ids,
        image_slots=(ids == adapter.image_token_id).nonzero().flatten(),
        positions=positions[:, :cut].clone(),
        next_position=int(positions[:, :cut].max()) + 1,
    )


def question_suffix(encoder: PromptEncoder, prefix: SharedPrefix, prompt: str) -> torch.Tensor:
    full = encoder.ids(prompt)
    cut = len(prefix.ids)
    if not torch.equal(full[:cut], prefix.ids):
        raise RuntimeError(f"prompt {prompt!r} does not share the training prefix")
    return full[cut:]


def lm_logits_shared_prefix(
    adapter: Adapter,
    encoder: PromptEncoder,
    prefix: SharedPrefix,
    features: torch.Tensor,
    image_of_question: Sequence[int],
    prompts: Sequence[str],
) -> torch.Tensor:
    """Next-token logits (questions, vocab): one prefix pass per image, one suffix pass per question."""
    from transformers import DynamicCache

    language_model = adapter.model.model.language_model
    n_images = features.shape[0]
    merged = adapter.model.model.visual.merger(features.reshape(-1, features.shape[-1]))
    merged = merged.view(n_images, TOKENS_PER_IMAGE, -1)
    embeds = language_model.embed_tokens(prefix.ids).unsqueeze(0).expand(n_images, -1, -1)
    slot_mask = torch.zeros(len(prefix.ids), dtype=torch.bool)
    slot_mask[prefix.image_slots] = True
    embeds = torch.where(slot_mask[None, :, None], torch.zeros_like(embeds), embeds)
    embeds = embeds.index_put((torch.arange(n_images)[:, None], prefix.image_slots[None, :]), merged.to(embeds.dtype), accumulate=True)
    cache = DynamicCache(config=language_model.config)
    language_model(
        inputs_embeds=embeds,
        position_ids=prefix.positions[:, None, :].expand(3, n_images, -1),
        cache=cache,
        use_cache=True,
    )
    select = torch.tensor(list(image_of_question), dtype=torch.long)
    for layer in cache.layers:
        layer.batch_select_indices(select)
    suffixes = [question_suffix(encoder, prefix, prompt) for prompt in prompts]
    lengths = torch.tensor([len(s) for s in suffixes])
    width = int(lengths.max())
    pad = int(adapter.tokenizer.pad_token_id)
    suffix_ids = torch.full((len(suffixes), width), pad, dtype=torch.long)
    suffix_mask = torch.zeros((len(suffixes), width), dtype=torch.long)
    for i, suffix in enumerate(suffixes):
        suffix_ids[i, : len(suffix)] = suffix
        suffix_mask[i, : len(suffix)] = 1
    attention_mask = torch.cat([torch.ones((len(suffixes), len(prefix.ids)), dtype=torch.long), suffix_mask], dim=1)
    positions = (prefix.next_position + torch.arange(width)).view(1, 1, -1).expand(3, len(suffixes), -1)
    out = language_model(input_ids=suffix_ids, position_ids=positions, attention_mask=attention_mask, cache=cache, use_cache=True)
    last = out.last_hidden_state[torch.arange(len(suffixes)), lengths - 1]
    return adapter.model.lm_head(last)


def language_batch_grouped(
    cache: FeatureCache, seed: int, step: int, images_per_step: int, max_objects: int
) -> tuple[list[int], list[int], list[str], list[str]]:
    """Sample images, then every question of each (images, question->image row, prompts, answers)."""
    rng = step_rng(seed, "language", step)
    eligible = [i for i, n in enumerate(cache.n_objects) if n <= max_objects and cache.questions[i]]
    images = rng.sample(eligible, min(images_per_step, len(eligible)))
    rows, prompts, answers = [], [], []
    for row, index in enumerate(images):
        for prompt, answer in cache.questions[index]:
            rows.append(row)
            prompts.append(prompt)
            answers.append(answer)
    return images, rows, prompts, answers

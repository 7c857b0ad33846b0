"""Offline byte-level BPE tokenizers for tiny test models and the bundled model.

The hub is unreachable, so every tiny checkpoint gets a tokenizer trained here in milliseconds. The
corpus repeats each word with and without a leading space, so every word we care about (all answer
words of all tasks) becomes a single token in both spellings, as real tokenizers do for common words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Words of SPEC's prompts and answers (all tasks); families add their own special tokens.
BASE_WORDS: tuple[str, ...] = tuple(
    """
    You are a helpful assistant respond in one token The the color of square to left right above below
    is a an object on floor using as reference point which side Answer with word or Is Describe image
    shape above below top bottom yes no Red Green Blue Black Brown Gray Yellow Orange Purple Pink White
    Square Circle Triangle Star Cross Heart apple bell bomb hat key orange pot rose cup ball tree car
    chair table armchair dog cat person bottle bowl book clock vase laptop plant bird horse bench
    user assistant system model
    left right above below first second third . , ? : !
    """.split()
)


def _corpus(words: Sequence[str], sentences: Iterable[str], repeats: int) -> list[str]:
    lines = list(sentences)
    for word in words:
        lines.extend([word, f" {word}", word.lower(), f" {word.lower()}"] * repeats)
    return lines


def train_tokenizer(
    special_tokens: Sequence[str],
    *,
    words: Sequence[str] = BASE_WORDS,
    sentences: Iterable[str] = (),
    vocab_size: int = 1024,
    chat_template: str | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    unk_token: str | None = None,
    extra_special_tokens: dict[str, str] | None = None,
    repeats: int = 20,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer where every word in `words` is one token (with or without space)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(words, sentences, repeats), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token or eos_token,
        unk_token=unk_token,
        extra_special_tokens=extra_special_tokens or {},
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.padding_side = "left"
    return tokenizer


def multi_token_words(tokenizer: PreTrainedTokenizerFast, words: Iterable[str]) -> list[str]:
    """The words (in both spellings) that are not a single token: should be empty for our vocabularies."""
    bad = []
    for word in words:
        for spelling in (word, f" {word}"):
            if len(tokenizer.encode(spelling, add_special_tokens=False)) != 1:
                bad.append(spelling)
    return bad

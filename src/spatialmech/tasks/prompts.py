"""Forced-choice two-object questions (COCO-spatial and the `scenes` stand-in), SPEC section 3.

Strict scoring asks each question with the options in both orders ("left or right" and "right or
left") and counts it correct only if both are answered correctly. Every forced-choice item carries
all its prompts in `item.meta["prompts"]` as {style: [natural order, swapped order]}, with
`item.prompt` = the Qwen style in natural order and `item.meta["prompt_swapped"]` its swapped twin.
"""

from __future__ import annotations

from typing import Any

from spatialmech.errors import UserInputError

OPTIONS: dict[str, tuple[str, str]] = {"horizontal": ("left", "right"), "vertical": ("above", "below")}
STYLES = ("qwen", "gemma")


def forced_choice_prompt(subject: str, reference: str, axis: str, style: str = "qwen", swapped: bool = False) -> str:
    """The question about where `subject` is relative to `reference`, options in natural or swapped order."""
    first, second = OPTIONS[axis][::-1] if swapped else OPTIONS[axis]
    if style == "qwen":
        return (
            f"Using the {reference} as the reference point, which side is the {subject} on? "
            f"Answer with one word: {first} or {second}."
        )
    if style == "gemma":
        if axis == "horizontal":
            return f"Is the {subject} to the {first} or to the {second} of the {reference}? Answer with one word."
        return f"Is the {subject} {first} or {second} the {reference}? Answer with one word."
    raise UserInputError(f"unknown prompt style {style!r}", f"use one of {', '.join(STYLES)}")


def forced_choice_fields(subject: str, reference: str, axis: str) -> dict[str, Any]:
    """Item fields shared by every forced-choice item: prompt, options, and all prompt variants."""
    prompts = {
        style: [forced_choice_prompt(subject, reference, axis, style, swapped) for swapped in (False, True)]
        for style in STYLES
    }
    return {
        "prompt": prompts["qwen"][0],
        "options": list(OPTIONS[axis]),
        "meta": {"prompts": prompts, "prompt_swapped": prompts["qwen"][1]},
    }


def strict_prompts(item: Any, style: str = "qwen") -> list[str]:
    """Both option orders of a forced-choice item's question in one style (for strict scoring)."""
    prompts = (item.meta or {}).get("prompts")
    if not prompts:
        raise UserInputError(f"item {item.id} is not a forced-choice question", "use a scenes or coco-spatial item")
    if style not in prompts:
        raise UserInputError(f"unknown prompt style {style!r}", f"use one of {', '.join(prompts)}")
    return list(prompts[style])

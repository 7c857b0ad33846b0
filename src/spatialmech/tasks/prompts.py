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


def forced_choice_prompt(
    subject: str, reference: str, axis: str, style: str = "qwen", swapped: bool = False, paper: bool = False
) -> str:
    """The question about where `subject` is relative to `reference`, options in natural or swapped order.

    `paper`: the authors' COCO wording (their coco_amplification/src/prompts.py), whose Qwen vertical
    question asks "where is the X located?"; without it the vertical question reuses "which side",
    the wording the bundled model's `scenes` stand-in was trained on.
    """
    first, second = OPTIONS[axis][::-1] if swapped else OPTIONS[axis]
    if style == "qwen":
        question = "where is the {s} located?" if paper and axis == "vertical" else "which side is the {s} on?"
        return (
            f"Using the {reference} as the reference point, {question.format(s=subject)} "
            f"Answer with one word: {first} or {second}."
        )
    if style == "gemma":
        if axis == "horizontal":
            return f"Is the {subject} to the {first} or to the {second} of the {reference}? Answer with one word."
        return f"Is the {subject} {first} or {second} the {reference}? Answer with one word."
    raise UserInputError(f"unknown prompt style {style!r}", f"use one of {', '.join(STYLES)}")


def forced_choice_fields(
    subject: str, reference: str, axis: str, style: str = "qwen", paper: bool = False
) -> dict[str, Any]:
    """Item fields shared by every forced-choice item: prompt and its swapped twin in `style`, options,
    and all prompt variants. Strict scoring needs both orders right, so chance is 1/4, not 1/2."""
    prompts = {
        name: [forced_choice_prompt(subject, reference, axis, name, swapped, paper) for swapped in (False, True)]
        for name in STYLES
    }
    if style not in prompts:
        raise UserInputError(f"unknown prompt style {style!r}", f"use one of {', '.join(STYLES)}")
    return {
        "prompt": prompts[style][0],
        "options": list(OPTIONS[axis]),
        "meta": {"prompts": prompts, "prompt_style": style, "prompt_swapped": prompts[style][1],
                 "strict_chance": 1.0 / len(OPTIONS[axis]) ** 2},
    }


# The authors' COCO prompt per model family (coco_amplification/src/prompts.py and gemma.py): Gemma3
# is asked the direct question ("Is the X to the left or to the right of the Y?", with no system
# message); Qwen2-VL and Pixtral the reference-point question. A per-family table of the protocol,
# kept with the prompts rather than in the adapters: the wording is the experiment's choice, not a
# fact of the architecture. Families not listed get the Qwen wording.
PAPER_PROMPT_STYLE: dict[str, str] = {"gemma3": "gemma"}


def prompt_style_for(family: str | None) -> str:
    return PAPER_PROMPT_STYLE.get(family or "", "qwen")


def strict_prompts(item: Any, style: str = "qwen") -> list[str]:
    """Both option orders of a forced-choice item's question in one style (for strict scoring)."""
    prompts = (item.meta or {}).get("prompts")
    if not prompts:
        raise UserInputError(f"item {item.id} is not a forced-choice question", "use a scenes or coco-spatial item")
    if style not in prompts:
        raise UserInputError(f"unknown prompt style {style!r}", f"use one of {', '.join(prompts)}")
    return list(prompts[style])

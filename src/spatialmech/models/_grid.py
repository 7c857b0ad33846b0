"""Which token grid to draw synthetic stimuli on, for any adapter (issue 17: the authors' per-family
grids, `--grid N`, and saying so when a processor cannot keep the size)."""

from __future__ import annotations

from typing import Any

from spatialmech.models.base import GridSpec


def fit_grid(adapter: Any, lowest: int, highest: int, pixels_per_token: int) -> GridSpec:
    """The grid to draw on when the processor keeps square images of `lowest`..`highest` tokens per
    side: the one asked for (`adapter.requested_grid`, from --grid), else the family's preset
    (`adapter.paper_preset`), else the largest; clamped to what the processor allows, saying so in
    `note` (an image drawn bigger would be resized and its objects would no longer sit on whole tokens)."""
    from spatialmech.tasks.geometry import PRESETS

    preset = PRESETS.get(adapter.paper_preset or "")
    if preset is not None and preset.pixels_per_token != pixels_per_token:
        preset = None
    wanted = adapter.requested_grid or (preset.tokens_per_side if preset is not None else highest)
    tokens = max(lowest, min(wanted, highest))
    note = None
    if tokens != wanted:
        asked = "--grid" if adapter.requested_grid else f"the {adapter.paper_preset} preset's"
        note = (f"this {adapter.family} model's image processor keeps square inputs of {lowest}..{highest} "
                f"tokens per side, not {asked} {wanted}; drawing on {tokens}x{tokens} tokens of {pixels_per_token} px")
    return GridSpec(tokens, pixels_per_token, preset=adapter.paper_preset, family=adapter.family, note=note)

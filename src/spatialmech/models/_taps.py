"""Identity "tap" modules that show a batched image-feature module's input/output as (rows, hidden).

`HookPoint` promises `image_tokens` sites as 2-D (rows, hidden) tensors in LM order, but many
projectors work on (n_views, tokens, hidden) batches (LLaVA, Pixtral, Idefics3, InternVL). Rather than
re-implement their forward passes, we leave the module untouched and add two permanent hooks on it
that route its first input and its output through identity modules, flattened to rows. The engine
hooks the taps like any module: reading gives the rows, writing replaces them, and the permanent
hooks fold the rows back into the module's shape. The taps hold no parameters and are not children
of the model, so checkpoints and state dicts are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# For inputs whose rows must be regrouped (e.g. patches grouped per LM token before a pixel shuffle):
# given the module input's shape, the order of its token axis (dim -2) that lists the rows grouped.
RowOrder = Callable[[torch.Size], torch.Tensor]


class FlatTaps:
    """Taps on `module`: `self.input` sees its first positional input, `self.output` its output, each
    as (rows, hidden) with the leading axes flattened (input rows optionally regrouped by `input_order`)."""

    def __init__(self, module: nn.Module, input_order: RowOrder | None = None):
        self.input = nn.Identity()
        self.output = nn.Identity()
        self.input_order = input_order
        self.handles = [
            module.register_forward_pre_hook(self._through_input_tap),
            module.register_forward_hook(self._through_output_tap),
        ]

    @classmethod
    def on(cls, module: nn.Module, input_order: RowOrder | None = None) -> FlatTaps:
        """The taps of `module`, installed once however many adapters wrap the same model."""
        taps = getattr(module, "_spatialmech_taps", None)
        if taps is None:
            taps = cls(module, input_order)
            object.__setattr__(module, "_spatialmech_taps", taps)  # plain attribute, not a submodule
        return taps

    def _through_input_tap(self, module: nn.Module, args: tuple) -> tuple:
        value = args[0]
        if self.input_order is None:
            new = self.input(value.reshape(-1, value.shape[-1])).reshape(value.shape)
        else:
            order = self.input_order(value.shape).to(value.device)
            rows = self.input(value.index_select(-2, order).reshape(-1, value.shape[-1]))
            new = torch.empty_like(value)
            new[..., order, :] = rows.reshape(*value.shape[:-2], order.numel(), value.shape[-1])
        return (new, *args[1:])

    def _through_output_tap(self, module: nn.Module, args: tuple, output: Any) -> Any:
        value = output[0] if isinstance(output, tuple) else output
        new = self.output(value.reshape(-1, value.shape[-1])).reshape(value.shape)
        return (new, *output[1:]) if isinstance(output, tuple) else new


def pixel_shuffle_groups(patches_per_side: int, factor: int) -> torch.Tensor:
    """Order of a raster (side x side) patch sequence that lists, for each merged token in raster order,
    its factor x factor patches row-major: the groups a pixel shuffle folds into one LM token."""
    tokens_per_side = patches_per_side // factor
    index = torch.arange(patches_per_side * patches_per_side).reshape(
        tokens_per_side, factor, tokens_per_side, factor
    )
    return index.permute(0, 2, 1, 3).reshape(-1)

"""What can be done to a site during a forward: patch, ablate, steer.

Every intervention names a site (SPEC's names), LM positions per batch row, and what the values at
those positions become. They act on the prompt (prefill) pass only: a forward whose sequence length
is not the prompt's (a generation step with a KV cache) passes through untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from spatialmech.engine.positions import PositionsLike
from spatialmech.errors import UserInputError

SteerFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Patch:
    """Write given values at (site, positions): `values[row]` is (n_positions * rows_per_lm_token, hidden).

    The values usually come from another run (`Engine.cache`), possibly from other positions of it:
    a region A -> region B patch is `Patch(site, positions_B_in_target, cached_values_at_A)`.
    """

    site: str
    positions: PositionsLike
    values: Sequence[torch.Tensor]

    def new_values(self, row: int, current: torch.Tensor) -> torch.Tensor:
        return _checked(self, row, self.values[row], current)


@dataclass(frozen=True)
class Ablate:
    """Replace (site, positions) by other values: another input's (`mode="values"`, per-row tensors as
    in `Patch`), a mean vector (`mode="mean"`, `values` is one (hidden,) tensor), or zeros (`"zero"`)."""

    site: str
    positions: PositionsLike
    mode: Literal["values", "mean", "zero"] = "zero"
    values: Sequence[torch.Tensor] | torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("values", "mean", "zero"):
            raise UserInputError(f"unknown ablation mode {self.mode!r}", "use 'values', 'mean' or 'zero'")
        if self.mode != "zero" and self.values is None:
            raise UserInputError(f"ablation mode {self.mode!r} needs values", "pass values= (cached activations or a mean vector)")

    def new_values(self, row: int, current: torch.Tensor) -> torch.Tensor:
        if self.mode == "zero":
            return torch.zeros_like(current)
        if self.mode == "mean":
            mean = torch.as_tensor(self.values)
            if mean.shape != current.shape[-1:]:
                raise UserInputError(
                    f"mean ablation vector has shape {tuple(mean.shape)}, site {self.site} has hidden size {current.shape[-1]}",
                    "pass the mean over the site's hidden dimension",
                )
            return mean.to(current.device, current.dtype).expand_as(current)
        return _checked(self, row, self.values[row], current)  # type: ignore[index]


@dataclass(frozen=True)
class Steer:
    """Replace (site, positions) by `fn(values)`; `fn` maps (n, hidden) -> (n, hidden).

    Build `fn` with `amplify_projection` (the paper's ordering amplification) or `add_direction`.
    """

    site: str
    positions: PositionsLike
    fn: SteerFn

    def new_values(self, row: int, current: torch.Tensor) -> torch.Tensor:
        out = self.fn(current)
        if not isinstance(out, torch.Tensor) or out.shape != current.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserInputError(
                f"steering function on {self.site} returned {got} for input {tuple(current.shape)}",
                "return a tensor of the same shape as its input",
            )
        return out.to(current.dtype)


Intervention = Patch | Ablate | Steer


def _checked(intervention: Intervention, row: int, values: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    if values.shape != current.shape:
        raise UserInputError(
            f"{type(intervention).__name__} on {intervention.site}, row {row}: values have shape {tuple(values.shape)} "
            f"but the selected positions hold {tuple(current.shape)}",
            "give one value row per selected position (times rows_per_lm_token for vision.out)",
        )
    return values.to(current.device, current.dtype)


def amplify_projection(directions: torch.Tensor, alpha: float) -> SteerFn:
    """SPEC's ordering amplification: h += alpha * (h W / ||W_col||^2) W^T for W = directions (hidden, k).

    Each row's own component along every column of W is scaled by (1 + alpha) (exactly so when the
    columns are orthogonal); computed in float32 and cast back.
    """
    weights = torch.as_tensor(directions).float()
    if weights.dim() == 1:
        weights = weights[:, None]
    if weights.dim() != 2:
        raise UserInputError(f"amplification directions have shape {tuple(weights.shape)}", "pass W as (hidden, k)")
    col_norm_sq = (weights * weights).sum(dim=0)
    if bool((col_norm_sq == 0).any()):
        raise UserInputError("an amplification direction is all zeros", "drop zero columns from W")

    def amplify(h: torch.Tensor) -> torch.Tensor:
        w = weights.to(h.device)
        coeff = (h.float() @ w) / col_norm_sq.to(h.device)
        return (h.float() + alpha * coeff @ w.T).to(h.dtype)

    return amplify


def add_direction(direction: torch.Tensor, alpha: float) -> SteerFn:
    """The paper's text variant: h += alpha * v (v as given, not normalised)."""
    vector = torch.as_tensor(direction).float().reshape(-1)

    def add(h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != vector.numel():
            raise UserInputError(
                f"steering direction has {vector.numel()} entries, the site has hidden size {h.shape[-1]}",
                "pass a direction of the site's hidden size",
            )
        return (h.float() + alpha * vector.to(h.device)).to(h.dtype)

    return add

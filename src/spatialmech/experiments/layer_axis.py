"""The layer axis of every patching experiment, as the authors' (their `last_token_exp/src/patch.py`
and `plot.py`): L+1 points, "emb" = the input to layer 0 (`lm.resid_pre.0`), then label l = the
*output* of layer l (`lm.resid_post.{l}`), so the paper's "c2 at layers 20-22" reads the same on our
curves. `--layers` picks which layer outputs are swept (0..L-1); "emb" is always added
(`include_embeddings`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spatialmech.engine import Engine
from spatialmech.errors import UserInputError
from spatialmech.plotting import EMBEDDINGS_LABEL

EMBEDDINGS_SITE = "lm.resid_pre.0"  # the layer axis' "emb" point: the input to layer 0
LAYER_SITE = "lm.resid_post.{l}"  # layer label l: the output of layer l


def layer_labels(config: Mapping[str, Any]) -> list[Any]:
    """["emb", l0, l1, ...]: the labels of a sweep's rows (see the module docstring)."""
    return ([EMBEDDINGS_LABEL] if config.get("include_embeddings", True) else []) + [int(x) for x in config["layers"]]


@dataclass
class LayerSweep:
    """Patched logits (n_labels, batch, vocab) in `layer_labels` order, and the unpatched runs."""

    labels: list[Any]
    logits: torch.Tensor
    clean_logits: torch.Tensor
    source_logits: torch.Tensor
    method: str


def sweep_layer_axis(
    engine: Engine,
    target: Any,
    source: Any,
    target_positions: Any,
    source_positions: Any,
    *,
    layers: Sequence[int],
    include_embeddings: bool = True,
    target_interventions: Sequence[Any] = (),
    source_interventions: Sequence[Any] = (),
) -> LayerSweep:
    """Patch source values into the target at "emb" (`lm.resid_pre.0`) and at the output of every layer
    in `layers` (`lm.resid_post.{l}`): the one place the patching experiments' layer axis is made."""
    if not include_embeddings and not layers:
        raise UserInputError("a patching sweep with no layers and no embeddings has nothing to patch",
                             "pass --layers or keep the embeddings")
    parts, labels, method = [], [], "none"
    runs: Any = None
    for site, chosen, names in (("lm.resid_pre.{l}", [0] if include_embeddings else [], [EMBEDDINGS_LABEL]),
                                (LAYER_SITE, [int(x) for x in layers], [int(x) for x in layers])):
        if not chosen:
            continue
        # The engine's fast sweep recomputes from the first layer after the patch; patching only the last
        # layer's output leaves nothing to recompute, which it does not handle: one plain forward instead.
        only_last = site == LAYER_SITE and chosen == [engine.adapter.num_layers - 1]
        result = engine.patch_sweep(
            target, source, target_positions, source_positions, site=site, layers=chosen, keep_logits=True,
            target_interventions=target_interventions, source_interventions=source_interventions,
            method="naive" if only_last else "auto",
        )
        parts.append(result.logits)
        labels.extend(names)
        runs = runs or result
        method = result.method
    logits = torch.cat([part.to(runs.clean_logits.device) for part in parts])
    return LayerSweep(labels, logits, runs.clean_logits, runs.source_logits, method)

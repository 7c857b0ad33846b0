"""Plain forwards run once per process: the logits of a batch seen before are served again (issue 21).

Steps of one plan ask the model the very same batches: ablate-vision's baseline condition is the
behaviour steps' scoring of the same items, amplify's baseline both option orders of behavior-scenes'.
A plain forward (no intervention, nothing recorded) is a function of the batch's model inputs and the
weights, so its last-position logits are kept per batch, keyed by a digest of every input tensor
(token ids, masks, pictures or their encoder outputs, grids), and a batch with the same digest gets
them back: the very numbers the same forward gives, since the same batch runs the same kernels.

Only with sharing on (`spatialmech.sharing`); bounded in bytes (SPATIALMECH_LOGITS_MEMO_MB, default
512; 0 turns it off); one memo per model object, forgotten when its weights change in place. Hooks you
register on the model yourself are not part of the key: give interventions to the engine, or turn
sharing off.
"""

from __future__ import annotations

import hashlib

from spatialmech.engine.memo import BoundedMemo, feed_digest
from spatialmech.models.base import BatchInputs, VLMAdapter

ENV_LIMIT = "SPATIALMECH_LOGITS_MEMO_MB"
DEFAULT_LIMIT_MB = 512


def batch_key(inputs: BatchInputs, path: str) -> str:
    """A digest of every model input of the batch and of how it is run (`path`)."""
    digest = hashlib.sha1(path.encode())
    feed_digest(digest, inputs.model_kwargs)
    return digest.hexdigest()


class LogitsMemo(BoundedMemo):
    """Last-position logits (batch, vocab) of plain batches of one model, by `batch_key`."""

    def __init__(self) -> None:
        super().__init__(ENV_LIMIT, DEFAULT_LIMIT_MB, "logits memo")


def logits_memo(adapter: VLMAdapter) -> LogitsMemo:
    """The memo of `adapter`'s model (one per model object, shared by every engine on it)."""
    return LogitsMemo.of_model(adapter.model)

"""`Engine`: the one object experiments use to run, record, intervene on and sweep a VLM."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from spatialmech.engine.activations import Activations, ActivationStore, ActivationWriter
from spatialmech.engine.hooks import HookSession
from spatialmech.engine.interventions import Intervention
from spatialmech.engine.logits_memo import batch_key, logits_memo
from spatialmech.engine.positions import PositionsLike
from spatialmech.engine.prefix import (
    PrefixStats,
    Unshareable,
    capture_layer_inputs,
    interventions_upstream,
    shared_logits,
)
from spatialmech.engine.scoring import TokenSet, answer_probabilities
from spatialmech.engine.sweep import PatchSweep, SweepMethod, SweepResult, run_patch_sweep
from spatialmech.errors import UserInputError
from spatialmech.models.base import BatchInputs, VLMAdapter
from spatialmech.sharing import sharing_default

# Tokens of stacked patch copies per decoder-layer call in a sweep. On CPU a cache-sized call is ~1.5x
# faster than one huge call (measured: strip sweep, hidden 1024, 2 threads: 31 s at 2400 vs 48 s at
# 32768 tokens); accelerators want big calls.
CPU_TOKENS_PER_CALL = 4096
ACCELERATOR_TOKENS_PER_CALL = 32768

# Recorded alone, these sites need no decoder layer (Engine.cache stops before them).
ENCODER_ONLY = ("vision.out", "projector.out")

# Where to record: one positions value for every site, or site -> positions.
RecordSpec = Mapping[str, PositionsLike]


@dataclass
class RunOutput:
    """Last-position logits (batch, vocab) and what was recorded."""

    logits: torch.Tensor
    activations: Activations


class Engine:
    """Runs an adapter's model with interventions and recordings; see the package docstring."""

    def __init__(self, adapter: VLMAdapter, share_prefix: bool | None = None):
        """`share_prefix`: run rows' common prefixes once (exact; see `engine.prefix`); None reads the
        SPATIALMECH_PREFIX_SHARING environment variable (on unless it is 0)."""
        if not isinstance(adapter, VLMAdapter):
            raise UserInputError(f"Engine needs a VLMAdapter, got {type(adapter).__name__}", "load a model with spatialmech.models.load_model")
        self.adapter = adapter
        self.share_prefix = sharing_default() if share_prefix is None else bool(share_prefix)
        self.prefix_stats = PrefixStats()

    # ------------------------------------------------------------------ single forwards
    @contextmanager
    def hooks(
        self,
        inputs: BatchInputs,
        interventions: Sequence[Intervention] = (),
        record: RecordSpec | None = None,
        record_device: torch.device | str | None = "cpu",
    ):
        """Context in which any forward of `inputs` gets the interventions (prompt pass only) and
        records `record`; yields the `HookSession` (`.activations()` after the forward)."""
        with HookSession(self.adapter, inputs, interventions, record, record_device) as session:
            yield session

    def run(
        self,
        inputs: BatchInputs,
        interventions: Sequence[Intervention] = (),
        record: RecordSpec | None = None,
        record_device: torch.device | str | None = "cpu",
    ) -> RunOutput:
        """One forward: last-position logits plus the recorded sites. Without recordings, rows that share
        a prefix run it once when `share_prefix` is on and the interventions act before layer 0
        (`self.prefix_stats` says how often it shared, and why not when it did not). A plain batch seen
        before (no interventions, no recordings) gets its logits back from the model's logits memo."""
        if self.share_prefix and not record and not interventions:
            return RunOutput(self._memoised_logits(inputs), Activations({}))
        return self._run(inputs, interventions, record, record_device)

    def _run(self, inputs: BatchInputs, interventions: Sequence[Intervention], record: RecordSpec | None,
             record_device: torch.device | str | None) -> RunOutput:
        if self.share_prefix and not record and inputs.batch_size > 1 and interventions_upstream(interventions):
            try:
                return RunOutput(shared_logits(self.adapter, inputs, interventions, self.prefix_stats), Activations({}))
            except Unshareable as exc:  # the capture pass itself could not run: plain forward
                self.prefix_stats.fallbacks[str(exc)] += 1
        with self.hooks(inputs, interventions, record, record_device) as session:
            logits = self.adapter.forward(inputs)
        session.check_fired()
        return RunOutput(logits, session.activations())

    def _memoised_logits(self, inputs: BatchInputs) -> torch.Tensor:
        """A plain batch's logits, computed once per model and process (`engine.logits_memo`)."""
        memo = logits_memo(self.adapter)
        limit = memo.limit()
        key = None
        if limit:
            memo.for_weights(self.adapter.model)
            key = batch_key(inputs, f"shared-prefix:{self.adapter.attention_implementation}")  # the kernel changes rounding
            kept = memo.get(key)
            if kept is not None:
                return kept.clone()
        logits = self._run(inputs, (), None, "cpu").logits
        if key is not None:
            memo.put(key, logits.clone(), limit)
        return logits

    def encode_images(self, inputs: BatchInputs) -> BatchInputs:
        """`inputs` with the vision tower + projector run once, for many forwards of the same pictures
        (`projector.out` interventions and recordings still work on them; `vision.out` does not)."""
        return self.adapter.encode_images(inputs)

    def logits(self, inputs: BatchInputs, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
        """Last-position logits (batch, vocab) with the interventions applied."""
        return self.run(inputs, interventions).logits

    def answer_probabilities(
        self, inputs: BatchInputs, answers: Sequence[Sequence[TokenSet]], interventions: Sequence[Intervention] = ()
    ) -> torch.Tensor:
        """(batch, n_answers): P of each tracked answer, summed over its spelling variants."""
        return answer_probabilities(self.logits(inputs, interventions), answers)

    def cache(
        self,
        inputs: BatchInputs,
        sites: Sequence[str] | RecordSpec,
        positions: PositionsLike | None = None,
        interventions: Sequence[Intervention] = (),
        record_device: torch.device | str | None = "cpu",
    ) -> Activations:
        """Record `sites` at `positions` (per row; or pass a dict site -> positions as `sites`). Encoder
        sites alone (`vision.out`, `projector.out`) stop the forward before the LM's layers."""
        spec = _record_spec(sites, positions)
        if self.share_prefix and all(s in ENCODER_ONLY for s in spec) and interventions_upstream(interventions):
            try:
                _, session = capture_layer_inputs(self.adapter, inputs, interventions, spec, stop=True, record_device=record_device)
            except Unshareable:
                pass
            else:
                session.check_fired()
                return session.activations()
        return self.run(inputs, interventions, spec, record_device).activations

    def generate(
        self, inputs: BatchInputs, interventions: Sequence[Intervention] = (), max_new_tokens: int = 8
    ) -> torch.Tensor:
        """Greedy continuation (batch, new tokens); interventions act on the prompt pass only."""
        with self.hooks(inputs, interventions), torch.no_grad():
            out = self.adapter.model.generate(
                **inputs.model_kwargs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.adapter.tokenizer.pad_token_id
            )
        return out[:, inputs.seq_len :]

    # ------------------------------------------------------------------ many items, streamed to disk
    def cache_to_disk(
        self,
        batches: Iterable[BatchInputs],
        sites: Sequence[str] | RecordSpec | Callable[[BatchInputs], RecordSpec],
        folder: str | os.PathLike,
        positions: Callable[[BatchInputs], PositionsLike] | None = None,
        shard_items: int = 256,
        interventions: Callable[[BatchInputs], Sequence[Intervention]] | None = None,
    ) -> ActivationStore:
        """Record sites for every batch of an iterable (built lazily by the caller) into a safetensors
        store at `folder`; only the current batch and one shard's worth of items are in memory.

        `positions(batch)` (or `sites(batch)` returning site -> positions) selects what to keep. An
        existing store is appended to: skip `ActivationStore(folder).num_items` items to resume.
        """
        with ActivationWriter(folder, shard_items) as writer:
            iterator = iter(batches)
            while (inputs := next(iterator, None)) is not None:
                spec = sites(inputs) if callable(sites) else _record_spec(sites, None if positions is None else positions(inputs))
                extra = interventions(inputs) if interventions is not None else ()
                writer.add(self.run(inputs, extra, spec, record_device="cpu").activations)
                # drop this batch before the iterator builds the next one: never two batches in memory
                del inputs, spec, extra
        return ActivationStore(folder)

    # ------------------------------------------------------------------ sweeps
    def patch_sweep(
        self,
        target: BatchInputs,
        source: BatchInputs,
        target_positions: PositionsLike,
        source_positions: PositionsLike | None = None,
        *,
        site: str = "lm.resid_pre.{l}",
        layers: Sequence[int] | None = None,
        answers: Sequence[Sequence[TokenSet]] | None = None,
        keep_logits: bool = False,
        target_interventions: Sequence[Intervention] = (),
        source_interventions: Sequence[Intervention] = (),
        method: SweepMethod = "auto",
        max_tokens_per_call: int | None = None,
    ) -> SweepResult:
        """For each layer l: patch the source run's `site(l)` values at `source_positions` into the target
        run at `target_positions` (row b of target pairs with row b of source) and read the last position.

        Equals one patched forward per layer (`method="naive"`) to float tolerance, but computes layers
        below l once, and only the last token when only the last position is patched.
        `max_tokens_per_call` caps how many tokens go through a layer at once: patch copies of several
        layers are stacked up to it, and a batch whose recomputed suffix alone exceeds it is split into
        chunks of rows, so the sweep's activation memory is bounded whatever the batch size (default:
        4096 on CPU, where cache-sized calls are fastest, 32768 on accelerators).
        """
        if max_tokens_per_call is None:
            max_tokens_per_call = CPU_TOKENS_PER_CALL if self.adapter.device.type == "cpu" else ACCELERATOR_TOKENS_PER_CALL
        sweep = PatchSweep(
            self.adapter, target, source, site, target_positions, source_positions, layers,
            target_interventions, source_interventions, max_tokens_per_call,
        )
        return run_patch_sweep(sweep, method, answers, keep_logits)


def _record_spec(sites: Sequence[str] | RecordSpec, positions: PositionsLike | None) -> dict[str, Any]:
    if isinstance(sites, Mapping):
        if positions is not None:
            raise UserInputError("positions given twice (in the sites dict and as positions=)", "pass one of them")
        return dict(sites)
    if isinstance(sites, str):
        sites = [sites]
    if positions is None:
        raise UserInputError("no positions to record at", "pass positions= (e.g. image_positions(inputs))")
    return {site: positions for site in sites}

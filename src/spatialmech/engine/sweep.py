"""Layer-by-layer patching sweeps that reuse shared computation (SPEC section 5).

For a patch at layer l, the layers below l see exactly the clean (target) run, so the sweep runs the
target once, keeps each decoder layer's input and the keyword arguments it was called with (masks,
rotary embeddings, ...), and for every layer l runs only layers l..L-1 from the patched residual,
then the final norm and LM head at the last position ("resume"). Patches of different layers are
stacked along the batch as they start ("staggered"), so each decoder layer is called once per group.

Positions before the first patched one are unchanged at every layer when attention is causal, so
the engine recomputes only the suffix from the first patched position, against the clean run's cached
keys/values for the prefix ("suffix"; for a last-token patch that is one token per layer, a decode
step). It does so only after checking, from the masks the model itself built, that no earlier position
can see a later one (Gemma's bidirectional image blocks, sliding windows and padding all show there),
and that the KV cache holds the whole prompt; otherwise it resumes full sequences ("resume").

Both paths must equal the naive loop (one patched forward per layer) to 1e-5; tests check it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from spatialmech.engine.activations import Activations
from spatialmech.engine.call_args import (
    CACHE_KWARGS,
    Unprovable,
    layer_output,
    prefix_blind_to_suffix,
    repeat_batch,
    select_rows,
    suffix_step_kwargs,
)
from spatialmech.engine.hooks import HookSession, LayerCalls
from spatialmech.engine.interventions import Intervention, Patch
from spatialmech.engine.kv import KVRecorded, KVRecorder, PrefixKV, whole_prompt_prefix
from spatialmech.engine.positions import PositionsLike, as_positions
from spatialmech.engine.scoring import TokenSet, answer_probabilities
from spatialmech.errors import UserInputError
from spatialmech.models.base import BatchInputs, VLMAdapter

SweepMethod = Literal["auto", "suffix", "resume", "naive"]


@dataclass
class SweepResult:
    """Per layer, the patched run's last-position output.

    layers:        the swept layers (index into the first axis below).
    probabilities: (n_layers, batch, n_answers) P of each tracked answer (summed over its spellings),
                   when `answers` were given.
    logits:        (n_layers, batch, vocab) when `keep_logits`.
    clean_logits / source_logits: (batch, vocab) of the unpatched target and source runs (with their
                   own interventions), e.g. to keep only pairs the model gets right on both.
    method:        how it was computed ("suffix", "resume" or "naive").
    """

    site: str
    layers: list[int]
    probabilities: torch.Tensor | None
    logits: torch.Tensor | None
    clean_logits: torch.Tensor
    source_logits: torch.Tensor
    method: str


def layer_site(template: str, layer: int) -> str:
    return template.replace("{l}", str(layer))


def _resume_start(template: str, layer: int) -> int | None:
    """First decoder layer to recompute for a patch at this site, or None if the site is not residual."""
    if template == "lm.resid_pre.{l}":
        return layer
    if template == "lm.resid_post.{l}":
        return layer + 1
    return None


class PatchSweep:
    """One sweep over a batch of (target, source) pairs; see `Engine.patch_sweep` for the contract."""

    def __init__(
        self,
        adapter: VLMAdapter,
        target: BatchInputs,
        source: BatchInputs,
        site: str,
        target_positions: PositionsLike,
        source_positions: PositionsLike | None,
        layers: Sequence[int] | None,
        target_interventions: Sequence[Intervention],
        source_interventions: Sequence[Intervention],
        max_tokens_per_call: int,
    ):
        if "{l}" not in site or not site.startswith("lm."):
            raise UserInputError(f"sweep site {site!r} has no layer placeholder", "use e.g. 'lm.resid_pre.{l}' or 'lm.resid_post.{l}'")
        if target.batch_size != source.batch_size:
            raise UserInputError(
                f"{target.batch_size} targets but {source.batch_size} sources", "pass one source per target (pairs)"
            )
        self.adapter = adapter
        self.target, self.source, self.site = target, source, site
        self.num_layers = adapter.num_layers
        self.layers = list(range(self.num_layers)) if layers is None else [int(x) for x in layers]
        for layer in self.layers:
            adapter.parse_layer_site(layer_site(site, layer))  # validates the layer range
        self.target_positions = as_positions(target_positions, target, "target positions")
        self.source_positions = as_positions(
            target_positions if source_positions is None else source_positions, source, "source positions"
        )
        for row, (t, s) in enumerate(zip(self.target_positions, self.source_positions)):
            if t.numel() != s.numel():
                raise UserInputError(
                    f"pair {row}: {t.numel()} target positions but {s.numel()} source positions",
                    "patch region A -> region B with the same number of positions in both",
                )
        self.target_interventions = list(target_interventions)
        self.source_interventions = list(source_interventions)
        self.max_tokens_per_call = max(1, int(max_tokens_per_call))

    # ------------------------------------------------------------------ shared pieces
    def source_values(self) -> tuple[torch.Tensor, Activations]:
        """One source forward recording the swept site of every layer at the source positions."""
        record = {layer_site(self.site, layer): self.source_positions for layer in self.layers}
        with HookSession(self.adapter, self.source, self.source_interventions, record, record_device=None) as session:
            logits = self.adapter.forward(self.source)
        session.check_fired()
        return logits, session.activations()

    def _patch(self, layer: int, values: Activations) -> Patch:
        return Patch(layer_site(self.site, layer), self.target_positions, values[layer_site(self.site, layer)])

    def choose(self, method: str) -> str:
        starts = [_resume_start(self.site, layer) for layer in self.layers]
        if method == "naive":
            return method
        if any(s is None for s in starts) or not self._interventions_upstream(min(starts)):
            if method != "auto":
                raise UserInputError(
                    f"method {method!r} needs a residual sweep site with target interventions upstream of the swept layers",
                    "use method='auto' (falls back to the naive loop)",
                )
            return "naive"
        if method == "suffix" and self.suffix_start() == 0:
            raise UserInputError("method 'suffix' needs a patch that leaves position 0 alone", "use method='auto' or 'resume'")
        if method == "auto":
            return "suffix" if self.suffix_start() > 0 else "resume"
        return method

    def suffix_start(self) -> int:
        """First patched position over the batch: everything before it is the clean run at every layer."""
        firsts = [int(p.min()) for p in self.target_positions if p.numel()]
        return min(firsts) if firsts else self.target.seq_len - 1

    def _interventions_upstream(self, first_start: int) -> bool:
        """Target interventions must act before the first resumed layer (then the cached inputs hold them)."""
        for intervention in self.target_interventions:
            if not intervention.site.startswith("lm."):
                continue
            kind, layer = self.adapter.parse_layer_site(intervention.site)
            if layer > first_start or (layer == first_start and kind != "resid_pre"):
                return False
        return True

    # ------------------------------------------------------------------ naive: one patched forward per layer
    def run_naive(self, values: Activations) -> tuple[torch.Tensor, list[torch.Tensor]]:
        clean = self._forward(self.target, self.target_interventions)
        per_layer = [self._forward(self.target, [*self.target_interventions, self._patch(layer, values)]) for layer in self.layers]
        return clean, per_layer

    def _forward(self, inputs: BatchInputs, interventions: Sequence[Intervention]) -> torch.Tensor:
        with HookSession(self.adapter, inputs, interventions) as session:
            logits = self.adapter.forward(inputs)
        session.check_fired()
        return logits

    # ------------------------------------------------------------------ clean target run, keeping layer inputs
    def clean_run(self, first_start: int, keep_from: int) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, dict], torch.Tensor, Any]:
        """Target forward (with its interventions) that keeps, for layers >= first_start, each layer's input
        (positions keep_from.. only) and call kwargs, and the last layer's output; with keep_from > 0 it
        also keeps the KV cache. Returns (logits, inputs, kwargs, last_output, kv_cache)."""
        use_cache = keep_from > 0
        with HookSession(self.adapter, self.target, self.target_interventions) as session, LayerCalls(
            self.adapter, first_start, keep_from
        ) as calls:
            out = self.adapter.forward_output(self.target, use_cache=use_cache)
        session.check_fired()
        logits = out.logits[:, -1, :]
        kv = None
        if use_cache:
            kv = next((kw[name] for kw in calls.kwargs.values() for name in CACHE_KWARGS if kw.get(name) is not None), None)
            if kv is None:
                kv = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        assert calls.last_output is not None
        self._check_final_logits(calls.last_output[:, -1], logits)
        return logits, calls.inputs, calls.kwargs, calls.last_output, kv

    def _check_final_logits(self, hidden: torch.Tensor, logits: torch.Tensor) -> None:
        with torch.no_grad():
            mine = self.adapter.final_logits(hidden).to(logits.device)  # the LM head may sit on another GPU
        scale = 1.0 + float(logits.abs().max())
        tolerance = 1e-4 if logits.dtype == torch.float32 else 2e-2
        if mine.shape != logits.shape or float((mine.float() - logits.float()).abs().max()) > tolerance * scale:
            raise RuntimeError(
                f"{type(self.adapter).__name__}.final_logits does not reproduce the model's logits; "
                "override it in the adapter (final norm, LM head, any soft-capping)"
            )

    # ------------------------------------------------------------------ resume / suffix
    def run_fast(self, values: Activations, method: str) -> tuple[torch.Tensor, list[torch.Tensor], str]:
        starts = {layer: _resume_start(self.site, layer) for layer in self.layers}
        first = min(starts.values())
        offset = self.suffix_start() if method == "suffix" else 0
        clean_logits, layer_inputs, layer_kwargs, last_output, kv = self.clean_run(min(first, self.num_layers - 1), offset)
        seq_len, batch = self.target.seq_len, self.target.batch_size

        if offset:
            try:
                step_kwargs = self._suffix_kwargs(layer_kwargs, kv, first, seq_len, offset)
            except Unprovable:
                return self.run_fast(values, "resume")
        else:
            step_kwargs = layer_kwargs

        suffix_len = seq_len - offset
        # Rows per call: whole batch when it fits the token cap, else chunks of rows (cache-sized calls).
        rows_per_call = batch if batch * suffix_len <= self.max_tokens_per_call else max(1, self.max_tokens_per_call // suffix_len)
        chunks = [slice(r0, min(batch, r0 + rows_per_call)) for r0 in range(0, batch, rows_per_call)]
        try:
            chunk_kwargs = [step_kwargs] if len(chunks) == 1 else [self._row_kwargs(step_kwargs, rows) for rows in chunks]
        except Unprovable:  # some argument cannot be split by rows: one chunk
            chunks, chunk_kwargs = [slice(0, batch)], [step_kwargs]
        results: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        with torch.no_grad():
            for rows, kwargs in zip(chunks, chunk_kwargs):
                for layer, logits in self._recompute(values, starts, layer_inputs, last_output, kwargs, layer_kwargs, rows, offset):
                    results[layer].append(logits)
        # recomputed logits come off the LM head's device; the clean ones off the model's output device
        return clean_logits, [torch.cat(results[layer]).to(clean_logits.device) for layer in self.layers], method

    def _row_kwargs(self, step_kwargs: dict[int, dict], rows: slice) -> dict[int, dict]:
        """Every layer's suffix kwargs for a chunk of batch rows, with one prefix key/value cache sliced alike."""
        batch = self.target.batch_size
        prefixes: dict[int, PrefixKV] = {}  # id of a full-batch prefix cache -> its rows (one slice for all layers)
        out: dict[int, dict] = {}
        for j, kwargs in step_kwargs.items():
            out[j] = {}
            for name, value in kwargs.items():
                if isinstance(value, PrefixKV):
                    out[j][name] = prefixes.setdefault(id(value), value.rows(rows))
                else:
                    out[j][name] = select_rows(value, rows, batch)
        return out

    def _recompute(
        self,
        values: Activations,
        starts: dict[int, int | None],
        layer_inputs: dict[int, torch.Tensor],
        last_output: torch.Tensor,
        step_kwargs: dict[int, dict],
        layer_kwargs: dict[int, dict],
        rows: slice,
        offset: int,
    ):
        """Yield (layer, last-position logits of `rows`) for every swept layer: patched states of
        different layers are stacked along the batch as they start, up to the token cap per call."""
        layer_modules = self.adapter.decoder_layers()
        seq_len = self.target.seq_len
        n_rows = len(range(*rows.indices(self.target.batch_size)))

        def patched_state(layer: int) -> torch.Tensor:
            start = starts[layer]
            base = last_output if start == self.num_layers else layer_inputs[start]
            state = base[rows].clone()
            site_values = values[layer_site(self.site, layer)]
            for row, positions in enumerate(self.target_positions[rows]):
                if positions.numel():
                    index = positions - offset
                    state[row, index.to(state.device)] = site_values[rows.start + row].to(state.device, state.dtype)
            return state

        tokens_per_copy = n_rows * (seq_len - offset)
        copies_per_call = max(1, self.max_tokens_per_call // tokens_per_copy)
        order = sorted(self.layers, key=lambda layer: starts[layer])
        repeated: dict[tuple[int, int], dict] = {}
        for group_start in range(0, len(order), copies_per_call):
            group = order[group_start : group_start + copies_per_call]
            hidden: torch.Tensor | None = None
            members: list[int] = []
            for j in range(starts[group[0]], self.num_layers + 1):
                new = [layer for layer in group if starts[layer] == j]
                if new:
                    fresh = torch.cat([patched_state(layer) for layer in new])
                    if j == self.num_layers:  # after the last layer only the last position matters
                        fresh = fresh[:, -1:]
                        hidden = None if hidden is None else hidden[:, -1:]
                    hidden = fresh if hidden is None else torch.cat([hidden, fresh])
                    members.extend(new)
                if j == self.num_layers or hidden is None:
                    continue
                copies = len(members)
                key = (j, copies)
                if key not in repeated:
                    repeated = {k: v for k, v in repeated.items() if k[0] == j}
                    repeated[key] = repeat_batch(step_kwargs[j], copies, n_rows)
                if j == self.num_layers - 1 and offset and hidden.shape[1] > 1:
                    last = self._last_layer_at_last_position(
                        layer_modules[j], hidden, repeated[key], layer_kwargs[j], copies, rows
                    )
                    if last is not None:
                        hidden = last
                        continue
                hidden = layer_output(layer_modules[j](hidden, **repeated[key]))
            assert hidden is not None
            logits = self.adapter.final_logits(hidden[:, -1])
            for copy, layer in enumerate(members):
                yield layer, logits[copy * n_rows : (copy + 1) * n_rows]

    def _last_layer_at_last_position(
        self, module: nn.Module, hidden: torch.Tensor, step_kwargs: dict, full_kwargs: dict, copies: int, rows: slice
    ) -> torch.Tensor | None:
        """The last decoder layer's output at the last position only, (rows, 1, hidden), or None.

        Only the last position reaches the logits, but its attention needs every key/value of this
        layer. Run the layer on the suffix until it hands its keys/values to the cache (then stop it),
        and run it again on the last token against [clean prefix, patched suffix] keys/values: the
        MLP and attention of all other positions are skipped.
        """
        seq_len, batch = self.target.seq_len, self.target.batch_size
        n_rows = len(range(*rows.indices(batch)))
        if not prefix_blind_to_suffix(full_kwargs.get("attention_mask"), seq_len, seq_len - 1):
            return None
        cache_name = next(name for name in CACHE_KWARGS if name in step_kwargs)
        recorder = KVRecorder()
        try:
            module(hidden, **{**step_kwargs, cache_name: recorder})
        except KVRecorded:
            pass
        else:
            return None  # the layer never reached its cache: no shortcut
        layer = self.num_layers - 1
        prefix_keys, prefix_values = (t[rows].repeat(copies, 1, 1, 1) for t in self._prefix_kv.prefix[layer])
        keys = torch.cat([prefix_keys, recorder.keys[..., :-1, :]], dim=-2)
        values = torch.cat([prefix_values, recorder.values[..., :-1, :]], dim=-2)
        stand_in = PrefixKV({layer: (keys, values)})
        try:
            last_kwargs = suffix_step_kwargs(
                select_rows(full_kwargs, rows, batch), seq_len, seq_len - 1, stand_in, self.adapter.attention_implementation, keys.device
            )
            last_kwargs = repeat_batch(last_kwargs, copies, n_rows)
        except Unprovable:
            return None  # run the whole layer instead
        return layer_output(module(hidden[:, -1:], **last_kwargs))

    def _suffix_kwargs(self, layer_kwargs: dict[int, dict], kv: Any, first: int, seq_len: int, offset: int) -> dict[int, dict]:
        """Per layer, kwargs for recomputing positions offset.. only, after proving that this is exact."""
        self._prefix_kv = stand_in = whole_prompt_prefix(kv, range(first, self.num_layers), seq_len, offset)
        attention = self.adapter.attention_implementation
        out = {}
        for j in range(first, self.num_layers):
            if not prefix_blind_to_suffix(layer_kwargs[j].get("attention_mask"), seq_len, offset):
                raise Unprovable(f"layer {j}: positions before {offset} attend to later ones")
            out[j] = suffix_step_kwargs(layer_kwargs[j], seq_len, offset, stand_in, attention, stand_in.device)
        return out


def run_patch_sweep(
    sweep: PatchSweep,
    method: SweepMethod,
    answers: Sequence[Sequence[TokenSet]] | None,
    keep_logits: bool,
) -> SweepResult:
    chosen = sweep.choose(method)
    source_logits, values = sweep.source_values()
    if chosen == "naive":
        clean, per_layer = sweep.run_naive(values)
    else:
        clean, per_layer, chosen = sweep.run_fast(values, chosen)
    stacked = torch.stack(per_layer) if per_layer else torch.zeros(0, sweep.target.batch_size, clean.shape[-1])
    probabilities = None
    if answers is not None:
        if len(answers) != sweep.target.batch_size:
            raise UserInputError(f"answers for {len(answers)} rows, batch has {sweep.target.batch_size}", "pass tracked answers per pair")
        probabilities = torch.stack([answer_probabilities(logits, answers) for logits in stacked]) if per_layer else None
    return SweepResult(
        site=sweep.site,
        layers=list(sweep.layers),
        probabilities=probabilities,
        logits=stacked if keep_logits or answers is None else None,
        clean_logits=clean,
        source_logits=source_logits,
        method=chosen,
    )

"""Prefix sharing: rows of a batch that begin alike run their common beginning once (issue 21).

Both option orders of a forced-choice item, the four query directions of a synthetic picture and the
conditions of an ablation share the system turn, the picture and the text up to the first token that
differs. A plain forward computes that prefix once per row; here it runs once per group of rows and
every row's suffix attends to the group's keys/values, as the training code's shared prefix does.
Rows share at several depths (every row the system turn, a picture's rows the picture, an ablated
picture's rows its untouched top), so the prefix runs in levels, each level once per group of rows
that agree that far, against the keys/values of the level before (`prefix_groups` picks the levels).

How it stays exact on every family without knowing the family: (1) a capture pass runs the model with
every decoder layer replaced by the identity, so embeddings, image encoder and interventions before
layer 0 (steering/ablation/patching of picture tokens at `projector.out`, `lm.resid_pre.0`) run as
usual and each layer's call arguments (masks, rotary tables, position ids) are kept as built; (2) rows
are grouped by their real tokens' layer-0 states (`prefix_groups`), and members are checked equal
(`torch.equal`) in states, positions, rotary tables and mask over each level; (3) each level runs once
per group, the suffixes (left-padded among themselves) once per row, with every mask and rotary table
gathered from the captured ones (`prefix_args`; Gemma's sliding windows and bidirectional image
blocks, M-RoPE come along unchanged), after the masks show no level sees the padding or past its end.
Anything unproven (a cut inside a bidirectional block, an unknown argument) runs the plain forward and
says why (`PrefixStats.fallbacks`). Logits equal the plain forward to float32 rounding (tests, every
family). Only the last position's logits are read, so the last layer does less: the prefix levels stop
it once its keys/values are kept, and the suffix pass runs its MLP on the last position only.

Switch it off with `Engine(adapter, share_prefix=False)` or the environment variable
`SPATIALMECH_PREFIX_SHARING=0` (`spatialmech.sharing`; the benchmark and the equality checks do).
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from spatialmech.engine.call_args import (
    CACHE_KWARGS,
    layer_output,
    masked,
    mentions_length,
)
from spatialmech.engine.hooks import (
    HookSession,
    PositionalLayerCall,
    StopAtLayer0,
    identity_layers,
)
from spatialmech.engine.interventions import Intervention
from spatialmech.engine.kv import KVKeeper, KVRecorded, PrefixKV
from spatialmech.engine.positions import image_positions
from spatialmech.engine.prefix_args import Captured, LayerArgs
from spatialmech.engine.prefix_groups import (
    GroupsDiffer,
    Level,
    Plan,
    Unshareable,
    cuttable,
    gather_rows,
    plan_groups,
)
from spatialmech.engine.root_kv import RootKV, root_key
from spatialmech.models.base import BatchInputs, VLMAdapter

# Sites whose interventions act before decoder layer 0 runs: the capture pass applies them.
UPSTREAM_SITES = ("vision.out", "projector.out", "lm.resid_pre.0")


@dataclass
class PrefixStats:
    """What prefix sharing did over an engine's forwards, in tokens per decoder layer.

    tokens_plain: what plain forwards of the same batches cost (rows x padded length);
    tokens_run:   what actually ran (prefix once per group + padded suffixes, or plain on fallback);
    tokens_floor: the no-repeat floor: every distinct (row prefix) position once (a root kept from an
                  earlier forward not counted: it needs no pass at all);
    levels:       shared forwards by their number of prefix levels (the root included);
    roots_kept:   shared forwards whose root came from an earlier forward (`root_kv`);
    fallbacks:    reason -> count of forwards that ran plain.
    """

    forwards: int = 0
    shared: int = 0
    tokens_plain: int = 0
    tokens_run: int = 0
    tokens_floor: int = 0
    fallbacks: Counter = field(default_factory=Counter)
    levels: Counter = field(default_factory=Counter)
    roots_kept: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fallbacks": dict(self.fallbacks), "levels": dict(self.levels)}


TOTALS = PrefixStats()  # every engine's stats summed, for the benchmark (benchmarks/reproduce_time.py)


def interventions_upstream(interventions: Sequence[Intervention]) -> bool:
    return all(i.site in UPSTREAM_SITES for i in interventions)


def capture_layer_inputs(
    adapter: VLMAdapter,
    inputs: BatchInputs,
    interventions: Sequence[Intervention],
    record: Any = None,
    stop: bool = False,
    record_device: torch.device | str | None = "cpu",
) -> tuple[Captured, HookSession]:
    """Run embeddings, image encoder and the interventions, but not the decoder layers (identity), keeping
    what every layer was called with. With `stop`, the forward ends at layer 0 (recording encoder sites)."""
    hidden: dict[str, torch.Tensor] = {}
    kwargs: list[dict[str, Any]] = [{} for _ in adapter.decoder_layers()]
    session = HookSession(adapter, inputs, interventions, record, record_device)
    with session, identity_layers(adapter, hidden, kwargs, stop):
        try:
            adapter.forward_output(inputs)
        except StopAtLayer0:
            pass
        except PositionalLayerCall as exc:
            raise Unshareable(str(exc)) from exc
    if "0" not in hidden:
        raise Unshareable("the forward never reached decoder layer 0")
    return Captured(hidden["0"], kwargs), session


def _same_in_group(value: Any, level: Level) -> bool:
    """Every row's slice equals its group representative's (tensors gathered for all rows)."""
    if isinstance(value, torch.Tensor):
        if value.shape[0] != len(level.labels) or value.dim() < 2:
            return True  # no per-row data (broadcast)
        return torch.equal(value, value[level.reps.to(value.device)][level.labels.to(value.device)])
    if isinstance(value, (tuple, list)):
        return all(_same_in_group(v, level) for v in value)
    if isinstance(value, dict):
        return all(_same_in_group(v, level) for v in value.values())
    return True


def _check(args: LayerArgs, kwargs: list[dict[str, Any]]) -> None:
    """Prove the shared run exact: at every level, group members agree on everything its tokens are
    computed from (the levels before proved the earlier tokens), no prefix sees past its end, and no real
    token sees the padding."""
    plan, seq_len = args.plan, args.seq_len
    for k, level in enumerate(plan.levels):
        part = f"check:{k}"
        _, queries, _ = args.indices(part)
        if not _same_in_group(gather_rows(args.captured.hidden, 0, 1, args.all_rows, queries), level):
            raise Unshareable("grouped rows differ inside the prefix")
        checked: set[int] = set()
        for kw in kwargs:
            for name, value in kw.items():
                if name in (*CACHE_KWARGS, "attention_mask", "cache_position") or id(value) in checked or not mentions_length(value, seq_len):
                    continue
                checked.add(id(value))
                if not _same_in_group(args.convert(name, value, part), level):
                    raise GroupsDiffer(f"grouped rows differ in {name!r} inside the prefix")
            given = kw.get("attention_mask")  # by the model's own object: None (causal) is checked once, not per layer
            if id(given) in checked:
                continue
            checked.add(id(given))
            if given is None:  # causal: the same seen from any offset, so only padding is to prove (once)
                if k == 0:
                    _check_causal(args, plan)
                continue
            if not _same_in_group(args.mask(given, part), level):
                raise GroupsDiffer("grouped rows differ in the attention mask inside the prefix")
            if k == 0:
                _check_blind(masked(args.full_mask(given)), plan)


def _check_causal(args: LayerArgs, plan: Plan) -> None:
    """Layers called without a mask (causal): the rows of a group see alike wherever they start (causal is
    the same seen from any offset), and no level sees past its end; only padding could be seen, so there
    must be none. What `_check_blind` would prove from the full causal mask, without building it."""
    args.full_mask(None)  # the kernel must have an explicit causal mask for the passes after the first
    if bool((plan.pad > 0).any()):
        raise Unshareable("real tokens attend to padding")


def _check_blind(hidden: torch.Tensor, plan: Plan) -> None:
    """No real token sees the padding, and no level's tokens see past the level's end."""
    for r in range(len(plan.pad)):
        m = hidden[min(r, hidden.shape[0] - 1)]
        a = int(plan.pad[r])
        if not bool(m[:, a:, :a].all()):
            raise Unshareable("real tokens attend to padding")
        for level in plan.levels:
            if not bool(m[:, a : a + level.end, a + level.end :].all()):
                raise Unshareable("the prefix attends to later positions (e.g. a bidirectional block cut by the prefix)")


def continue_plain(adapter: VLMAdapter, captured: Captured) -> torch.Tensor:
    """The plain forward's logits from a capture pass (the fallback: the encoder does not run twice)."""
    with torch.no_grad():
        hidden = captured.hidden
        for layer, kwargs in zip(adapter.decoder_layers(), captured.kwargs):
            hidden = layer_output(layer(hidden, **kwargs))
        return adapter.final_logits(hidden[:, -1])


@contextmanager
def last_position_mlp(layer: torch.nn.Module) -> Iterator[None]:
    """While open, the layer's MLP (position-wise) runs on the last position only and writes zeros
    elsewhere: only the last position of the last layer's output is read (its logits), so the MLP of
    every other position there was wasted work, three quarters of that layer on the bundled model. The
    last position's numbers are the same MLP on the same vector (to float32 rounding: a one-row matmul)."""
    mlp = getattr(layer, "mlp", None)
    shapes: list[torch.Size] = []

    def before(_module: Any, args: tuple) -> tuple | None:
        if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() != 3:
            return None
        shapes.append(args[0].shape)
        return (args[0][:, -1:], *args[1:])

    def after(_module: Any, _args: tuple, output: Any) -> Any:
        if not shapes:
            return None
        batch, seq, _ = shapes.pop()
        if not isinstance(output, torch.Tensor) or output.shape[:2] != (batch, 1):
            raise Unshareable("the last layer's MLP does not return one tensor per position")
        full = output.new_zeros(batch, seq, output.shape[-1])
        full[:, -1:] = output
        return full

    if not isinstance(mlp, torch.nn.Module):
        yield
        return
    handles = [mlp.register_forward_pre_hook(before), mlp.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def shared_logits(adapter: VLMAdapter, inputs: BatchInputs, interventions: Sequence[Intervention], stats: PrefixStats) -> torch.Tensor:
    """Last-position logits (batch, vocab) of `inputs` under upstream `interventions`, sharing prefixes;
    the plain forward (and a count of why) when sharing cannot be proven exact."""
    plain = inputs.batch_size * inputs.seq_len
    for each in (stats, TOTALS):
        each.forwards += 1
        each.tokens_plain += plain
    captured, session = capture_layer_inputs(adapter, inputs, interventions)
    session.check_fired()
    try:
        return _shared(adapter, inputs, captured, stats)
    except Unshareable as exc:
        for each in (stats, TOTALS):
            each.fallbacks[str(exc)] += 1
            each.tokens_run += plain
            each.tokens_floor += plain
        return continue_plain(adapter, captured)


def _none_is_causal(adapter: VLMAdapter, attention: str) -> bool:
    """Whether the decoder layers run causal attention when given no mask: sdpa layers do, unless one of
    their attention modules says it is not causal (transformers' `is_causal`). Read once per model."""
    if attention != "sdpa":
        return False
    known = _CAUSAL_LAYERS.get(adapter.model)
    if known is None:
        known = _CAUSAL_LAYERS[adapter.model] = all(
            getattr(m, "is_causal", True) is not False for layer in adapter.decoder_layers() for m in layer.modules())
    return known


_CAUSAL_LAYERS: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


def _shared(adapter: VLMAdapter, inputs: BatchInputs, captured: Captured, stats: PrefixStats) -> torch.Tensor:
    attention = adapter.attention_implementation
    none_is_causal = _none_is_causal(adapter, attention)
    mask = inputs.model_kwargs.get("attention_mask")
    batch, seq_len = captured.hidden.shape[:2]
    pad = seq_len - mask.to(torch.bool).cpu().sum(1) if mask is not None else torch.zeros(batch, dtype=torch.long)
    can_cut = _cuttable(captured, pad)
    roots = RootKV.of_model(adapter.model)
    root_limit = roots.limit()
    root_cap = _root_cap(inputs, pad) if root_limit else 0
    try:
        plan = plan_groups(captured.hidden, mask, can_cut=can_cut, root_cap=root_cap)
        args = LayerArgs(captured, plan, attention, none_is_causal)
        _check(args, captured.kwargs)
    except GroupsDiffer:  # positions that count the padding: group rows with equal padding only
        plan = plan_groups(captured.hidden, mask, same_pad=True, can_cut=can_cut, root_cap=root_cap)
        args = LayerArgs(captured, plan, attention, none_is_causal)
        _check(args, captured.kwargs)
    layers = adapter.decoder_layers()
    last = len(layers) - 1
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    root_kept = False
    with torch.no_grad():
        for k, level in enumerate(plan.levels):  # each level's groups, against their keys/values so far
            if k == 0 and plan.root:
                kept, root_kept = _root(adapter, args, captured, roots, root_limit)
                continue
            before = {j: (key[level.parent.to(key.device)], value[level.parent.to(key.device)]) for j, (key, value) in kept.items()} if k else None
            kept = _run_level(layers, args, captured, k, before)
        rows = plan.group_of_row.to(captured.hidden.device)
        stand_in = PrefixKV({j: (k[rows], v[rows]) for j, (k, v) in kept.items()})
        suffix_kwargs = [args.layer(kw, stand_in, "suffix") for kw in captured.kwargs]
        hidden = gather_rows(captured.hidden, 0, 1, args.all_rows, args.suffix_index)
        for j, layer in enumerate(layers):
            with last_position_mlp(layer) if j == last else nullcontext():
                hidden = layer_output(layer(hidden, **suffix_kwargs[j]))
        logits = adapter.final_logits(hidden[:, -1])
    root_run = plan.root if plan.root and not root_kept else 0
    for each in (stats, TOTALS):
        each.shared += 1
        each.roots_kept += root_kept
        each.levels[len(plan.levels)] += 1
        each.tokens_run += plan.prefix_tokens() + root_run + args.batch * args.suffix_len
        each.tokens_floor += plan.floor - (plan.root if root_kept else 0)
    return logits


def _run_level(layers: Sequence[torch.nn.Module], args: LayerArgs, captured: Captured, k: int,
               before: dict[int, tuple[torch.Tensor, torch.Tensor]] | None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Level k's groups through every layer (the last one to its keys/values only), after `before`'s keys."""
    last = len(layers) - 1
    keeper = KVKeeper(stop_at=last, before=before)
    level_kwargs = [args.layer(kw, keeper, f"level:{k}") for kw in captured.kwargs]
    rows, queries, _ = args.indices(f"level:{k}")
    hidden = gather_rows(captured.hidden, 0, 1, rows, queries)
    for j, layer in enumerate(layers):
        try:
            hidden = layer_output(layer(hidden, **level_kwargs[j]))
        except KVRecorded:
            if j != last:
                raise
    if len(keeper.kept) != len(layers):
        raise Unshareable("not every layer stored its keys/values")
    return keeper.kept


def _root(adapter: VLMAdapter, args: LayerArgs, captured: Captured, roots: RootKV,
          limit: int) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], bool]:
    """The root level's keys/values: kept from an earlier forward with the same key, else run (alone) and kept."""
    roots.for_weights(adapter.model)
    rows, queries, _ = args.indices("level:0")
    states = gather_rows(captured.hidden, 0, 1, rows, queries)
    key = root_key(states, [args.layer(kw, None, "level:0") for kw in captured.kwargs], args.attention)
    found = roots.get(key)
    if found is not None:
        return found, True
    kept = _run_level(adapter.decoder_layers(), args, captured, 0, None)
    roots.put(key, kept, limit)
    return kept, False


def _root_cap(inputs: BatchInputs, pad: torch.Tensor) -> int:
    """How far the root may reach: to the first picture token of any row (past it rows mostly differ, and a
    root that ends in the same place keeps being found again); 0 for batches without pictures."""
    if not inputs.images or not all(inputs.images):
        return 0
    firsts = [int(p.min()) - int(a) for p, a in zip(image_positions(inputs), pad) if len(p)]
    return max(0, min(firsts)) if len(firsts) == len(pad) else 0


def _cuttable(captured: Captured, pad: torch.Tensor) -> torch.Tensor | None:
    """Where the layers' own masks let a prefix end (`prefix_groups.cuttable`), from their distinct masks."""
    masks = {id(m): m for kw in captured.kwargs if isinstance(m := kw.get("attention_mask"), torch.Tensor) and m.dim() == 4}
    return cuttable(masks.values(), pad) if masks else None

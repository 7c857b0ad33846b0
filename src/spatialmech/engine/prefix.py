"""Prefix sharing: rows of a batch that begin alike run their common beginning once (issue 21).

Both option orders of a forced-choice item, the four query directions of a synthetic picture and the
conditions of an ablation share the system turn, the picture and the text up to the first token that
differs. A plain forward computes that prefix once per row; here it runs once per group of rows and
every row's suffix attends to the group's keys/values, as the training code's shared prefix does.

How it stays exact on every family without knowing the family: (1) a capture pass runs the model with
every decoder layer replaced by the identity, so embeddings, image encoder and interventions before
layer 0 (steering/ablation/patching of picture tokens at `projector.out`, `lm.resid_pre.0`) run as
usual and each layer's call arguments (masks, rotary tables, position ids) are kept as built; (2) rows
are grouped by their real tokens' layer-0 states (`prefix_groups`), and members are checked equal
(`torch.equal`) in states, positions, rotary tables and mask over the prefix; (3) the prefix runs once
per group, the suffixes (left-padded among themselves) once per row, with every mask and rotary table
gathered from the captured ones (Gemma's sliding windows and bidirectional image blocks, M-RoPE come
along unchanged), after the masks show the prefix sees neither the padding nor the suffix. Anything
unproven (a cut inside a bidirectional block, an unknown argument) runs the plain forward and says why
(`PrefixStats.fallbacks`). Logits equal the plain forward to float32 rounding (tests, every family).
Only the last position's logits are read, so the last layer does less: the prefix pass stops it once
its keys/values are kept, and the suffix pass runs its MLP on the last position only.

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
    causal_mask,
    layer_output,
    map_tensors,
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
from spatialmech.engine.prefix_groups import GroupsDiffer, Plan, Unshareable, gather_rows, plan_groups
from spatialmech.models.base import BatchInputs, VLMAdapter

# Sites whose interventions act before decoder layer 0 runs: the capture pass applies them.
UPSTREAM_SITES = ("vision.out", "projector.out", "lm.resid_pre.0")


@dataclass
class PrefixStats:
    """What prefix sharing did over an engine's forwards, in tokens per decoder layer.

    tokens_plain: what plain forwards of the same batches cost (rows x padded length);
    tokens_run:   what actually ran (prefix once per group + padded suffixes, or plain on fallback);
    tokens_floor: the no-repeat floor: every distinct (row prefix) position once;
    fallbacks:    reason -> count of forwards that ran plain.
    """

    forwards: int = 0
    shared: int = 0
    tokens_plain: int = 0
    tokens_run: int = 0
    tokens_floor: int = 0
    fallbacks: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fallbacks": dict(self.fallbacks)}


TOTALS = PrefixStats()  # every engine's stats summed, for the benchmark (benchmarks/reproduce_time.py)


def interventions_upstream(interventions: Sequence[Intervention]) -> bool:
    return all(i.site in UPSTREAM_SITES for i in interventions)


@dataclass
class Captured:
    """Layer 0's input (batch, seq, hidden) and every decoder layer's call keyword arguments."""

    hidden: torch.Tensor
    kwargs: list[dict[str, Any]]


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


class _LayerArgs:
    """Turns the captured per-layer kwargs into prefix-pass and suffix-pass kwargs (memoised per tensor,
    since layers of one kind share their mask and rotary tables)."""

    def __init__(self, captured: Captured, plan: Plan, attention: str, none_is_causal: bool = False):
        self.captured, self.plan, self.attention = captured, plan, attention
        self.none_is_causal = none_is_causal
        self.seq_len = captured.hidden.shape[1]
        self.batch = captured.hidden.shape[0]
        p, pad, seq_len = plan.prefix_len, plan.pad, self.seq_len
        self.suffix_len = seq_len - int(pad.min()) - p
        n_pad = self.suffix_len - (seq_len - pad - p)  # left padding of each row's suffix
        self.n_pad = n_pad
        steps = torch.arange(self.suffix_len)
        first_real = (pad + p)[:, None]
        self.prefix_index = pad[:, None] + torch.arange(p)[None, :]  # (batch, p) real prefix positions
        self.suffix_index = torch.maximum(first_real + steps[None, :] - n_pad[:, None], first_real)
        pad_key = torch.zeros_like(self.suffix_index)
        suffix_keys = torch.where(steps[None, :] < n_pad[:, None], pad_key, self.suffix_index)
        self.suffix_keys = torch.cat([self.prefix_index, suffix_keys], dim=1)
        self.all_rows = torch.arange(self.batch)
        self.memo: dict[tuple[int, str], Any] = {}

    def layer(self, kwargs: dict[str, Any], cache: Any, part: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not any(name in kwargs for name in CACHE_KWARGS):
            raise Unshareable("decoder layers take no KV cache argument")
        if "attention_mask" not in kwargs:
            raise Unshareable("decoder layers take no attention mask")
        for name, value in kwargs.items():
            if name in CACHE_KWARGS:
                out[name] = cache
            elif name == "attention_mask":
                key = (id(value), f"{name}:{part}")
                if key not in self.memo:
                    self.memo[key] = self.prefix_mask(value) if part == "prefix" else self.mask(value, part)
                out[name] = self.memo[key]
            elif name == "use_cache":
                out[name] = False
            elif name == "cache_position":
                start, length = (0, self.plan.prefix_len) if part == "prefix" else (self.plan.prefix_len, self.suffix_len)
                out[name] = torch.arange(start, start + length, device=self.captured.hidden.device)
            elif isinstance(value, (torch.Tensor, tuple, list, dict)) and mentions_length(value, self.seq_len):
                key = (id(value), f"{name}:{part}")
                if key not in self.memo:
                    self.memo[key] = self._convert(name, value, part)
                out[name] = self.memo[key]
            else:
                out[name] = value
        return out

    def _rows_and_index(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        if part == "prefix":
            return self.plan.reps, self.prefix_index[self.plan.reps]
        if part == "check":
            return self.all_rows, self.prefix_index
        return self.all_rows, self.suffix_index

    def _convert(self, name: str, value: Any, part: str) -> Any:
        rows, index = self._rows_and_index(part)
        if name == "attention_mask":
            return self.mask(value, part)
        if name == "position_ids" and isinstance(value, torch.Tensor) and value.dim() >= 2:
            return gather_rows(value, -2, -1, rows, index)
        if name == "position_embeddings":
            return map_tensors(value, lambda t: gather_rows(t, -3, -2, rows, index) if t.dim() >= 3 and t.shape[-2] == self.seq_len else _bad(name))
        raise Unshareable(f"decoder-layer argument {name!r} depends on the sequence")

    def full_mask(self, mask: Any) -> torch.Tensor:
        if mask is None:
            full = causal_mask(self.seq_len, self.attention, self.captured.hidden.device)
            if full is None:
                raise Unshareable(f"no explicit causal mask for attention implementation {self.attention!r}")
            return full
        if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[-1] != self.seq_len or mask.shape[-2] != self.seq_len:
            raise Unshareable(f"attention mask of type {type(mask).__name__}")
        return mask

    def prefix_mask(self, mask: Any) -> torch.Tensor | None:
        """The prefix pass's mask, or None (the kernel's own causal path, faster than an explicit mask) where
        the model itself called its layers without one, or where the layers take None as causal and the
        gathered mask is exactly causal (the prefix holds real tokens only, so padding is gone)."""
        if mask is None:
            return None
        gathered = self.mask(mask, "prefix")
        if self.none_is_causal and gathered.dtype == torch.bool:
            p = gathered.shape[-1]
            causal = torch.ones(p, p, dtype=torch.bool, device=gathered.device).tril()
            if torch.equal(gathered, causal.expand_as(gathered)):
                return None
        return gathered

    def mask(self, mask: Any, part: str) -> torch.Tensor:
        mask = self.full_mask(mask)
        rows, index = self._rows_and_index(part)
        keys = index if part in ("prefix", "check") else self.suffix_keys
        by_query = gather_rows(mask, 0, -2, rows, index)
        return gather_rows(by_query, 0, -1, torch.arange(len(rows)), keys)


def _bad(name: str) -> Any:
    raise Unshareable(f"decoder-layer argument {name!r} has a layout the engine does not know")


def _same_in_group(value: Any, plan: Plan) -> bool:
    """Every row's prefix slice equals its group representative's (tensors gathered for all rows)."""
    if isinstance(value, torch.Tensor):
        if value.shape[0] != len(plan.group_of_row) or value.dim() < 2:
            return True  # no per-row data (broadcast)
        return torch.equal(value, value[plan.reps.to(value.device)][plan.group_of_row.to(value.device)])
    if isinstance(value, (tuple, list)):
        return all(_same_in_group(v, plan) for v in value)
    if isinstance(value, dict):
        return all(_same_in_group(v, plan) for v in value.values())
    return True


def _check(args: _LayerArgs, kwargs: list[dict[str, Any]]) -> None:
    """Prove the shared run exact: group members agree on everything the prefix computes from, the
    prefix sees neither the padding nor the suffix, and the suffix never sees the padding."""
    plan, seq_len = args.plan, args.seq_len
    prefix_states = gather_rows(args.captured.hidden, 0, 1, args.all_rows, args.prefix_index)
    if not _same_in_group(prefix_states, plan):
        raise Unshareable("grouped rows differ inside the prefix")
    checked: set[int] = set()
    for kw in kwargs:
        for name, value in kw.items():
            if name in (*CACHE_KWARGS, "attention_mask", "cache_position") or id(value) in checked or not mentions_length(value, seq_len):
                continue
            checked.add(id(value))
            if not _same_in_group(args._convert(name, value, "check"), plan):
                raise GroupsDiffer(f"grouped rows differ in {name!r} inside the prefix")
        given = kw.get("attention_mask")  # by the model's own object: None (causal) is checked once, not per layer
        if id(given) in checked:
            continue
        checked.add(id(given))
        mask = args.full_mask(given)
        if not _same_in_group(args.mask(mask, "check"), plan):
            raise GroupsDiffer("grouped rows differ in the attention mask inside the prefix")
        hidden = masked(mask)
        for r in range(args.batch):
            m = hidden[min(r, hidden.shape[0] - 1)]
            a, p = int(plan.pad[r]), plan.prefix_len
            if not bool(m[:, a:, :a].all()):
                raise Unshareable("real tokens attend to padding")
            if not bool(m[:, a : a + p, a + p :].all()):
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
    try:
        plan = plan_groups(captured.hidden, inputs.model_kwargs.get("attention_mask"))
        args = _LayerArgs(captured, plan, attention, none_is_causal)
        _check(args, captured.kwargs)
    except GroupsDiffer:  # positions that count the padding: group rows with equal padding only
        plan = plan_groups(captured.hidden, inputs.model_kwargs.get("attention_mask"), same_pad=True)
        args = _LayerArgs(captured, plan, attention, none_is_causal)
        _check(args, captured.kwargs)
    layers = adapter.decoder_layers()
    last = len(layers) - 1
    keeper = KVKeeper(stop_at=last)  # the prefix's last layer: its keys/values only
    prefix_kwargs = [args.layer(kw, keeper, "prefix") for kw in captured.kwargs]
    with torch.no_grad():
        hidden = gather_rows(captured.hidden, 0, 1, plan.reps, args.prefix_index[plan.reps])
        for j, layer in enumerate(layers):
            try:
                hidden = layer_output(layer(hidden, **prefix_kwargs[j]))
            except KVRecorded:
                if j != last:
                    raise
        if len(keeper.kept) != len(layers):
            raise Unshareable("not every layer stored its keys/values")
        rows = plan.group_of_row.to(hidden.device)
        stand_in = PrefixKV({j: (k[rows], v[rows]) for j, (k, v) in keeper.kept.items()})
        suffix_kwargs = [args.layer(kw, stand_in, "suffix") for kw in captured.kwargs]
        hidden = gather_rows(captured.hidden, 0, 1, args.all_rows, args.suffix_index)
        for j, layer in enumerate(layers):
            with last_position_mlp(layer) if j == last else nullcontext():
                hidden = layer_output(layer(hidden, **suffix_kwargs[j]))
        logits = adapter.final_logits(hidden[:, -1])
    for each in (stats, TOTALS):
        each.shared += 1
        each.tokens_run += len(plan.reps) * plan.prefix_len + args.batch * args.suffix_len
        each.tokens_floor += plan.floor
    return logits


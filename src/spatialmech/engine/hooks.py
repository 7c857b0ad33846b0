"""The one place that registers PyTorch hooks: a session that applies interventions and records sites.

A `HookSession` is built for one batch (`BatchInputs`), resolves every site through the adapter's
`hook_point` and every LM position to the site's own indexing, installs one hook per site, and
removes them all on exit, even on error. Per site, interventions are applied in the order given;
recording reads the value after them, i.e. what the rest of the model sees.

The decoder-layer tools the fast paths need live here too, so no other module touches hooks:
`LayerCalls` keeps layers' inputs and call arguments (sweeps resume from them), `identity_layers`
turns the layers into the identity for a capture pass (prefix sharing), `count_token_layer_passes`
measures work (the benchmark).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from spatialmech.engine.activations import Activations
from spatialmech.engine.interventions import Intervention
from spatialmech.engine.positions import ImageRowMap, PositionsLike, as_positions
from spatialmech.errors import UserInputError
from spatialmech.models.base import BatchInputs, HookPoint, VLMAdapter

ENCODER_SITES = ("vision.out", "projector.out")


@dataclass
class _SiteState:
    """Everything a hook needs for one site: where, which rows, what to do, what to keep."""

    point: HookPoint
    seq_len: int
    batch_size: int
    row_map: ImageRowMap | None
    steps: list[tuple[Intervention, list[torch.Tensor]]] = field(default_factory=list)
    record_positions: list[torch.Tensor] | None = None
    record_index: list[torch.Tensor] | None = None
    recorded: torch.Tensor | None = None
    fired: int = 0

    def index(self, row: int, positions: torch.Tensor) -> torch.Tensor:
        """Indices into the site's value for LM positions of one row (sequence index or module rows)."""
        return positions if self.row_map is None else self.row_map.rows(row, positions)

    def is_prompt_pass(self, value: torch.Tensor) -> bool:
        if self.row_map is None:
            return value.dim() == 3 and value.shape[1] == self.seq_len
        return value.dim() == 2 and value.shape[0] == self.row_map.num_rows

    def transform(self, value: torch.Tensor) -> torch.Tensor | None:
        """The site's new value (None = unchanged); records after the interventions."""
        if not isinstance(value, torch.Tensor) or not self.is_prompt_pass(value):
            if self.row_map is not None and isinstance(value, torch.Tensor) and value.dim() == 2:
                raise RuntimeError(
                    f"site {self.point.site} has {value.shape[0]} rows, the batch's image tokens need "
                    f"{self.row_map.num_rows}: the adapter's image-token map and hook site disagree"
                )
            return None  # a generation step (KV cache): interventions are prefill-only
        if self.row_map is None and value.shape[0] != self.batch_size:
            raise RuntimeError(f"site {self.point.site} saw batch {value.shape[0]}, inputs have {self.batch_size} rows")
        self.fired += 1
        new = None
        for intervention, per_row in self.steps:
            for row, index in enumerate(per_row):
                if index.numel() == 0:
                    continue
                source = value if new is None else new
                current = source[row, index] if self.row_map is None else source[index]
                replacement = intervention.new_values(row, current)
                if new is None:
                    new = value.clone()
                if self.row_map is None:
                    new[row, index] = replacement
                else:
                    new[index] = replacement
        if self.record_index is not None:
            final = value if new is None else new
            if self.row_map is None:
                rows = torch.cat([torch.full((i.numel(),), r, dtype=torch.long) for r, i in enumerate(self.record_index)])
                cols = torch.cat(self.record_index)
                self.recorded = final.detach()[rows.to(final.device), cols.to(final.device)]
            else:
                self.recorded = final.detach()[torch.cat(self.record_index).to(final.device)]
        return new


def _first(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    if isinstance(output, Mapping):
        return next(iter(output.values()))
    raise RuntimeError(f"cannot read a hook site from a module output of type {type(output).__name__}")


def _replace_first(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    key = next(iter(output.keys()))
    output[key] = new
    return output


class HookSession:
    """Context manager: apply `interventions` and record `record` sites for forwards of `inputs`.

    `record` maps site -> positions (LM positions per row). After the forward, `activations()` gives
    the recorded values. Hooks act on the prompt pass only and are removed on exit.
    """

    def __init__(
        self,
        adapter: VLMAdapter,
        inputs: BatchInputs,
        interventions: Sequence[Intervention] = (),
        record: Mapping[str, PositionsLike] | None = None,
        record_device: torch.device | str | None = "cpu",
    ):
        self.adapter = adapter
        self.inputs = inputs
        self.record_device = record_device
        self.states: dict[str, _SiteState] = {}
        self.handles: list[RemovableHandle] = []
        for intervention in interventions:
            state = self._state(intervention.site)
            positions = as_positions(intervention.positions, inputs, f"positions of {type(intervention).__name__} on {intervention.site}")
            state.steps.append((intervention, [state.index(r, p) for r, p in enumerate(positions)]))
        for site, positions in (record or {}).items():
            state = self._state(site)
            state.record_positions = as_positions(positions, inputs, f"recorded positions of {site}")
            state.record_index = [state.index(r, p) for r, p in enumerate(state.record_positions)]

    def _state(self, site: str) -> _SiteState:
        if site not in self.states:
            if not isinstance(site, str):
                raise UserInputError(f"site must be a name, got {type(site).__name__}", "use a name such as 'lm.resid_pre.3'")
            point = self._hook_point(site)
            row_map = ImageRowMap(self.inputs, point) if point.space == "image_tokens" else None
            if row_map is not None and row_map.num_tokens == 0:
                raise UserInputError(f"site {site} needs images, but this batch has none", "pass inputs built with images")
            self.states[site] = _SiteState(point, self.inputs.seq_len, self.inputs.batch_size, row_map)
        return self.states[site]

    def _hook_point(self, site: str) -> HookPoint:
        """The adapter's hook point; for inputs whose images are already encoded (the encoder will not
        run), `projector.out` is served where its value enters the LM: layer 0's input at the image
        positions, equal by the adapter contract (a suite test per family), same LM positions."""
        if not self.inputs.images_encoded or site not in ENCODER_SITES:
            return self.adapter.hook_point(site)
        if site == "projector.out":
            return self.adapter.hook_point("lm.resid_pre.0")
        raise UserInputError(
            f"site {site} is inside the image encoder, which inputs from encode_images skip",
            "pass the raw inputs (from build_inputs) to hook vision.out",
        )

    # ------------------------------------------------------------------ install / remove
    def __enter__(self) -> HookSession:
        try:
            for state in self.states.values():
                self.handles.append(self._install(state))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    @staticmethod
    def _install(state: _SiteState) -> RemovableHandle:
        point = state.point
        if point.when == "output":

            def output_hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
                new = state.transform(_first(output))
                return None if new is None else _replace_first(output, new)

            return point.module.register_forward_hook(output_hook)

        def input_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            if point.input_kwarg is not None:
                new = state.transform(kwargs[point.input_kwarg])
                if new is None:
                    return None
                return args, {**kwargs, point.input_kwarg: new}
            if args:
                new = state.transform(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            if "hidden_states" in kwargs:
                new = state.transform(kwargs["hidden_states"])
                return None if new is None else (args, {**kwargs, "hidden_states": new})
            raise RuntimeError(f"site {point.site}: module was called without a positional input to hook")

        return point.module.register_forward_pre_hook(input_hook, with_kwargs=True)

    # ------------------------------------------------------------------ results
    def check_fired(self) -> None:
        """Each hooked site must have run exactly once on the prompt pass; anything else is a site bug."""
        for site, state in self.states.items():
            if state.fired != 1:
                raise RuntimeError(
                    f"site {site} ran {state.fired} times on the prompt pass (expected once): "
                    "the adapter's hook_point does not match how the model runs"
                )

    def activations(self) -> Activations:
        values, positions = {}, {}
        for site, state in self.states.items():
            if state.record_index is None:
                continue
            if state.recorded is None:
                raise RuntimeError(f"site {site} was to be recorded but never ran")
            recorded = state.recorded if self.record_device is None else state.recorded.to(self.record_device)
            counts = [int(i.numel()) for i in state.record_index]
            values[site] = (recorded, counts)
            positions[site] = state.record_positions
        return Activations.from_flat(values, positions)


# ------------------------------------------------------------------ decoder-layer calls (sweeps, prefix sharing)
class LayerCalls:
    """Context manager: while open, keeps what decoder layers `first..L-1` are called with (their input,
    positions `keep_from..` only, and their keyword arguments: masks, rotary tables, the KV cache) and the
    last layer's output (positions `keep_from..`): what a sweep resumes a patched run from."""

    def __init__(self, adapter: VLMAdapter, first: int, keep_from: int = 0):
        self.layers = adapter.decoder_layers()
        self.first, self.keep_from = first, keep_from
        self.inputs: dict[int, torch.Tensor] = {}
        self.kwargs: dict[int, dict[str, Any]] = {}
        self.last_output: torch.Tensor | None = None
        self.handles: list[RemovableHandle] = []

    def _keep(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, self.keep_from :].clone() if self.keep_from else hidden

    def __enter__(self) -> LayerCalls:
        def keep_input(index: int):
            def hook(module: torch.nn.Module, args: tuple, kw: dict) -> None:
                self.inputs[index] = self._keep(args[0] if args else kw["hidden_states"])
                self.kwargs[index] = {k: v for k, v in kw.items() if k != "hidden_states"}

            return hook

        def keep_output(module: torch.nn.Module, args: tuple, output: Any) -> None:
            self.last_output = self._keep(output[0] if isinstance(output, (tuple, list)) else output)

        try:
            for j in range(self.first, len(self.layers)):
                self.handles.append(self.layers[j].register_forward_pre_hook(keep_input(j), with_kwargs=True))
            self.handles.append(self.layers[-1].register_forward_hook(keep_output))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


_IDENTITY_LAYERS = [False]  # set while `identity_layers` is open: its layers do no work (not counted)


class StopAtLayer0(Exception):
    """Raised inside `identity_layers(stop=True)` once layer 0's input is known."""


@contextmanager
def identity_layers(adapter: VLMAdapter, hidden: dict[str, torch.Tensor], kwargs: list[dict[str, Any]], stop: bool = False):
    """While open, every decoder layer is the identity and keeps what it was called with: layer 0's input
    in `hidden["0"]`, each layer's keyword arguments in `kwargs[j]`. With `stop`, a forward ends at layer 0
    (raises `StopAtLayer0`, which the caller catches). Everything before layer 0 (embeddings, image
    encoder, hooks there) runs as usual. Raises `PositionalLayerCall` for layers called positionally.

    Why replace `forward` rather than hook: a pre-hook cannot skip the layer's work, and skipping it is
    the point (a capture pass costs no decoder compute). The instance attribute shadows the method and is
    deleted on exit, even on error."""
    layers = adapter.decoder_layers()

    def identity(index: int):
        def forward(hidden_states: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
            if args:
                raise PositionalLayerCall("decoder layer called with positional arguments")
            if index == 0:
                hidden["0"] = hidden_states
                if stop:
                    raise StopAtLayer0
            kwargs[index] = kw
            return hidden_states

        return forward

    _IDENTITY_LAYERS[0] = True
    try:
        for j, layer in enumerate(layers):
            layer.forward = identity(j)
        yield
    finally:
        _IDENTITY_LAYERS[0] = False
        for layer in layers:
            layer.__dict__.pop("forward", None)


class PositionalLayerCall(Exception):
    """A decoder layer was called with positional arguments beyond its input (`identity_layers`)."""


@contextmanager
def count_token_layer_passes(adapter: VLMAdapter) -> Iterator[Counter]:
    """Counts tokens through decoder layers (rows x positions per call, summed over layers) while open:
    the benchmark's measure of work, whatever path (plain, shared, sweep) ran; capture passes
    (`identity_layers`) do no work and do not count."""
    counts: Counter = Counter()

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor) and hidden.dim() == 3 and not _IDENTITY_LAYERS[0]:
            counts["token_layers"] += int(hidden.shape[0] * hidden.shape[1])

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in adapter.decoder_layers()]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()

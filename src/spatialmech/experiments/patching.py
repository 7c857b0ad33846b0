"""What the layer-patching experiments share (`last-token`, `criss-cross`, `backup`).

A patching experiment takes counterfactual pairs of one kind, keeps the pairs the model answers
correctly on both inputs (SPEC section 4; switchable off for untrained test models), runs them in
batches of `ctx.batch_size` (one independent unit per batch), and tracks a few answers per layer:
`iia` (mean probability of the answer, summed over its spelling variants) and `top1` (fraction of
pairs whose patched top-1 token is that answer). This module holds that plan (`plan`,
`compute_unit`, `combine`); each experiment only declares a `PatchingSpec`: which counterfactual
kind it uses, which answers it tracks and how it patches one batch.

A batch function returns one JSON-able record per pair (see `pair_record`), with one row per layer
label; `summarise` averages them into the curves of the result.

The layer axis (rows of every record) is the authors': `experiments.layer_axis`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spatialmech.engine import Engine
from spatialmech.engine.scoring import answer_probabilities, top1_correct
from spatialmech.errors import UserInputError
from spatialmech.experiments.common import (
    LogitsFn,
    Pair,
    answer_ids,
    get_task_for,
)
from spatialmech.experiments.patching_pairs import candidate_pairs, no_pairs_error, pair_selection
from spatialmech.experiments.plan import Stage
from spatialmech.experiments.runner import (
    ExperimentContext,
    ExperimentOutput,
    chunks,
    parse_layers,
    protocol_of,
)
from spatialmech.plotting import plot_layer_curves
from spatialmech.tasks.base import Task

DEFAULT_PAIRS = 50  # the paper's pairs per setting


# ---------------------------------------------------------------------------------------- config
def base_config(options: Mapping[str, Any], adapter: Any, pairs_hint: str | None = None) -> dict[str, Any]:
    """n (kept pairs), swept layers, the `--pairs` file and whether to keep only correctly answered pairs.

    An experiment that reads the authors' pair files passes `pairs_hint` (which file of theirs fits).
    Pairs read from a file are run as given under the paper protocol, as their runners do (their
    `--filter` re-check is opt-in: the files were built from pairs that passed it); drawn pairs, and
    every pair under `--protocol strict`, are kept only where the model answers both inputs right.
    `filter_correct` is not a CLI option: tests pass `filter_correct=False` in `options` to run on
    untrained tiny models, whose pairs would all be dropped.
    """
    n = options.get("n")
    if n is not None and int(n) < 1:
        raise UserInputError(f"--n {n} must be at least 1", "pass a positive number of pairs")
    layers = options.get("layers")
    if not isinstance(layers, list):
        layers = parse_layers(layers, adapter.num_layers)
    pairs = options.get("pairs")
    if pairs is not None and pairs_hint is None:
        raise UserInputError("--pairs applies to last-token and criss-cross only", "drop --pairs")
    if pairs is not None and not Path(pairs).is_file():
        raise UserInputError(f"--pairs {pairs} is not a file", f"pass {pairs_hint}")
    from_file_as_given = pairs is not None and protocol_of(options) == "paper"
    return {
        "n": DEFAULT_PAIRS if n is None else int(n),
        "layers": [int(layer) for layer in layers],
        "include_embeddings": bool(options.get("include_embeddings", True)),
        "pairs_file": str(Path(pairs).resolve()) if pairs is not None else None,
        "filter_correct": bool(options.get("filter_correct", not from_file_as_given)),
    }


def load_task(ctx: ExperimentContext) -> Task:
    """The context's task, drawn on the model's own token grid (with its tokenizer, `get_task_for`)."""
    return get_task_for(ctx.adapter, ctx.task_name, ctx.data_root)


# ---------------------------------------------------------------------------------------- the shared plan
@dataclass(frozen=True)
class PatchingSpec:
    """What makes one patching experiment: its counterfactual kind, the answers it tracks and how it
    patches one batch of pairs; plus the few metrics, the figure and (for `backup`) the result when
    no pair is kept. Everything else (pair selection, batching, curves, tables) is shared here.

    `candidates(ctx, task)` groups the candidate pairs (`n` is kept per group; default one group of
    every item's `counterfactual` pair). `batch(ctx, pairs)` returns `{"pairs": [one `pair_record` per pair], ...}`; `labels(ctx)` the
    layer labels of its rows; `metrics(ctx, records, labels, curves, top1, report)` the
    experiment's metrics; `figures(ctx, labels, curves, top1, records)` its figure files.
    """

    name: str
    counterfactual: str
    answers: tuple[str, ...]
    legend: Mapping[str, str]
    batch: Callable[[ExperimentContext, Sequence[Pair]], Mapping[str, Any]]
    labels: Callable[[ExperimentContext], list[Any]]
    metrics: Callable[..., dict[str, Any]]
    figures: Callable[..., list[str]]
    desc: Callable[[ExperimentContext], str]
    selection_logits: Callable[[ExperimentContext], LogitsFn | None] = lambda ctx: None
    no_pairs: Callable[[ExperimentContext, dict[str, Any]], ExperimentOutput] | None = None
    candidates: Callable[[ExperimentContext, Task], Mapping[str, Sequence[Pair]]] | None = None


PAIRS_UNIT = "pairs"
BATCH_PREFIX = "batch-"


def shared_task(ctx: ExperimentContext) -> Task:
    return ctx.shared("task", lambda: load_task(ctx))


def shared_engine(ctx: ExperimentContext) -> Engine:
    return ctx.shared("engine", lambda: Engine(ctx.adapter))


def candidate_groups(ctx: ExperimentContext, spec: PatchingSpec) -> Mapping[str, Sequence[Pair]]:
    """The spec's candidate pairs by group, built once per process."""
    def build() -> Mapping[str, Sequence[Pair]]:
        task = shared_task(ctx)
        if spec.candidates is not None:
            return spec.candidates(ctx, task)
        return {"all": candidate_pairs(task, spec.counterfactual, ctx.seed)}

    return ctx.shared("candidate_groups", build)


def kept_pairs(ctx: ExperimentContext, spec: PatchingSpec) -> list[Pair]:
    """The pairs the saved `pairs` unit kept, rebuilt from the task (once per process)."""
    def build() -> list[Pair]:
        by_id = {pair.clean.id: pair for group in candidate_groups(ctx, spec).values() for pair in group}
        return [by_id[item_id] for item_id in ctx.load_unit(PAIRS_UNIT)["clean_ids"]]

    return ctx.shared("kept_pairs", build)


def plan(ctx: ExperimentContext, spec: PatchingSpec) -> Iterator[Stage]:
    """Stage 1: select the pairs (one unit). Stage 2: one unit per batch of `ctx.batch_size` kept pairs."""
    yield Stage("pairs", (PAIRS_UNIT,), f"{spec.name} pairs")
    unit = ctx.load_unit(PAIRS_UNIT)
    n_pairs = len(unit["clean_ids"])
    if not n_pairs:
        if spec.no_pairs is None:
            raise no_pairs_error(ctx, unit["report"])
        return
    n_batches = -(-n_pairs // ctx.batch_size)
    yield Stage("batches", tuple(f"{BATCH_PREFIX}{i:05d}" for i in range(n_batches)), spec.desc(ctx))


def compute_unit(ctx: ExperimentContext, spec: PatchingSpec, key: str) -> Mapping[str, Any]:
    if key == PAIRS_UNIT:
        unit = pair_selection(ctx, shared_task(ctx), candidate_groups(ctx, spec), spec.selection_logits(ctx))
        unit["report"]["counterfactual"] = spec.counterfactual
        return unit
    index = int(key.removeprefix(BATCH_PREFIX))
    group = chunks(kept_pairs(ctx, spec), ctx.batch_size)[index]
    return spec.batch(ctx, group)


def combine(ctx: ExperimentContext, spec: PatchingSpec) -> ExperimentOutput:
    """Curves, flip summaries, tables and the figure, from the saved units only."""
    unit = ctx.load_unit(PAIRS_UNIT)
    report = unit["report"]
    n_pairs = len(unit["clean_ids"])
    if not n_pairs:
        if spec.no_pairs is None:
            raise no_pairs_error(ctx, report)
        return spec.no_pairs(ctx, report)
    records: list[dict[str, Any]] = []
    for index in range(-(-n_pairs // ctx.batch_size)):
        records.extend(ctx.load_unit(f"{BATCH_PREFIX}{index:05d}")["pairs"])
    labels = spec.labels(ctx)
    curves, top1 = summarise(records, spec.answers)
    figures = spec.figures(ctx, labels, curves, top1, records)
    metrics = spec.metrics(ctx, records, labels, curves, top1, report)
    tables = {"curves": curve_rows(labels, curves, top1), "pairs": pair_rows(records, spec.answers)}
    return ExperimentOutput(metrics=metrics, tables=tables, figures=figures, data={"answers": dict(spec.legend)})


def planned(spec: PatchingSpec) -> tuple[Callable[..., Iterator[Stage]], Callable[..., Mapping[str, Any]],
                                         Callable[..., ExperimentOutput]]:
    """An experiment module's `plan`, `compute_unit` and `combine` for `spec` (see `experiments.plan`)."""
    def plan_(ctx: ExperimentContext) -> Iterator[Stage]:
        return plan(ctx, spec)

    def compute_unit_(ctx: ExperimentContext, key: str) -> Mapping[str, Any]:
        return compute_unit(ctx, spec, key)

    def combine_(ctx: ExperimentContext) -> ExperimentOutput:
        return combine(ctx, spec)

    return plan_, compute_unit_, combine_


# ---------------------------------------------------------------------------------------- scoring
def tracked_scores(
    logits: torch.Tensor, answers: Sequence[Sequence[Sequence[int]]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """For logits (..., batch, vocab) and answers[row][k] token sets: probabilities and top-1 hits,
    both (..., batch, k)."""
    flat = logits.reshape(-1, logits.shape[-2], logits.shape[-1])
    probs = torch.stack([answer_probabilities(step, answers) for step in flat])
    hits = torch.stack(
        [torch.stack([top1_correct(step, [row[k] for row in answers]) for k in range(len(answers[0]))], dim=-1) for step in flat]
    )
    shape = (*logits.shape[:-1], len(answers[0]))
    return probs.reshape(shape), hits.reshape(shape)


def pair_record(
    pair: Pair,
    answers: Mapping[str, str],
    probabilities: torch.Tensor,
    top1: torch.Tensor,
    predictions: Sequence[str],
    clean_probabilities: torch.Tensor,
    counter_probabilities: torch.Tensor,
    clean_prediction: str,
    counter_prediction: str,
) -> dict[str, Any]:
    """One pair's result: per layer label, P and top-1 hit of each tracked answer and the patched top-1
    token, plus the unpatched runs. probabilities / top1: (n_layer_labels, n_answers), `answers` order."""
    keys = list(answers)
    return {
        "clean_id": pair.clean.id,
        "counter_id": pair.counterfactual.id,
        "axis": pair.clean.axis,
        "relation": pair.clean.relation,
        "answers": dict(answers),
        "iia": [[float(p) for p in row] for row in probabilities.tolist()],
        "top1": [[int(bool(h)) for h in row] for row in top1.tolist()],
        "predictions": list(predictions),
        "clean_run": {k: float(p) for k, p in zip(keys, clean_probabilities.tolist())},
        "counter_run": {k: float(p) for k, p in zip(keys, counter_probabilities.tolist())},
        "clean_prediction": clean_prediction,
        "counter_prediction": counter_prediction,
    }


def batch_records(
    adapter: Any,
    pairs: Sequence[Pair],
    words: Sequence[Mapping[str, str]],
    patched_logits: torch.Tensor,
    clean_logits: torch.Tensor,
    counter_logits: torch.Tensor,
) -> list[dict[str, Any]]:
    """Records of a batch from its patched logits (n_layer_labels, batch, vocab) and unpatched runs."""
    answers = answer_sets(adapter, pairs, words)
    probabilities, hits = tracked_scores(patched_logits, answers)
    clean_p, _ = tracked_scores(clean_logits, answers)
    counter_p, _ = tracked_scores(counter_logits, answers)
    patched_top = [decode(adapter, step) for step in patched_logits]
    clean_top, counter_top = decode(adapter, clean_logits), decode(adapter, counter_logits)
    return [
        pair_record(pair, words[row], probabilities[:, row], hits[:, row], [step[row] for step in patched_top],
                    clean_p[row], counter_p[row], clean_top[row], counter_top[row])
        for row, pair in enumerate(pairs)
    ]


def decode(adapter: Any, logits: torch.Tensor) -> list[str]:
    """The top-1 token of each row, as text."""
    return [adapter.tokenizer.decode([int(t)]) for t in logits.argmax(-1).tolist()]


def answer_sets(adapter: Any, pairs: Sequence[Pair], words: Sequence[Mapping[str, str]]) -> list[list[list[int]]]:
    """Per pair, the token-id sets of its tracked answer words (in the mapping's order): an item's own
    answer variants where the word is the clean or counterfactual answer, SPEC's spelling set otherwise."""
    out = []
    for pair, tracked in zip(pairs, words):
        out.append([answer_ids(adapter, pair.counterfactual if word == pair.counterfactual.answer else pair.clean, word)
                    for word in tracked.values()])
    return out


# ---------------------------------------------------------------------------------------- results
def summarise(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Mean P (iia) and top-1 rate per answer key per layer label, over pairs."""
    n = len(records)
    n_layers = len(records[0]["iia"]) if records else 0
    curves = {key: [sum(r["iia"][i][k] for r in records) / n for i in range(n_layers)] for k, key in enumerate(keys)}
    top1 = {key: [sum(r["top1"][i][k] for r in records) / n for i in range(n_layers)] for k, key in enumerate(keys)}
    return curves, top1


def unchanged_rate(records: Sequence[Mapping[str, Any]]) -> list[float]:
    """Per layer label, the fraction of pairs whose patched top-1 token is the unpatched clean run's."""
    n = len(records)
    n_layers = len(records[0]["predictions"]) if records else 0
    return [sum(r["predictions"][i] == r["clean_prediction"] for r in records) / n for i in range(n_layers)]


def curve_rows(layer_labels: Sequence[Any], curves: Mapping[str, Sequence[float]], top1: Mapping[str, Sequence[float]]) -> list[dict[str, Any]]:
    """curves.csv: one row per (layer, answer)."""
    return [
        {"layer": label, "answer": key, "iia": round(curves[key][i], 6), "top1": round(top1[key][i], 6)}
        for i, label in enumerate(layer_labels)
        for key in curves
    ]


def pair_rows(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """pairs.csv: the kept pairs, their tracked answer words and what the unpatched runs predicted."""
    rows = []
    for index, record in enumerate(records):
        row = {"pair": index, "clean_id": record["clean_id"], "counter_id": record["counter_id"],
               "axis": record["axis"], "relation": record["relation"]}
        row.update({f"answer_{key}": record["answers"][key] for key in keys})
        row["clean_prediction"] = record["clean_prediction"]
        row["counter_prediction"] = record["counter_prediction"]
        row.update({f"clean_p_{key}": round(record["clean_run"][key], 6) for key in keys})
        rows.append(row)
    return rows


def model_name(ctx: ExperimentContext) -> str:
    model_id = str(ctx.adapter.model_id)
    path = Path(model_id)
    return path.name if path.is_dir() else model_id


def figure(
    ctx: ExperimentContext,
    x: Sequence[Any],
    curves: Mapping[str, Sequence[float]],
    legend: Mapping[str, str],
    title: str,
) -> list[str]:
    """iia_curves.png/.svg: one line per tracked answer (legend text from `legend`)."""
    return plot_layer_curves(list(x), {legend.get(k, k): v for k, v in curves.items()}, ctx.figure_path("iia_curves"), title)

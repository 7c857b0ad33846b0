"""`amplify`'s alpha sweep and the numbers of Table 2, under either protocol.

- paper (the authors' coco_amplification/src/common.py: `run_coco_baseline_eval`, `clean_results`,
  `partition_results`, `run_coco_amp_sweep`, `print_amp_summary`): score every item in both option
  orders once; drop items with an answer off the question's axis (counted); at each alpha > 0 re-run
  only the failed option orders of the failed items (a failure is fixed when every failed order is
  answered right); accuracy = (correct + fixed) / n; best alpha over alpha > 0 (the smallest on
  ties); the random row at random's own best alpha.
- strict: every item, both orders, at every alpha (breakage counted); see `summarise`.

`Steered` builds the logits function of a set of directions at one alpha (amplify.py owns the
intervention), so this module only schedules work and counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spatialmech.engine import Engine
from spatialmech.engine.scoring import top1_correct
from spatialmech.experiments.common import LogitsFn, ReusedEncodings, answer_ids, encode_items, score_items
from spatialmech.experiments.probing import LinearProbe
from spatialmech.experiments.runner import ExperimentContext, chunks
from spatialmech.tasks.base import Item
from spatialmech.tasks.prompts import OPTIONS

Steered = Callable[[Mapping[str, LinearProbe], float], LogitsFn]
UNIT_ITEMS = 32  # items per resumable unit


def _progress(ctx: ExperimentContext, total: int, desc: str) -> Any:
    if not ctx.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="unit", leave=False)


# ------------------------------------------------------------------------------------------ paper


def answer_word(token: str) -> str:
    """A decoded top-1 token as the authors compare it: stripped, lower-case."""
    return token.strip().lower()


def baseline(ctx: ExperimentContext, task: Any, items: Sequence[Item]) -> list[dict[str, Any]]:
    """paper: each item in both option orders: which orders it gets right, and whether any answer is off-axis."""
    rows: list[dict[str, Any]] = []
    for index, group in enumerate(chunks(list(items), UNIT_ITEMS)):
        def compute(group: Sequence[Item] = group) -> dict[str, Any]:
            scores = score_items(ctx.adapter, task, list(group), ctx.batch_size)
            return {"rows": [{
                "id": item.id, "axis": item.axis,
                "ok": [bool(s.correct_natural_order), bool(s.correct_swapped_order)],
                "words": [answer_word(s.predicted_token), answer_word(s.predicted_token_swapped or "")],
            } for item, s in zip(group, scores)]}

        rows += ctx.unit(f"baseline-{index:04d}", compute)["rows"]
    for row in rows:
        row["off_axis"] = any(word not in OPTIONS[row["axis"]] for word in row["words"])
        row["failed_orders"] = [order for order, ok in enumerate(row["ok"]) if not ok]
    return rows


def _order_prompt(item: Item, order: int) -> str:
    return item.prompt if order == 0 else item.meta["prompt_swapped"]


def failed_order_sweep(ctx: ExperimentContext, engine: Engine, task: Any, failed: Sequence[tuple[Item, list[int]]],
                       directions: Mapping[str, Mapping[str, LinearProbe]], steered: Steered) -> dict[str, dict[float, list[bool]]]:
    """paper: {direction: {alpha: [fixed per failed item]}} re-running only each item's failed orders."""
    alphas = [a for a in ctx.config["alphas"] if a > 0]
    groups = chunks(list(failed), UNIT_ITEMS)
    out: dict[str, dict[float, list[bool]]] = {name: {a: [] for a in alphas} for name in directions}
    progress = _progress(ctx, len(groups) * len(directions) * len(alphas), "amplify sweep (failed orders)")
    for index, group in enumerate(groups):
        rows = [(item, order) for item, orders in group for order in orders]
        owner = [g for g, (_, orders) in enumerate(group) for _ in orders]
        encode = ReusedEncodings(engine)  # every alpha and direction re-runs the same (picture, prompt) rows

        def fixed(logits_fn: LogitsFn, rows: list[tuple[Item, int]] = rows, owner: list[int] = owner,
                  encode: ReusedEncodings = encode, size: int = len(group)) -> dict[str, Any]:
            right: list[bool] = []
            for start in range(0, len(rows), ctx.batch_size):
                batch = rows[start : start + ctx.batch_size]
                items = [item for item, _ in batch]
                logits = logits_fn(encode(ctx.adapter, task, items, [_order_prompt(i, o) for i, o in batch]), items)
                right += top1_correct(logits, [answer_ids(ctx.adapter, item) for item in items]).tolist()
            flags = [True] * size
            for g, ok in zip(owner, right):
                flags[g] = flags[g] and bool(ok)
            return {"fixed": flags}

        for name, probes in directions.items():
            for alpha in alphas:
                unit = ctx.unit(f"sweep-{name}-a{alpha:g}-{index:04d}", lambda probes=probes, alpha=alpha, fixed=fixed: fixed(steered(probes, alpha)))
                out[name][alpha].extend(unit["fixed"])
                if progress is not None:
                    progress.update(1)
    if progress is not None:
        progress.close()
    return out


def paper_summary(n: int, golden: int, axes_of_failed: Sequence[str], axes_of_golden: Sequence[str],
                  curves: Mapping[str, Mapping[float, Sequence[bool]]]) -> dict[str, Any]:
    """Table 2 as the authors compute it: accuracy (golden + fixed) / n, fails fixed / failures, best alpha > 0."""
    n_fail = len(axes_of_failed)

    def fixed_at(curve: Mapping[float, Sequence[bool]], alpha: float, axis: str | None = None) -> int:
        return sum(ok for ok, a in zip(curve[alpha], axes_of_failed) if axis is None or a == axis)

    def best(curve: Mapping[float, Sequence[bool]]) -> float | None:
        return max(curve, key=lambda a: (fixed_at(curve, a), -a)) if curve else None

    def oracle(curve: Mapping[float, Sequence[bool]], axis: str | None = None) -> int:
        return sum(any(curve[a][i] for a in curve) for i, ax in enumerate(axes_of_failed) if axis is None or ax == axis)

    def acc(fixed: int | None) -> float | None:
        return None if fixed is None or n == 0 else (golden + fixed) / n

    def rate(fixed: int | None) -> float | None:
        return None if fixed is None or n_fail == 0 else fixed / n_fail

    probe, rand = curves["probe"], curves["random"]
    best_probe, best_random = best(probe), best(rand)
    probe_fixed = fixed_at(probe, best_probe) if best_probe is not None else None
    random_fixed = fixed_at(rand, best_random) if best_random is not None else None
    per_axis = {}
    for axis in sorted(set(axes_of_failed) | set(axes_of_golden)):
        gold, fails = sum(a == axis for a in axes_of_golden), sum(a == axis for a in axes_of_failed)
        total = gold + fails
        per_axis[axis] = {
            "n": total, "baseline_accuracy": gold / total if total else None,
            "accuracy": (gold + fixed_at(probe, best_probe, axis)) / total if total and best_probe is not None else None,
            "random_accuracy": (gold + fixed_at(rand, best_random, axis)) / total if total and best_random is not None else None,
            "oracle_accuracy": (gold + oracle(probe, axis)) / total if total else None,
        }
    return {
        "n": n, "baseline_correct": golden, "baseline_failed": n_fail,
        "baseline_accuracy": golden / n if n else None,
        "best_alpha": best_probe, "accuracy": acc(probe_fixed), "fails_fixed": rate(probe_fixed),
        "oracle_accuracy": acc(oracle(probe)), "oracle_fails_fixed": rate(oracle(probe)),
        "random_best_alpha": best_random, "random_accuracy": acc(random_fixed), "random_fails_fixed": rate(random_fixed),
        "random_oracle_accuracy": acc(oracle(rand)),
        "random_accuracy_at_probe_alpha": acc(fixed_at(rand, best_probe)) if best_probe is not None else None,
        "per_axis": per_axis,
    }


# ------------------------------------------------------------------------------------------ strict


def _scores(ctx: ExperimentContext, task: Any, group: Sequence[Item], logits_fn: Any = None,
            encode: Any = encode_items) -> dict[str, list]:
    scores = score_items(ctx.adapter, task, group, ctx.batch_size, logits_fn, encode=encode)
    return {"correct": [s.correct for s in scores], "p_answer": [s.p_answer for s in scores]}


def sweep(ctx: ExperimentContext, engine: Engine, task: Any, items: Sequence[Item],
          directions: Mapping[str, Mapping[str, LinearProbe]], steered: Steered) -> dict[str, dict[str, dict[float, list]]]:
    """strict: correctness (and P(answer), the lower of the two option orders) of every item at every
    alpha, for each set of directions. Alpha 0 is the unmodified model (shared by all direction sets).
    Returns {name: {"correct" | "p_answer": {alpha: [value per item]}}}."""
    alphas = list(ctx.config["alphas"])
    groups = chunks(list(items), UNIT_ITEMS)
    progress = _progress(ctx, len(groups) * (1 + len(directions) * sum(1 for a in alphas if a != 0)), "amplify sweep")
    out = {name: {key: {a: [] for a in alphas} for key in ("correct", "p_answer")} for name in directions}
    for index, group in enumerate(groups):
        group = list(group)
        # every alpha and direction set scores the same pictures: render, tokenise and encode them once
        encode = ReusedEncodings(engine)
        units = {0: ctx.unit(f"baseline-{index:04d}", lambda group=group, encode=encode: _scores(ctx, task, group, encode=encode))}
        if progress is not None:
            progress.update(1)
        for name, probes in directions.items():
            for alpha in alphas:
                if alpha != 0:
                    units[alpha] = ctx.unit(f"sweep-{name}-a{alpha:g}-{index:04d}", lambda group=group, probes=probes, alpha=alpha, encode=encode:
                                            _scores(ctx, task, group, steered(probes, alpha), encode))
                    if progress is not None:
                        progress.update(1)
                for key in ("correct", "p_answer"):
                    out[name][key][alpha].extend(units[alpha][key])
    if progress is not None:
        progress.close()
    return out


def accuracy(flags: Sequence[bool], indices: Sequence[int] | None = None) -> float | None:
    chosen = [flags[i] for i in indices] if indices is not None else list(flags)
    return sum(chosen) / len(chosen) if chosen else None


def best_alpha(curve: Mapping[float, list[bool]], indices: Sequence[int] | None = None) -> float:
    """The alpha with the highest accuracy (the smallest such alpha on ties)."""
    return max(curve, key=lambda a: (accuracy(curve[a], indices) or 0.0, -a))


def fails_fixed(baseline: Sequence[bool], steered: Sequence[bool], indices: Sequence[int] | None = None) -> float | None:
    chosen = range(len(baseline)) if indices is None else indices
    failures = [i for i in chosen if not baseline[i]]
    return sum(steered[i] for i in failures) / len(failures) if failures else None


def broken(baseline: Sequence[bool], steered: Sequence[bool]) -> float | None:
    right = [i for i in range(len(baseline)) if baseline[i]]
    return sum(not steered[i] for i in right) / len(right) if right else None


def summarise(curves: Mapping[str, Mapping[float, list[bool]]], validation: Sequence[int], test: Sequence[int]) -> dict[str, Any]:
    """strict: Table 2's numbers from per-item correctness at every alpha ('probe' and 'random' curves)."""
    probe, rand = curves["probe"], curves["random"]
    base = probe[0]
    n = len(base)
    best = best_alpha(probe)
    random_best = best_alpha(rand)
    oracle = [any(probe[a][i] for a in probe) for i in range(n)]
    random_oracle = [any(rand[a][i] for a in rand) for i in range(n)]
    val_best, val_random_best = best_alpha(probe, validation), best_alpha(rand, validation)
    return {
        "n": n,
        "baseline_accuracy": accuracy(base),
        "accuracy": accuracy(probe[best]),
        "best_alpha": best,
        "oracle_accuracy": accuracy(oracle),
        "fails_fixed": fails_fixed(base, probe[best]),
        "broken": broken(base, probe[best]),
        "oracle_fails_fixed": fails_fixed(base, oracle),
        "random_accuracy": accuracy(rand[best]),
        "random_fails_fixed": fails_fixed(base, rand[best]),
        "random_best_alpha": random_best,
        "random_best_accuracy": accuracy(rand[random_best]),
        "random_best_fails_fixed": fails_fixed(base, rand[random_best]),
        "random_oracle_accuracy": accuracy(random_oracle),
        "held_out": {
            "validation_n": len(validation),
            "test_n": len(test),
            "alpha": val_best,
            "baseline_accuracy": accuracy(base, test),
            "accuracy": accuracy(probe[val_best], test),
            "fails_fixed": fails_fixed(base, probe[val_best], test),
            "random_alpha": val_random_best,
            "random_accuracy": accuracy(rand[val_random_best], test),
            "random_accuracy_at_probe_alpha": accuracy(rand[val_best], test),
        },
    }


def mean_by_alpha(values: Mapping[float, Sequence[float]]) -> dict[float, float]:
    return {a: sum(v) / len(v) for a, v in values.items() if v}


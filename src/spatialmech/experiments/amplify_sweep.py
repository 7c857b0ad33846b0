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

from spatialmech.engine.scoring import top1_correct
from spatialmech.experiments.amplify_fit import group_key, groups
from spatialmech.experiments.common import LogitsFn, ReusedEncodings, answer_ids, picture_batches, score_items
from spatialmech.experiments.probing import LinearProbe
from spatialmech.experiments.runner import ExperimentContext
from spatialmech.tasks.base import Item
from spatialmech.tasks.prompts import OPTIONS

Steered = Callable[[Mapping[str, LinearProbe], float], LogitsFn]
SWEEP = "sweep"  # unit keys: sweep-<direction set>-a<alpha>-NNNN (a group of items at one alpha)


def sweep_key(name: str, alpha: float, index: int) -> str:
    return group_key(f"{SWEEP}-{name}-a{alpha:g}", index)


def parse_sweep_key(key: str, alphas: Sequence[float]) -> tuple[str, float, int]:
    """(direction set, alpha, group index) of a sweep unit's key; alpha as the config spells it."""
    head, index = key.rsplit("-", 1)
    name, alpha_text = head.removeprefix(f"{SWEEP}-").split("-a", 1)
    alpha = next(a for a in alphas if f"{a:g}" == alpha_text)
    return name, alpha, int(index)


def sweep_keys(names: Sequence[str], alphas: Sequence[float], count: int, with_baseline: bool) -> tuple[str, ...]:
    """Group by group (units of a group share its encoded pictures in one process): [its baseline,]
    then every direction set at every alpha > 0."""
    keys: list[str] = []
    for index in range(count):
        keys += [group_key("baseline", index)] if with_baseline else []
        keys += [sweep_key(name, alpha, index) for name in names for alpha in alphas if alpha > 0]
    return tuple(keys)


# ------------------------------------------------------------------------------------------ paper


def answer_word(token: str) -> str:
    """A decoded top-1 token as the authors compare it: stripped, lower-case."""
    return token.strip().lower()


def baseline_unit(ctx: ExperimentContext, task: Any, group: Sequence[Item]) -> dict[str, Any]:
    """paper: one `baseline` unit: each item in both option orders, which it gets right and the words it answers."""
    scores = score_items(ctx.adapter, task, list(group), ctx.batch_size)
    return {"rows": [{
        "id": item.id, "axis": item.axis,
        "ok": [bool(s.correct_natural_order), bool(s.correct_swapped_order)],
        "words": [answer_word(s.predicted_token), answer_word(s.predicted_token_swapped or "")],
    } for item, s in zip(group, scores)]}


def baseline(ctx: ExperimentContext, items: Sequence[Item]) -> list[dict[str, Any]]:
    """paper: the saved baseline rows of every item, with whether any answer is off-axis and which orders failed."""
    rows = [row for index in range(len(groups(items))) for row in ctx.load_unit(group_key("baseline", index))["rows"]]
    for row in rows:
        row["off_axis"] = any(word not in OPTIONS[row["axis"]] for word in row["words"])
        row["failed_orders"] = [order for order, ok in enumerate(row["ok"]) if not ok]
    return rows


def _order_prompt(item: Item, order: int) -> str:
    return item.prompt if order == 0 else item.meta["prompt_swapped"]


def fixed_unit(ctx: ExperimentContext, task: Any, group: Sequence[tuple[Item, list[int]]], logits_fn: LogitsFn,
               encode: ReusedEncodings) -> dict[str, Any]:
    """paper: one sweep unit: re-run only each failed item's failed orders; fixed when all are now right."""
    rows = [(item, order) for item, orders in group for order in orders]
    owner = [g for g, (_, orders) in enumerate(group) for _ in orders]
    flags = [True] * len(group)
    for batch_index in picture_batches(owner, ctx.batch_size):  # an item's failed orders together
        items = [rows[r][0] for r in batch_index]
        logits = logits_fn(encode(ctx.adapter, task, items, [_order_prompt(*rows[r]) for r in batch_index]), items)
        right = top1_correct(logits, [answer_ids(ctx.adapter, item) for item in items]).tolist()
        for r, ok in zip(batch_index, right):
            flags[owner[r]] = flags[owner[r]] and bool(ok)
    return {"fixed": flags}


def paper_curves(ctx: ExperimentContext, names: Sequence[str], count: int) -> dict[str, dict[float, list[bool]]]:
    """paper: {direction set: {alpha > 0: [fixed per failed item]}} from the saved sweep units of `count` groups."""
    alphas = [a for a in ctx.config["alphas"] if a > 0]
    return {name: {a: [ok for index in range(count) for ok in ctx.load_unit(sweep_key(name, a, index))["fixed"]] for a in alphas}
            for name in names}


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


def scores_unit(ctx: ExperimentContext, task: Any, group: Sequence[Item], logits_fn: LogitsFn | None,
                encode: ReusedEncodings) -> dict[str, list]:
    """strict: one unit: correctness and P(answer) (the lower of the two option orders) of a group at one alpha
    (`logits_fn` None: the unmodified model, the group's `baseline` unit)."""
    scores = score_items(ctx.adapter, task, group, ctx.batch_size, logits_fn, encode=encode)
    return {"correct": [s.correct for s in scores], "p_answer": [s.p_answer for s in scores]}


def strict_curves(ctx: ExperimentContext, names: Sequence[str], count: int) -> dict[str, dict[str, dict[float, list]]]:
    """strict: {name: {"correct" | "p_answer": {alpha: [value per item]}}} from the saved units; alpha 0 is
    the baseline units (shared by all direction sets)."""
    def unit(name: str, alpha: float, index: int) -> dict[str, Any]:
        return ctx.load_unit(group_key("baseline", index) if alpha == 0 else sweep_key(name, alpha, index))

    return {name: {key: {a: [v for index in range(count) for v in unit(name, a, index)[key]] for a in ctx.config["alphas"]}
                   for key in ("correct", "p_answer")} for name in names}


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



# ------------------------------------------------------------------------------------------ tables


def paper_tables(alphas: Sequence[float], items: Sequence[Item], scored: Sequence[Mapping[str, Any]],
                 failed: Sequence[tuple[Item, list[int]]], curves: Mapping[str, Mapping[float, Sequence[bool]]],
                 summary: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """paper: the alpha curve (accuracy and fails fixed per direction set) and one row per item."""
    n, gold, n_fail = summary["n"], summary["baseline_correct"], summary["baseline_failed"]
    curve_rows = []
    for a in alphas:
        fixed = {name: (sum(curve[a]) if a in curve else 0) for name, curve in curves.items()}
        curve_rows.append({"alpha": a, **{f"{name}_accuracy": (gold + fixed[name]) / n if n else None for name in curves},
                           **{f"{name}_fails_fixed": fixed[name] / n_fail if n_fail else None for name in curves}})
    failed_at = {item.id: orders for item, orders in failed}
    position = {item.id: i for i, (item, _) in enumerate(failed)}
    best = summary["best_alpha"]
    item_rows = []
    for item, row in zip(items, scored):
        k = position.get(item.id)
        fixing = [a for a in alphas if a > 0 and k is not None and curves["probe"][a][k]]
        item_rows.append({
            "id": item.id, "axis": item.axis, "relation": item.relation, "off_axis": row["off_axis"],
            "answer_natural": row["words"][0], "answer_swapped": row["words"][1], "baseline_correct": not row["failed_orders"] and not row["off_axis"],
            "failed_orders": "/".join(("natural", "swapped")[o] for o in failed_at.get(item.id, [])),
            "probe_fixed_at_best": bool(k is not None and best is not None and curves["probe"][best][k]),
            "first_fixing_alpha": fixing[0] if fixing else None})
    return curve_rows, item_rows


def strict_tables(alphas: Sequence[float], evaluation: Sequence[Item], curves: Mapping[str, Mapping[float, list[bool]]],
                  mean_p: Mapping[str, Mapping[float, float]], summary: Mapping[str, Any], validation: Sequence[int]
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """strict: the alpha curve (accuracy, fails fixed, breakage, mean P(answer)) and one row per item."""
    base = curves["probe"][0]
    curve_rows = [{
        "alpha": a,
        "probe_accuracy": accuracy(curves["probe"][a]), "random_accuracy": accuracy(curves["random"][a]),
        "probe_fails_fixed": fails_fixed(base, curves["probe"][a]), "random_fails_fixed": fails_fixed(base, curves["random"][a]),
        "probe_broken": broken(base, curves["probe"][a]),
        "probe_mean_p_answer": mean_p["probe"][a], "random_mean_p_answer": mean_p["random"][a],
    } for a in alphas]
    best = summary["best_alpha"]
    in_validation = set(validation)
    item_rows = []
    for i, item in enumerate(evaluation):
        fixing = [a for a in alphas if curves["probe"][a][i]]
        item_rows.append({
            "id": item.id, "axis": item.axis, "relation": item.relation, "baseline_correct": base[i],
            "probe_correct_at_best": curves["probe"][best][i], "random_correct_at_best": curves["random"][best][i],
            "first_correct_alpha": fixing[0] if fixing else None, "split": "validation" if i in in_validation else "test",
        })
    return curve_rows, item_rows

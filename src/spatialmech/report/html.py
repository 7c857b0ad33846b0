"""One self-contained `report.html` from a run folder's result files, rendered from a Jinja2 template.

The report reads only the result files (result.json, CSV tables, PNG figures, and `reproduce.json`
when `spatialmech reproduce` wrote the folder) — never recomputes — so the numbers people read are the
numbers on disk: every number of ours in a table carries `data-src` (result folder), `data-key` (JSON
path inside `metrics`) and `data-value` (the exact value) so that anyone (and the tests) can check it
against result.json. Figures are inlined (base64) so the file can be mailed around; links point at the
result files next to it. The page names the protocol the results ran under at the top, and a run
holding amplification under both protocols shows them side by side. Python builds plain view data
here; `templates/report.html.j2` (autoescaped) lays it out.
"""

from __future__ import annotations

import base64
import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spatialmech import reference as paper
from spatialmech.io import atomic_write_text
from spatialmech.report.runs import MANIFEST_FILE, Entry, Run, check_consistent, load_run

__all__ = ["MANIFEST_FILE", "REPORT_FILE", "build_report", "format_value"]

REPORT_FILE = "report.html"
SUMMARY_FIGURES_DIR = "report_figures"
TEMPLATE = "report.html.j2"
MAX_TABLE_ROWS = 40
PROTOCOL_TEXT = {
    "paper": "the authors' code on every point of SPEC section 7 (amplification: probes on the evaluation set's correct items, "
             "only failed option orders re-run, random at its own best alpha)",
    "strict": "our stricter variants where they differ (amplification probes fitted on items disjoint from the evaluation, "
              "every item re-scored with breakage counted, alpha also chosen on validation items)",
    "both": "every step under the paper protocol, and amplification once more under strict, side by side",
}

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1180px;color:#222;padding:0 1em;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin:1.2em 0 .4em}
a{color:#35557a}table{border-collapse:collapse;font-size:.82em;margin:.4em 0}td,th{border:1px solid #ccc;padding:.2em .45em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child,td.text{text-align:left}td a{white-space:nowrap}.wide{overflow-x:auto;max-width:100%}
.figs{display:flex;flex-wrap:wrap;gap:.8em}.figs img{max-width:540px;border:1px solid #eee}
.gallery{display:grid;grid-template-columns:repeat(3,1fr);gap:.6em}.gallery figure{margin:0}.gallery img{width:100%;border:1px solid #eee}
.gallery figcaption{font-size:.75em;color:#555}
.side{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}.paper{background:#f8f6ee;padding:.4em .9em;border-left:3px solid #c9b458;max-width:520px}
td.paper,th.paper{background:#f8f6ee}.small{font-size:.8em;color:#555}code{background:#f4f4f4;padding:0 .2em;font-size:.9em}
.banner{padding:.6em 1em;margin:1em 0;border-radius:4px}.ok{background:#e3f1e3;border:1px solid #8bbf8b}.bad{background:#fbe3e3;border:1px solid #d08080}
.missing{background:#fbe3e3;border:1px dashed #d08080;padding:.6em 1em}.status-failed{color:#b00;font-weight:bold}.status-done{color:#262}
details{margin:.4em 0}summary{cursor:pointer;color:#35557a}
"""


# ------------------------------------------------------------------------------------------ cells
def format_value(value: Any) -> str:
    """How a number is shown: 3 decimals for fractions, integers as they are (data-value keeps it exact)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def cell(folder: str, path: Sequence[Any], value: Any) -> dict[str, str]:
    """One of our numbers, traceable to result.json (the template's `ours` macro draws it)."""
    return {"src": folder, "key": json.dumps(list(path)), "value": json.dumps(value), "text": format_value(value)}


def _shown(value: Any) -> str:
    return format_value(value) if isinstance(value, (int, float)) else str(value)


def _csv_value(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def csv_table(rows: list[dict[str, Any]], limit: int = MAX_TABLE_ROWS) -> dict[str, Any]:
    columns = list(rows[0]) if rows else []
    body = [[_shown(_csv_value(str(row.get(c, "")))) for c in columns] for row in rows[:limit]]
    return {"columns": columns, "rows": body, "more": max(0, len(rows) - limit)}


def _get(mapping: Any, path: Sequence[Any]) -> Any:
    for key in path:
        in_dict = isinstance(mapping, dict) and key in mapping
        in_list = isinstance(mapping, list) and isinstance(key, int) and 0 <= key < len(mapping)
        if not (in_dict or in_list):
            return None
        mapping = mapping[key]
    return mapping


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


# ------------------------------------------------------------------------------------------ metrics
def flatten_metrics(metrics: dict[str, Any], prefix: tuple[Any, ...] = ()) -> tuple[list[tuple[tuple, Any]], list[tuple[tuple, list]], list[tuple[tuple, Any]]]:
    """(scalars, lists of scalars, anything else) with their JSON paths, in document order."""
    scalars: list[tuple[tuple, Any]] = []
    lists: list[tuple[tuple, list]] = []
    other: list[tuple[tuple, Any]] = []
    for key, value in metrics.items():
        path = (*prefix, key)
        if isinstance(value, dict):
            s, li, o = flatten_metrics(value, path)
            scalars += s
            lists += li
            other += o
        elif _is_scalar(value) or value == []:  # an empty list reads best as one row: "[]"
            scalars.append((path, value))
        elif isinstance(value, list) and all(_is_scalar(v) for v in value):
            lists.append((path, value))
        else:
            other.append((path, value))
    return scalars, lists, other


def metrics_view(folder: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Every metric of a result: scalars (one row each), per-layer lists (one row each, one column per
    layer), anything else as JSON."""
    scalars, lists, other = flatten_metrics(metrics)
    index_labels = metrics.get("layers") if isinstance(metrics.get("layers"), list) else None
    by_length: dict[int, list[tuple[tuple, list]]] = {}
    for path, values in lists:
        if path != ("layers",):
            by_length.setdefault(len(values), []).append((path, values))
    groups = []
    for length, group in by_length.items():
        labels = index_labels if index_labels is not None and len(index_labels) == length else list(range(length))
        groups.append({"head": "per layer" if labels is index_labels else "index", "labels": labels,
                       "rows": [(".".join(map(str, path)), [cell(folder, (*path, i), v) for i, v in enumerate(values)]) for path, values in group]})
    return {"scalars": [(".".join(map(str, path)), cell(folder, path, value)) for path, value in scalars], "lists": groups,
            "other": [(".".join(map(str, path)), json.dumps(value)) for path, value in other]}


# ------------------------------------------------------------------------------------------ paper
def paper_view(experiment: str) -> dict[str, Any] | None:
    table = {"behavior": paper.BEHAVIOR, "ablate-vision": paper.ABLATE_VISION, "amplify": paper.AMPLIFY}.get(experiment)
    pattern = paper.PATTERNS.get(experiment)
    chance = paper.ABLATE_VISION_CHANCE if experiment == "ablate-vision" else None
    if not (table or pattern or chance is not None):
        return None
    columns = list(dict.fromkeys(k for values in table.values() for k in values)) if table else []
    rows = [(model, [_shown(values.get(c, "–")) for c in columns]) for model, values in (table or {}).items()]
    return {"pattern": pattern, "columns": columns, "rows": rows, "chance": chance}


def _paper_models(table: dict[str, dict[str, Any]], key: str) -> str:
    """'Qwen2-VL-7B 1.00 · Gemma-3-4B 0.98 · ...' for one column of a paper table."""
    return " · ".join(f"{model} {values[key]:.2f}" for model, values in table.items() if key in values)


AMPLIFY_ROWS = (("baseline_accuracy", "accuracy, no intervention", "none"),
                ("random_accuracy", "accuracy, random direction", "random"),
                ("accuracy", "accuracy, ordering amplification (best alpha)", "amplified"),
                ("oracle_accuracy", "accuracy, per-item best alpha (Probe*)", None),
                ("fails_fixed", "baseline failures fixed by amplification", "fails_fixed"),
                ("random_fails_fixed", "baseline failures fixed by random", "random_fails_fixed"),
                ("best_alpha", "best alpha", None))


def summary_rows(run: Run) -> list[dict[str, Any]]:
    """Our headline numbers beside the paper's, one row per quantity (rows without a number are left out)."""
    rows: list[dict[str, Any]] = []
    results = run.results

    def row(label: str, folder: str, path: Sequence[Any], paper_text: str) -> None:
        value = _get((results.get(folder) or {}).get("metrics"), path)
        if value is not None and _is_scalar(value):
            rows.append({"label": label, "cell": cell(folder, path, value), "paper": paper_text})

    for entry in run.entries:
        if entry.experiment == "behavior" and entry.result is not None:
            task = str(entry.result.get("task"))
            row(f"accuracy on {task}", entry.folder, ("accuracy",), _paper_models(paper.BEHAVIOR, task) or "(no paper number)")
            row(f"chance on {task}", entry.folder, ("chance",), "")
    for entry in run.entries:
        if entry.result is None:
            continue
        metrics = entry.result.get("metrics") or {}
        if entry.experiment == "probe":
            for axis in metrics.get("accuracy") or {}:
                row(f"probe test accuracy, {axis}", entry.folder, ("accuracy", axis), "~1.0 on synthetic tasks, ~0.95 on What'sUp")
                row(f"probe background agreement, {axis}", entry.folder, ("background_agreement", axis),
                    "well above chance: the strips' background carries the position")
        elif entry.experiment == "ablate-vision":
            for task in metrics.get("accuracy") or {}:
                row(f"accuracy before ablation, {task}", entry.folder, ("baseline_accuracy", task), "")
                row(f"accuracy after vision ablation, {task}", entry.folder, ("accuracy", task),
                    f"{_paper_models(paper.ABLATE_VISION, task)} (chance {paper.ABLATE_VISION_CHANCE})")
        elif entry.experiment in ("criss-cross", "backup"):
            region = metrics.get("region", "")
            expected = {("criss-cross", "object"): "no flip at any layer", ("criss-cross", "strip"): "flips from the embeddings up to ~layer 24",
                        ("backup", "object"): "flips at middle layers (~11-20 of 28)"}.get((entry.experiment, region), "")
            row(f"max flip rate ({region} swap{' under ablation' if entry.experiment == 'backup' else ''})", entry.folder,
                ("max_flip_rate",), expected)
            if entry.experiment == "backup":
                row(f"pairs answered under the vision ablation (of {_get(metrics, ('pairs', 'candidates'))})", entry.folder,
                    ("kept_pairs",), "some: its models keep 0.43-0.64 accuracy under the ablation (Table 5)")
        elif entry.experiment == "amplify":
            task, protocol = entry.result.get("task"), _protocol(entry.result)
            for key, label, ref_key in AMPLIFY_ROWS:
                text = f"COCO-spatial: {_paper_models(paper.AMPLIFY, ref_key)}" if ref_key else ""
                row(f"{label} ({task}, {protocol} protocol)", entry.folder, (key,), text)
    return rows


def _protocol(result: dict[str, Any]) -> str:
    return str((result.get("config") or {}).get("protocol") or "paper")


def amplify_sides(run: Run) -> dict[str, Any] | None:
    """When the run holds amplification under both protocols: one column per (task, protocol) result."""
    done = [e for e in run.entries if e.experiment == "amplify" and e.result is not None]
    if len({_protocol(e.result or {}) for e in done}) < 2:
        return None
    done.sort(key=lambda e: (str((e.result or {}).get("task")), _protocol(e.result or {}) != "paper"))
    columns = [f"{(e.result or {}).get('task')}, {_protocol(e.result or {})}" for e in done]
    rows = []
    for key, label, ref_key in AMPLIFY_ROWS:
        cells = [cell(e.folder, (key,), (e.result or {}).get("metrics", {}).get(key)) if key in (e.result or {}).get("metrics", {}) else None
                 for e in done]
        rows.append((label, cells, _paper_models(paper.AMPLIFY, ref_key) if ref_key else ""))
    return {"columns": columns, "rows": rows}


def protocol_view(run: Run) -> dict[str, str]:
    """The protocol named at the top: reproduce's, or the one the result folders ran under."""
    name = (run.manifest or {}).get("protocol")
    if name is None:
        seen = sorted({_protocol(r) for r in run.results.values()})
        name = seen[0] if len(seen) == 1 else ("both" if seen else "paper")
    return {"name": str(name), "text": PROTOCOL_TEXT.get(str(name), "")}


# ------------------------------------------------------------------------------------------ figures
def _img(path: Path, href: str, alt: str) -> dict[str, str]:
    return {"href": href, "alt": alt, "src": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()}


def _pngs(root: Path, entry: Entry) -> list[tuple[Path, str]]:
    names = [n for n in (entry.result or {}).get("figures", []) if str(n).endswith(".png")]
    return [(root / entry.folder / n, f"{entry.folder}/{n}") for n in names if (root / entry.folder / n).is_file()]


def behavior_figure(run: Run) -> dict[str, str] | None:
    """Accuracy per task (bars), chance (dashed) and Qwen2-VL-7B's Table 1 (diamonds), drawn from the
    behavior results into RUN_DIR/report_figures/."""
    done = [e for e in run.entries if e.experiment == "behavior" and e.result is not None]
    if not done:
        return None
    from spatialmech.plotting import plot_accuracy_bars

    tasks = [str(e.result["task"]) for e in done]
    values = [float(e.result["metrics"]["accuracy"]) for e in done]
    chance = [float(e.result["metrics"].get("chance") or 0.0) for e in done]
    reference = [paper.BEHAVIOR["Qwen2-VL-7B"].get(t) for t in tasks]
    stem = run.root / SUMMARY_FIGURES_DIR / "behavior_accuracy"
    stem.parent.mkdir(parents=True, exist_ok=True)
    plot_accuracy_bars(tasks, values, stem, f"behavior: accuracy per task ({done[0].result.get('model')})",
                       chance=chance, reference=reference)
    return _img(stem.with_suffix(".png"), f"{SUMMARY_FIGURES_DIR}/behavior_accuracy.png", "behavior accuracy")


def gallery(run: Run, behavior_png: dict[str, str] | None) -> list[dict[str, Any]]:
    """The main figures up front: one per finished step (behavior: the per-task summary)."""
    cells = [{"figure": {**behavior_png, "alt": "behavior"}, "anchor": "behavior-section", "label": "behavior"}] if behavior_png else []
    for entry in run.entries:
        pngs = _pngs(run.root, entry) if entry.experiment != "behavior" else []
        if pngs:
            cells.append({"figure": _img(pngs[0][0], pngs[0][1], entry.folder), "anchor": entry.folder, "label": entry.folder})
    return cells


# ------------------------------------------------------------------------------------------ sections
def _csv_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def step_view(run: Run, entry: Entry) -> dict[str, Any]:
    view: dict[str, Any] = {"behavior": False, "folder": entry.folder, "experiment": entry.experiment, "task": entry.task, "what": entry.what,
                            "status": entry.status, "missing": entry.result is None}
    if entry.result is None:
        view["reason"] = entry.error or {"not run": "the run stopped before this step",
                                         "interrupted": "the run was interrupted during this step"}.get(entry.status, entry.status)
        return view
    result, folder = entry.result, run.root / entry.folder
    prov = result.get("provenance", {})
    bits = [f"started {prov.get('started_at')}", f"finished {prov.get('finished_at')}", f"seed {prov.get('seed')}",
            f"device {prov.get('device')}", f"git {prov.get('git_revision')}"] + ([f"took {entry.seconds:.1f}s"] if entry.seconds is not None else [])
    view.update({
        "figures": [_img(path, href, path.name) for path, href in _pngs(run.root, entry)],
        "metrics": metrics_view(entry.folder, result.get("metrics", {})),
        "paper": paper_view(entry.experiment),
        "tables": [{"name": name, "file": file, **csv_table(_csv_rows(folder / file))}
                   for name, file in (result.get("tables") or {}).items() if (folder / file).is_file()],
        "config": json.dumps(result.get("config", {}), sort_keys=True),
        "provenance": "; ".join(bits),
        "files": ["result.json", *sorted(p.name for p in folder.glob("*") if p.is_file() and p.name != "result.json")],
    })
    return view


def behavior_view(run: Run, entries: list[Entry], figure: dict[str, str] | None) -> dict[str, Any]:
    """All behavior steps in one section: the per-task figure, one table beside Table 1, then each task."""
    models = list(paper.BEHAVIOR)
    rows = []
    for entry in entries:
        task = str(entry.result.get("task")) if entry.result else (entry.task or "")
        row: dict[str, Any] = {"task": task, "folder": entry.folder, "status": entry.status, "missing": entry.result is None,
                               "paper": [_shown(paper.BEHAVIOR[m].get(task, "–")) for m in models]}
        if entry.result is not None:
            metrics = entry.result.get("metrics", {})
            row["cells"] = [cell(entry.folder, (key,), metrics.get(key)) for key in ("accuracy", "n", "chance")]
        rows.append(row)
    return {"behavior": True, "figure": figure, "models": models, "rows": rows, "steps": [step_view(run, e) for e in entries]}


def run_rows(run: Run) -> list[dict[str, Any]]:
    return [{"folder": e.folder, "experiment": e.experiment, "task": e.task, "status": e.status,
             "cls": "status-done" if e.finished else "status-failed", "error": e.error or "",
             "took": "" if e.seconds is None else f"{e.seconds:.1f}s",
             "estimated": "" if e.estimated_seconds is None else f"{e.estimated_seconds:.0f}s"} for e in run.entries]


def banner(run: Run) -> dict[str, str] | None:
    if run.manifest is None:
        return None
    missing = [e for e in run.entries if not e.finished]
    if not missing:
        return {"cls": "ok", "text": f"Complete: all {len(run.entries)} steps finished."}
    return {"cls": "bad", "head": f"INCOMPLETE: {len(missing)} of {len(run.entries)} steps have no result",
            "text": ", ".join(f"{e.folder} ({e.status})" for e in missing)}


def run_facts(run: Run) -> str:
    manifest = run.manifest
    if manifest is None:
        return "Result folders written by spatialmech run (no reproduce plan)."
    mode = "quick (small samples, see each step's config)" if manifest.get("quick") else "full (the paper's sample sizes)"
    bits = [f"mode: {mode}", f"seed {manifest.get('seed')}", f"started {manifest.get('started_at')}"]
    if manifest.get("seconds") is not None:
        bits.append(f"took {manifest['seconds']:.0f}s")
    if manifest.get("data"):
        bits.append(f"data {manifest['data']}")
    bits += [f"{name} skipped: {why}" for name, why in (manifest.get("data_tasks_missing") or {}).items()]
    return "; ".join(bits)


def _template() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=False)
    return env.get_template(TEMPLATE)


def build_report(run_dir: str | Path, title: str = "spatialmech report") -> Path:
    """Write RUN_DIR/report.html from the result files in RUN_DIR (and RUN_DIR/reproduce.json)."""
    run = load_run(run_dir)
    identity = check_consistent(run.results)
    fingerprint = identity["fingerprint"] or {}
    behavior_png = behavior_figure(run)
    behavior_entries = [e for e in run.entries if e.experiment == "behavior"]
    sections = []
    for entry in run.entries:
        if entry.experiment != "behavior":
            sections.append(step_view(run, entry))
        elif entry is behavior_entries[0]:
            sections.append(behavior_view(run, behavior_entries, behavior_png))
    prov = next(iter(run.results.values()), {}).get("provenance", {})
    provenance = csv_table([{"field": k, "value": json.dumps(v) if isinstance(v, dict) else v} for k, v in prov.items()])
    page = _template().render(
        title=title, style=_STYLE, protocol=protocol_view(run), model=identity["model"], family=fingerprint.get("family"),
        sha=str(fingerprint.get("sha256", ""))[:16], facts=run_facts(run), banner=banner(run), toc=[e.folder for e in run.entries],
        gallery=gallery(run, behavior_png) if run.results else [], summary=summary_rows(run), amplify_sides=amplify_sides(run),
        runs=run_rows(run) if run.manifest is not None else [], sections=sections, others=run.others, provenance=provenance)
    return atomic_write_text(Path(run_dir) / REPORT_FILE, page)

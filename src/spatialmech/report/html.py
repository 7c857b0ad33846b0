"""One self-contained `report.html` from a run folder's result files.

The report reads only the result files (result.json, CSV tables, PNG figures, and `reproduce.json`
when `spatialmech reproduce` wrote the folder) — never recomputes — so the numbers people read are the
numbers on disk: every number of ours in a table carries `data-src` (result folder), `data-key` (JSON
path inside `metrics`) and `data-value` (the exact value) so that anyone (and the tests) can check it
against result.json. Figures are inlined (base64) so the file can be mailed around; links point at the
result files next to it. Results from different models or data are refused, never mixed. Steps of a
reproduce run that failed or never ran are marked as such, so an incomplete run never looks complete.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spatialmech import reference as paper
from spatialmech.catalog import EXPERIMENTS
from spatialmech.errors import UserInputError
from spatialmech.io import atomic_write_text, read_json

MANIFEST_FILE = "reproduce.json"
REPORT_FILE = "report.html"
SUMMARY_FIGURES_DIR = "report_figures"
EXPERIMENT_ORDER = EXPERIMENTS  # the paper's order, from the one experiment registry
MAX_TABLE_ROWS = 40
FINISHED = ("done", "reused")

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


# ------------------------------------------------------------------------------------------ loading
@dataclass
class Entry:
    """One planned step (or one result folder when there is no reproduce.json) and its result."""

    folder: str
    experiment: str
    task: str | None
    status: str
    result: dict[str, Any] | None
    what: str = ""
    error: str | None = None
    seconds: float | None = None
    estimated_seconds: float | None = None

    @property
    def finished(self) -> bool:
        return self.result is not None


@dataclass
class Run:
    root: Path
    entries: list[Entry]
    manifest: dict[str, Any] | None
    others: list[str] = field(default_factory=list)  # result folders that are not part of the reproduce plan

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        return {e.folder: e.result for e in self.entries if e.result is not None}


def collect_results(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """result.json of every finished experiment under run_dir (keyed by folder name)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserInputError(f"run folder {root} does not exist", "pass the --out folder of a reproduce or run command")
    return {path.parent.name: read_json(path, "result file") for path in sorted(root.glob("*/result.json"))}


def load_run(run_dir: str | Path) -> Run:
    """The run's steps in order, each with its result (None when it failed or did not finish)."""
    root = Path(run_dir)
    results = collect_results(root)
    manifest_path = root / MANIFEST_FILE
    if manifest_path.is_file():
        manifest = read_json(manifest_path, "reproduce manifest")
        entries = []
        for step in manifest.get("steps", []):
            status, result = str(step.get("status")), results.get(step["folder"])
            if status == "failed":
                result = None  # shown as failed even if an older result.json survived
            elif result is not None:
                status = status if status in FINISHED else "done"  # result.json is written last: the step finished
            else:
                status = {"running": "interrupted", "interrupted": "interrupted", "pending": "not run"}.get(status, "result.json missing")
            entries.append(Entry(step["folder"], step["experiment"], step.get("task"), status, result, step.get("what", ""),
                                 step.get("error"), step.get("seconds"), step.get("estimated_seconds")))
        planned = {e.folder for e in entries}
        return Run(root, entries, manifest, sorted(f for f in results if f not in planned))
    if not results:
        raise UserInputError(f"{root} holds no finished experiment results", "run `spatialmech reproduce` or `spatialmech run` first")
    entries = [Entry(name, str(r.get("experiment", name)), r.get("task"), "done", r) for name, r in results.items()]
    entries.sort(key=lambda e: (_order(e.experiment), e.folder))
    return Run(root, entries, None)


def _order(experiment: str) -> int:
    return EXPERIMENT_ORDER.index(experiment) if experiment in EXPERIMENT_ORDER else len(EXPERIMENT_ORDER)


def check_consistent(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Refuse to mix results from different models or different data; return the shared identity."""
    if not results:
        return {"model": None, "fingerprint": None}
    models = {name: json.dumps(r.get("model_fingerprint", {}).get("sha256")) for name, r in results.items()}
    if len(set(models.values())) > 1:
        groups: dict[str, list[str]] = {}
        for name, key in models.items():
            groups.setdefault(key, []).append(name)
        raise UserInputError(
            f"results come from different models ({'; '.join(', '.join(v) for v in groups.values())})",
            "report each model's run folder separately",
        )
    data: dict[str, tuple[str, str]] = {}
    for name, result in results.items():
        files = (result.get("inputs") or {}).get("files")
        if files:
            for file, digest in files.items():
                if data.setdefault(file, (digest, name))[0] != digest:
                    raise UserInputError(
                        f"results {data[file][1]} and {name} used different versions of {file}",
                        "rerun them on the same data, or report them separately",
                    )
    first = next(iter(results.values()))
    return {"model": first.get("model"), "fingerprint": first.get("model_fingerprint")}


# ------------------------------------------------------------------------------------------ cells
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def format_value(value: Any) -> str:
    """How a number is shown: 3 decimals for fractions, integers as they are (data-value keeps it exact)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def our_cell(folder: str, path: Sequence[Any], value: Any) -> str:
    """A <td> holding one of our numbers, traceable to result.json: data-src, data-key, data-value."""
    return (f"<td class=ours data-src='{_esc(folder)}' data-key='{_esc(json.dumps(list(path)))}' "
            f"data-value='{_esc(json.dumps(value))}'>{_esc(format_value(value))}</td>")


def _plain_cell(value: Any, cls: str = "") -> str:
    attr = f" class={cls}" if cls else ""
    return f"<td{attr}>{_esc(format_value(value) if isinstance(value, (int, float)) else value)}</td>"


def _csv_value(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _table(rows: list[dict[str, Any]], limit: int = MAX_TABLE_ROWS) -> str:
    if not rows:
        return "<p class=small>(empty)</p>"
    columns = list(rows[0])
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_plain_cell(_csv_value(str(row.get(c, "")))) for c in columns) + "</tr>" for row in rows[:limit])
    more = f"<p class=small>{len(rows) - limit} more rows in the CSV.</p>" if len(rows) > limit else ""
    return f"<div class=wide><table><tr>{head}</tr>{body}</table></div>{more}"


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


def metrics_tables(folder: str, metrics: dict[str, Any]) -> str:
    """Every metric of a result: scalars (one row each), per-layer lists (one row each, one column per
    layer), anything else as JSON."""
    scalars, lists, other = flatten_metrics(metrics)
    parts = []
    if scalars:
        rows = "".join(f"<tr><td>{_esc('.'.join(map(str, path)))}</td>{our_cell(folder, path, value)}</tr>" for path, value in scalars)
        parts.append(f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>")
    index_labels = metrics.get("layers") if isinstance(metrics.get("layers"), list) else None
    by_length: dict[int, list[tuple[tuple, list]]] = {}
    for path, values in lists:
        if path == ("layers",):
            continue
        by_length.setdefault(len(values), []).append((path, values))
    for length, group in by_length.items():
        labels = index_labels if index_labels is not None and len(index_labels) == length else list(range(length))
        head = "<th>per layer</th>" if labels is index_labels else "<th>index</th>"
        head += "".join(f"<th>{_esc(label)}</th>" for label in labels)
        body = "".join(
            f"<tr><td>{_esc('.'.join(map(str, path)))}</td>" + "".join(our_cell(folder, (*path, i), v) for i, v in enumerate(values)) + "</tr>"
            for path, values in group
        )
        parts.append(f"<div class=wide><table><tr>{head}</tr>{body}</table></div>")
    for path, value in other:
        parts.append(f"<p class=small>{_esc('.'.join(map(str, path)))}: <code>{_esc(json.dumps(value))}</code></p>")
    return "".join(parts) or "<p class=small>(no metrics)</p>"


# ------------------------------------------------------------------------------------------ paper
def _paper_block(experiment: str) -> str:
    parts = []
    if experiment in paper.PATTERNS:
        parts.append(f"<p>{_esc(paper.PATTERNS[experiment])}</p>")
    table = {"behavior": paper.BEHAVIOR, "ablate-vision": paper.ABLATE_VISION, "amplify": paper.AMPLIFY}.get(experiment)
    if table:
        columns = list(dict.fromkeys(k for values in table.values() for k in values))
        head = "<th>model</th>" + "".join(f"<th>{_esc(c)}</th>" for c in columns)
        body = "".join("<tr><td>" + _esc(model) + "</td>" + "".join(_plain_cell(values.get(c, "–")) for c in columns) + "</tr>"
                       for model, values in table.items())
        parts.append(f"<table><tr>{head}</tr>{body}</table>")
    if experiment == "ablate-vision":
        parts.append(f"<p class=small>chance {paper.ABLATE_VISION_CHANCE}</p>")
    return "<div class=paper><b>Paper</b>" + "".join(parts) + "</div>" if parts else ""


def _paper_columns(values: Iterable[Any]) -> str:
    return "".join(f"<td class=paper>{_esc(format_value(v) if isinstance(v, (int, float)) else v)}</td>" for v in values)


def _paper_models(table: dict[str, dict[str, Any]], key: str) -> str:
    """'Qwen2-VL-7B 1.00 · Gemma-3-4B 0.98 · ...' for one column of a paper table."""
    return " · ".join(f"{model} {values[key]:.2f}" for model, values in table.items() if key in values)


def summary_table(run: Run) -> str:
    """Our headline numbers beside the paper's, one row per quantity (rows without a number are left out)."""
    rows: list[str] = []
    results = run.results

    def row(label: str, folder: str, path: Sequence[Any], paper_text: str) -> None:
        value = _get((results.get(folder) or {}).get("metrics"), path)
        if value is None or not _is_scalar(value):
            return
        link = f"<a href='#{_esc(folder)}'>{_esc(folder)}</a>"
        rows.append(f"<tr><td>{link}</td><td class=text>{_esc(label)}</td>{our_cell(folder, path, value)}"
                    f"<td class='paper text'>{_esc(paper_text)}</td></tr>")

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
            task = entry.result.get("task")
            for key, label, ref_key in (("baseline_accuracy", "accuracy, no intervention", "none"),
                                        ("random_accuracy", "accuracy, random direction", "random"),
                                        ("accuracy", "accuracy, ordering amplification (best alpha)", "amplified"),
                                        ("oracle_accuracy", "accuracy, per-item best alpha (Probe*)", None),
                                        ("fails_fixed", "baseline failures fixed by amplification", "fails_fixed"),
                                        ("random_fails_fixed", "baseline failures fixed by random", "random_fails_fixed"),
                                        ("best_alpha", "best alpha", None)):
                text = f"COCO-spatial: {_paper_models(paper.AMPLIFY, ref_key)}" if ref_key else ""
                row(f"{label} ({task})", entry.folder, (key,), text)
    if not rows:
        return ""
    head = "<tr><th>result</th><th>quantity</th><th>ours</th><th class=paper>paper (its models)</th></tr>"
    return f"<div class=wide><table>{head}{''.join(rows)}</table></div>"


# ------------------------------------------------------------------------------------------ figures
def _img(path: Path, href: str, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<a href='{_esc(href)}'><img alt='{_esc(alt)}' src='data:image/png;base64,{data}'></a>"


def _pngs(root: Path, entry: Entry) -> list[tuple[Path, str]]:
    names = [n for n in (entry.result or {}).get("figures", []) if str(n).endswith(".png")]
    return [(root / entry.folder / n, f"{entry.folder}/{n}") for n in names if (root / entry.folder / n).is_file()]


def behavior_figure(run: Run) -> tuple[Path, str] | None:
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
    return stem.with_suffix(".png"), f"{SUMMARY_FIGURES_DIR}/behavior_accuracy.png"


def gallery(run: Run, behavior_png: tuple[Path, str] | None) -> str:
    """The main figures up front: one per finished step (behavior: the per-task summary)."""
    cells = []
    if behavior_png is not None:
        cells.append(f"<figure>{_img(*behavior_png, 'behavior')}<figcaption><a href='#behavior-section'>behavior</a></figcaption></figure>")
    for entry in run.entries:
        if entry.experiment == "behavior":
            continue
        pngs = _pngs(run.root, entry)
        if pngs:
            path, href = pngs[0]
            cells.append(f"<figure>{_img(path, href, entry.folder)}<figcaption><a href='#{_esc(entry.folder)}'>{_esc(entry.folder)}</a></figcaption></figure>")
    return f"<div class=gallery>{''.join(cells)}</div>" if cells else ""


# ------------------------------------------------------------------------------------------ sections
def _csv_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _files_line(root: Path, entry: Entry) -> str:
    folder = root / entry.folder
    names = ["result.json", *sorted(p.name for p in folder.glob("*") if p.is_file() and p.name != "result.json")]
    return "<p class=small>files: " + " · ".join(f"<a href='{_esc(entry.folder)}/{_esc(n)}'>{_esc(n)}</a>" for n in names) + "</p>"


def _missing(entry: Entry) -> str:
    reason = entry.error or {"not run": "the run stopped before this step", "interrupted": "the run was interrupted during this step"}.get(
        entry.status, entry.status)
    return (f"<div class=missing><b class=status-failed>MISSING: {_esc(entry.folder)} ({_esc(entry.status)})</b> — "
            f"{_esc(reason)}. No result is shown for it; rerun with <code>--resume</code> to finish it.</div>")


def _provenance_line(entry: Entry) -> str:
    prov = (entry.result or {}).get("provenance", {})
    bits = [f"started {prov.get('started_at')}", f"finished {prov.get('finished_at')}", f"seed {prov.get('seed')}",
            f"device {prov.get('device')}", f"git {prov.get('git_revision')}"]
    if entry.seconds is not None:
        bits.append(f"took {entry.seconds:.1f}s")
    return f"<p class=small>{_esc('; '.join(bits))}</p>"


def step_section(run: Run, entry: Entry, heading: str = "h2") -> str:
    title = f"{entry.folder} <span class=small>({_esc(entry.experiment)} on {_esc(entry.task)}{'; ' + _esc(entry.what) if entry.what else ''})</span>"
    head = f"<{heading} id='{_esc(entry.folder)}'>{title}</{heading}>"
    if entry.result is None:
        return head + _missing(entry)
    result = entry.result
    root = run.root
    figures = "".join(_img(path, href, path.name) for path, href in _pngs(root, entry))
    tables = "".join(
        f"<details><summary>table {_esc(name)} (<a href='{_esc(entry.folder)}/{_esc(file)}'>{_esc(file)}</a>)</summary>"
        f"{_table(_csv_rows(root / entry.folder / file))}</details>"
        for name, file in (result.get("tables") or {}).items()
        if (root / entry.folder / file).is_file()
    )
    config = _esc(json.dumps(result.get("config", {}), sort_keys=True))
    return (
        head + (f"<div class=figs>{figures}</div>" if figures else "")
        + f"<div class=side><div><h4>Our metrics (<a href='{_esc(entry.folder)}/result.json'>result.json</a>)</h4>"
        + metrics_tables(entry.folder, result.get("metrics", {})) + "</div>"
        + _paper_block(entry.experiment) + "</div>"
        + tables + f"<details><summary>config</summary><code>{config}</code></details>"
        + _provenance_line(entry) + _files_line(root, entry)
    )


def behavior_section(run: Run, entries: list[Entry], behavior_png: tuple[Path, str] | None) -> str:
    """All behavior steps in one section: the per-task figure, one table beside Table 1, then each task."""
    rows = []
    models = list(paper.BEHAVIOR)
    for entry in entries:
        if entry.result is None:
            rows.append(f"<tr><td>{_esc(entry.task)}</td><td colspan=3 class=status-failed>missing ({_esc(entry.status)})</td>"
                        + _paper_columns(paper.BEHAVIOR[m].get(entry.task or "", "–") for m in models) + "</tr>")
            continue
        metrics = entry.result.get("metrics", {})
        task = entry.result.get("task")
        rows.append(f"<tr><td><a href='#{_esc(entry.folder)}'>{_esc(task)}</a></td>" + our_cell(entry.folder, ("accuracy",), metrics.get("accuracy"))
                    + our_cell(entry.folder, ("n",), metrics.get("n")) + our_cell(entry.folder, ("chance",), metrics.get("chance"))
                    + _paper_columns(paper.BEHAVIOR[m].get(task, "–") for m in models) + "</tr>")
    head = "<tr><th>task</th><th>accuracy</th><th>n</th><th>chance</th>" + "".join(f"<th class=paper>{_esc(m)}</th>" for m in models) + "</tr>"
    figure = f"<div class=figs>{_img(*behavior_png, 'behavior accuracy')}</div>" if behavior_png else ""
    intro = ("<h2 id='behavior-section'>behavior <span class=small>(paper Table 1: accuracy per task; "
             "forced-choice tasks are scored strictly, in both option orders)</span></h2>")
    details = "".join(f"<details><summary>{_esc(e.folder)} details</summary>{step_section(run, e, 'h3')}</details>" for e in entries)
    return intro + figure + f"<table>{head}{''.join(rows)}</table>" + details


def run_table(run: Run) -> str:
    rows = []
    for index, entry in enumerate(run.entries, 1):
        cls = "status-done" if entry.finished else "status-failed"
        took = "" if entry.seconds is None else f"{entry.seconds:.1f}s"
        est = "" if entry.estimated_seconds is None else f"{entry.estimated_seconds:.0f}s"
        rows.append(f"<tr><td>{index}</td><td><a href='#{_esc(entry.folder)}'>{_esc(entry.folder)}</a></td><td>{_esc(entry.experiment)}</td>"
                    f"<td>{_esc(entry.task)}</td><td class={cls}>{_esc(entry.status)}</td><td>{est}</td><td>{took}</td>"
                    f"<td class=text>{_esc(entry.error or '')}</td></tr>")
    head = "<tr><th>#</th><th>step</th><th>experiment</th><th>task</th><th>status</th><th>estimated</th><th>took</th><th>error</th></tr>"
    return f"<div class=wide><table>{head}{''.join(rows)}</table></div>"


def _banner(run: Run) -> str:
    missing = [e for e in run.entries if not e.finished]
    if not missing:
        return f"<div class='banner ok'>Complete: all {len(run.entries)} steps finished.</div>"
    names = ", ".join(f"{e.folder} ({e.status})" for e in missing)
    return (f"<div class='banner bad'><b>INCOMPLETE: {len(missing)} of {len(run.entries)} steps have no result</b>: {_esc(names)}. "
            f"They are marked below; numbers shown are only from the steps that finished.</div>")


def _run_facts(run: Run) -> str:
    manifest = run.manifest
    if manifest is None:
        return "<p class=small>Result folders written by <code>spatialmech run</code> (no reproduce plan).</p>"
    mode = "quick (small samples, see each step's config)" if manifest.get("quick") else "full (the paper's sample sizes)"
    bits = [f"mode: {mode}", f"seed {manifest.get('seed')}", f"started {manifest.get('started_at')}"]
    if manifest.get("seconds") is not None:
        bits.append(f"took {manifest['seconds']:.0f}s")
    if manifest.get("data"):
        bits.append(f"data {manifest['data']}")
    for name, why in (manifest.get("data_tasks_missing") or {}).items():
        bits.append(f"{name} skipped: {why}")
    return f"<p class=small>{_esc('; '.join(bits))}</p>"


def build_report(run_dir: str | Path, title: str = "spatialmech report") -> Path:
    """Write RUN_DIR/report.html from the result files in RUN_DIR (and RUN_DIR/reproduce.json)."""
    run = load_run(run_dir)
    identity = check_consistent(run.results)
    fingerprint = identity["fingerprint"] or {}
    behavior_png = behavior_figure(run)
    behavior_entries = [e for e in run.entries if e.experiment == "behavior"]
    sections = []
    for entry in run.entries:
        if entry.experiment == "behavior":
            if entry is behavior_entries[0]:
                sections.append(behavior_section(run, behavior_entries, behavior_png))
            continue
        sections.append(step_section(run, entry))
    toc = " · ".join(f"<a href='#{_esc(e.folder)}'>{_esc(e.folder)}</a>" for e in run.entries)
    first = next(iter(run.results.values()), {})
    prov = first.get("provenance", {})
    provenance_rows = [{"field": k, "value": json.dumps(v) if isinstance(v, dict) else v} for k, v in prov.items()]
    others = ""
    if run.others:
        others = ("<p class=small>Also in this folder but not part of this reproduce run (not shown): "
                  + ", ".join(f"<a href='{_esc(o)}/result.json'>{_esc(o)}</a>" for o in run.others) + "</p>")
    summary = summary_table(run)
    body = (
        f"<h1>{_esc(title)}</h1>"
        f"<p>Model <code>{_esc(identity['model'])}</code> (family {_esc(fingerprint.get('family'))}, weights sha256 "
        f"<code>{_esc(str(fingerprint.get('sha256', ''))[:16])}…</code>). Every number of ours below is read from the result "
        f"files beside this report (hover a number: its exact value is in the cell's <code>data-value</code>).</p>"
        + _run_facts(run) + (_banner(run) if run.manifest is not None else "")
        + f"<p>{toc}</p>"
        + ("<h2 id='figures'>Main figures</h2>" + gallery(run, behavior_png) if run.results else "")
        + ("<h2 id='summary'>Our numbers beside the paper's</h2><p class=small>The paper's numbers are for its 2-12B models; "
           "a tiny bundled model is expected to show the same <i>patterns</i>, not the same values.</p>" + summary if summary else "")
        + (f"<h2 id='run'>Run</h2>{run_table(run)}" if run.manifest is not None else "")
        + "".join(sections) + others
        + f"<h2 id='provenance'>Provenance</h2>{_table(provenance_rows)}"
    )
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")
    return atomic_write_text(Path(run_dir) / REPORT_FILE, page)

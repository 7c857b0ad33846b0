"""One self-contained `report.html` from a run folder's result files.

The report reads only the result files (result.json, CSV tables, PNG figures) — never recomputes —
so the numbers people read are the numbers on disk. Figures are inlined (base64), so the file can be
mailed around; links point at the result files next to it. Results from different models or data are
refused, never mixed.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

from spatialmech.errors import UserInputError
from spatialmech.io import atomic_write_text, read_json
from spatialmech.report import paper

EXPERIMENT_ORDER = ("behavior", "last-token", "probe", "criss-cross", "criss-cross-strip", "ablate-vision", "backup", "amplify")
MAX_TABLE_ROWS = 40

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:1em}.figs img{max-width:520px;border:1px solid #eee}
.side{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}.paper{background:#f8f6ee;padding:.5em 1em;border-left:3px solid #c9b458}
.small{font-size:.8em;color:#555}code{background:#f4f4f4;padding:0 .2em}
"""


def collect_results(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """result.json of every finished experiment under run_dir (keyed by folder name)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserInputError(f"run folder {root} does not exist", "pass the --out folder of a reproduce or run command")
    results = {}
    for path in sorted(root.glob("*/result.json")):
        results[path.parent.name] = read_json(path, "result file")
    if not results:
        raise UserInputError(f"{root} holds no finished experiment results", "run `spatialmech reproduce` or `spatialmech run` first")
    return results


def check_consistent(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Refuse to mix results from different models or different data; return the shared identity."""
    models = {name: json.dumps(r.get("model_fingerprint", {}).get("sha256")) for name, r in results.items()}
    if len(set(models.values())) > 1:
        groups: dict[str, list[str]] = {}
        for name, key in models.items():
            groups.setdefault(key, []).append(name)
        raise UserInputError(
            f"results come from different models ({'; '.join(', '.join(v) for v in groups.values())})",
            "report each model's run folder separately",
        )
    data = {}
    for name, result in results.items():
        root = (result.get("inputs") or {}).get("files")
        if root:
            for file, digest in root.items():
                if data.setdefault(file, (digest, name))[0] != digest:
                    raise UserInputError(
                        f"results {data[file][1]} and {name} used different versions of {file}",
                        "rerun them on the same data, or report them separately",
                    )
    first = next(iter(results.values()))
    return {"model": first.get("model"), "fingerprint": first.get("model_fingerprint")}


def _esc(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]], limit: int = MAX_TABLE_ROWS) -> str:
    if not rows:
        return "<p class=small>(empty)</p>"
    columns = list(rows[0])
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(_num(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows[:limit])
    more = f"<p class=small>{len(rows) - limit} more rows in the CSV.</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _num(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            return value
    return value


def _metrics_rows(metrics: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows.extend(_metrics_rows(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            rows.append({"metric": f"{prefix}{key}", "value": value})
    return rows


def _paper_block(name: str) -> str:
    base = name.replace("-strip", "")
    parts = []
    if base in paper.PATTERNS:
        parts.append(f"<p>{html.escape(paper.PATTERNS[base])}</p>")
    table = {"behavior": paper.BEHAVIOR, "ablate-vision": paper.ABLATE_VISION, "amplify": paper.AMPLIFY}.get(base)
    if table:
        rows = [{"model": model, **values} for model, values in table.items()]
        parts.append(_table(rows))
    if not parts:
        return ""
    return "<div class=paper><b>Paper</b>" + "".join(parts) + "</div>"


def _figures(folder: Path, names: list[str]) -> str:
    images = []
    for name in names:
        if not name.endswith(".png"):
            continue
        path = folder / name
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode()
            images.append(f'<a href="{html.escape(folder.name)}/{html.escape(name)}"><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></a>')
    return f"<div class=figs>{''.join(images)}</div>" if images else ""


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _section(name: str, result: dict[str, Any], folder: Path) -> str:
    tables = "".join(
        f"<h4>{_esc(table)} (<a href='{html.escape(folder.name)}/{html.escape(file)}'>{html.escape(file)}</a>)</h4>{_table(_csv_rows(folder / file))}"
        for table, file in (result.get("tables") or {}).items()
        if (folder / file).is_file()
    )
    config = html.escape(json.dumps(result.get("config", {}), sort_keys=True))
    return (
        f"<h2 id='{html.escape(name)}'>{html.escape(name)} <span class=small>(task {html.escape(str(result.get('task')))})</span></h2>"
        f"{_figures(folder, result.get('figures', []))}"
        f"<div class=side><div><h4>Our metrics (<a href='{html.escape(folder.name)}/result.json'>result.json</a>)</h4>"
        f"{_table(_metrics_rows(result.get('metrics', {})))}</div>{_paper_block(name)}</div>"
        f"{tables}<p class=small>config: <code>{config}</code></p>"
    )


def build_report(run_dir: str | Path, title: str = "spatialmech report") -> Path:
    """Write RUN_DIR/report.html from the result files in RUN_DIR/*/result.json."""
    root = Path(run_dir)
    results = collect_results(root)
    identity = check_consistent(results)
    order = [n for n in EXPERIMENT_ORDER if n in results] + [n for n in results if n not in EXPERIMENT_ORDER]
    first = results[order[0]]
    prov = first.get("provenance", {})
    toc = " · ".join(f"<a href='#{html.escape(n)}'>{html.escape(n)}</a>" for n in order)
    sections = "".join(_section(name, results[name], root / name) for name in order)
    provenance_rows = [{"field": k, "value": v if not isinstance(v, dict) else json.dumps(v)} for k, v in prov.items()]
    body = (
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Model <code>{html.escape(str(identity['model']))}</code> "
        f"(family {html.escape(str((identity['fingerprint'] or {}).get('family')))}, weights sha256 "
        f"<code>{html.escape(str((identity['fingerprint'] or {}).get('sha256', ''))[:16])}…</code>). "
        f"Every number below is read from the result files beside this report.</p>"
        f"<p>{toc}</p>{sections}<h2>Provenance</h2>{_table(provenance_rows)}"
    )
    page = f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    return atomic_write_text(root / "report.html", page)

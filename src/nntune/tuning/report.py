"""``nntune plots``: one self-contained HTML page comparing the best experiments.

Sections, each under its heading: the top K table, warnings, learning curves, parameter
importance, parallel coordinates, and the objective against each parameter (slice plots).
The learning curves come from ``dvc plots diff --json`` (DVC's own vega-lite specs of the
plots dvc.yaml declares, data inlined); the other charts are vega-lite specs built here,
importance from ``nntune.tuning.importance`` (Optuna's evaluators). vl-convert renders every
spec to SVG inside this process, so the page needs no network: ``dvc plots show`` HTML
loads vega from a CDN, which clusters and offline machines cannot reach.
"""

from __future__ import annotations

import html
import json
import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nntune.errors import NntuneError
from nntune.experiments import Experiment, use_this_python
from nntune.stage import artifacts
from nntune.tuning import importance
from nntune.tuning.ranking import Comparison, format_value, plain, varying_params

VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"


CURVES_HINT = (
    " (is a .gitignore rule such as `plots/` keeping dvclive/plots out of the experiments' "
    "commits? anchor it as `/plots/`; `nntune init --force` repairs the project's own)"
)


@dataclass(frozen=True)
class Section:
    """One section of the page: a heading, a sentence under it, and its charts."""

    heading: str
    specs: list[dict[str, Any]] = field(default_factory=list)  # vega-lite
    note: str = ""


@dataclass(frozen=True)
class LearningCurves:
    specs: list[dict[str, Any]]  # DVC's vega-lite specs, data inlined
    missing: list[str]  # "REV: FILE (DVC's reason)" for each curve DVC could not read


def learning_curves(root: str | Path, revs: list[str]) -> LearningCurves:
    """DVC's specs of the plots whose x axis is the epoch (``step``), for ``revs``, and
    the curves DVC reported it could not read (its JSON's ``errors``)."""
    use_this_python()
    cmd = ["dvc", "plots", "diff", "--json", *revs]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    try:
        shown = json.loads(out.stdout) if out.returncode == 0 else None
    except json.JSONDecodeError:
        shown = None
    if not isinstance(shown, dict):
        said = " / ".join(line.strip() for line in out.stderr.splitlines() if line.strip())
        raise NntuneError(f"`{' '.join(cmd)}` failed (exit {out.returncode}): {said or out.stdout}")
    specs = []
    for entries in shown.get("data", {}).values():
        for entry in entries:
            content = entry.get("content", {})
            rows = content.get("data", {}).get("values")
            # A curve no experiment logged (pretraining off everywhere) is left out.
            if entry.get("type") == "vega" and _x_field(content) == "step" and rows:
                specs.append(content)
    return LearningCurves(specs, _curve_errors(shown.get("errors", []), revs, bool(specs)))


def _curve_errors(errors: list[dict[str, Any]], revs: list[str], drew: bool) -> list[str]:
    """DVC's errors about the learning curves' files, one line per revision: ``REV: FILE,
    FILE not found``. Files that are no learning curve (the confusion matrix) are left
    out, and so, when some curve was drawn, is a file that no revision has (pretraining off
    in all of them)."""
    failed_revs: dict[str, set[str]] = {}
    for error in errors:
        failed_revs.setdefault(str(error.get("source", "")), set()).add(str(error.get("rev")))
    by_rev: dict[str, list[str]] = {}
    for error in errors:
        source = str(error.get("source") or "dvc.yaml's plots")
        if "/plots/metrics/" not in source and error.get("source"):
            continue
        if drew and failed_revs[str(error.get("source", ""))] >= set(revs):
            continue
        reason = (
            "not found"
            if error.get("type") == "FileNotFoundError"
            else f"{error.get('type', 'error')}: {' '.join(str(error.get('msg', '')).split())}"
        )
        by_rev.setdefault(str(error.get("rev", "?")), []).append(f"{source} {reason}")
    return [f"{rev}: {', '.join(problems)}" for rev, problems in by_rev.items()]


def chart_sections(comparison: Comparison, curves: list[dict[str, Any]]) -> list[Section]:
    """The page's chart sections, from the top K's learning curves and every ranked
    experiment (succeeded, finite objective) of ``comparison``."""
    ranked = comparison.ranked
    slices = objective_specs(comparison, ranked)
    return [
        Section("Learning curves", curves, "Each epoch of the top experiments (`dvc plots diff`)."),
        importance_section(comparison),
        parallel_section(comparison),
        Section(
            "Objective against each parameter",
            slices,
            f"One point per experiment ({len(ranked)}): slices through the search space.",
        ),
    ]


def importance_section(comparison: Comparison) -> Section:
    heading = "Parameter importance"
    ranked = comparison.ranked
    try:
        shares = importance.param_importances(ranked, comparison.objective, "fanova")
    except importance.TooFewExperimentsError as exc:
        message = str(exc)
        return Section(heading, [], message[:1].upper() + message[1:] + ".")
    name = importance.EVALUATOR_NAMES["fanova"]
    values = [{"parameter": k, "importance": v} for k, v in shares.items()]
    x = {"field": "importance", "type": "quantitative", "axis": {"format": "%"}}
    spec = {
        "$schema": VEGA_LITE_SCHEMA,
        "title": f"share of the variance of {comparison.objective.metric} ({name})",
        "data": {"values": values},
        "encoding": {
            "y": {"field": "parameter", "type": "nominal", "sort": "-x", "title": None},
            "x": {**x, "scale": {"domain": [0, 1]}},
        },
        "layer": [
            {"mark": {"type": "bar", "color": "#4c78a8"}},
            {
                "mark": {"type": "text", "align": "left", "dx": 4},
                "encoding": {"text": {"field": "importance", "format": ".0%"}},
            },
        ],
        "width": 360,
        "height": {"step": 28},
    }
    note = (
        f"{name} over {len(ranked)} experiments: how much of the objective's spread each "
        "parameter explains. `nntune importance --evaluator ped-anova` asks instead what "
        "sets the best 10 % apart."
    )
    return Section(heading, [spec], note)


def parallel_section(comparison: Comparison) -> Section:
    """Every ranked experiment as one line across an axis per varying parameter and the
    objective, each axis scaled to 0..1 (log where its values span two decades)."""
    heading = "Parallel coordinates"
    ranked, objective = comparison.ranked, comparison.objective
    keys = varying_params(ranked)
    if len(keys) < 2:
        return Section(heading, [], "Needs two or more parameters that vary; see the slices.")
    columns = {key: [plain(e.params.get(key)) for e in ranked] for key in keys}
    columns[objective.metric] = [float(e.metrics[objective.metric]) for e in ranked]
    ranges = {key: _axis_range(values) for key, values in columns.items()}
    axes = {f"{key} ({ranges[key]})": _normalised(values) for key, values in columns.items()}
    # Each axis label on two lines, the name over its range: one line runs into the next.
    lines = {f"{key} ({text})": [key, f"({text})"] for key, text in ranges.items()}
    rows = [
        {"experiment": e.name, "objective": columns[objective.metric][i]}
        | {title: positions[i] for title, positions in axes.items()}
        for i, e in enumerate(ranked)
    ]
    log = importance.spans_decades(columns[objective.metric])
    spec = {
        "$schema": VEGA_LITE_SCHEMA,
        "title": f"one line per experiment, coloured by {objective.metric} ({objective.direction})",
        "data": {"values": rows},
        "transform": [{"fold": [_field(t) for t in axes], "as": ["axis", "position"]}],
        "mark": {"type": "line", "strokeWidth": 1.5, "opacity": 0.8},
        "encoding": {
            "x": {
                "field": "axis",
                "type": "nominal",
                "sort": list(axes),
                "title": None,
                "axis": {
                    "labelAngle": 0,
                    "labelLimit": 0,
                    "grid": True,
                    "labelExpr": f"{json.dumps(lines)}[datum.label]",
                },
            },
            "y": {"field": "position", "type": "quantitative", "title": "scaled to 0..1"},
            "detail": {"field": "experiment"},
            "color": {
                "field": "objective",
                "type": "quantitative",
                "title": objective.metric,
                # Viridis is darkest at its low end: make that end the better one.
                "scale": {
                    "scheme": "viridis",
                    "reverse": objective.direction == "max",
                    **({"type": "log"} if log else {}),
                },
            },
            "tooltip": [{"field": "experiment"}, {"field": "objective"}],
        },
        "width": max(480, 150 * len(axes)),
        "height": 300,
    }
    return Section(heading, [spec], "Axis labels give each one's range, low at the bottom.")


def _axis_range(values: list[Any]) -> str:
    """``0.001 to 0.1, log`` for numbers, ``relu, tanh`` for categories."""
    if all(importance.is_number(v) for v in values):
        low, high = format_value(min(values)), format_value(max(values))
        return f"{low} to {high}" + (", log" if importance.spans_decades(values) else "")
    return ", ".join(_categories(values))


def _normalised(values: list[Any]) -> list[float]:
    """0..1 positions on an axis: numbers by value (log10 when they span two decades),
    anything else by its category's place in sorted order."""
    if all(importance.is_number(v) for v in values):
        scaled = [math.log10(v) for v in values] if importance.spans_decades(values) else values
        low, high = min(scaled), max(scaled)
        return [(v - low) / (high - low) if high > low else 0.5 for v in scaled]
    order = _categories(values)
    return [order.index(format_value(v)) / max(len(order) - 1, 1) for v in values]


def _categories(values: list[Any]) -> list[str]:
    return sorted({format_value(v) for v in values})


def _field(title: str) -> str:
    """Vega reads ``.`` and ``[]`` in a field name as a path: escape them."""
    return re.sub(r"([.\[\]\\])", r"\\\1", title)


def objective_specs(comparison: Comparison, experiments: list[Experiment]) -> list[dict[str, Any]]:
    """One scatter per parameter that varies among ``experiments``: the objective of each
    experiment against it."""
    metric = comparison.objective.metric
    specs = []
    for key in varying_params(experiments):
        values = [
            {
                "experiment": e.name,
                "value": plain(e.params.get(key)),
                "objective": e.metrics[metric],
            }
            for e in experiments
        ]
        numbers = [v["value"] for v in values if importance.is_number(v["value"])]
        x: dict[str, Any] = {"field": "value", "title": key}
        if len(numbers) == len(values) and len(set(numbers)) > 8:
            x["type"] = "quantitative"
            x["scale"] = {"type": "log"} if importance.spans_decades(numbers) else {"zero": False}
        else:
            # A grid has a few values per parameter: one evenly spaced column each.
            x["type"] = "ordinal"
            if len(numbers) == len(values):
                x["sort"] = sorted(set(numbers))
            else:
                values = [{**v, "value": format_value(v["value"])} for v in values]
        objectives = [float(v["objective"]) for v in values]
        log = importance.spans_decades(objectives)
        specs.append(
            {
                "$schema": VEGA_LITE_SCHEMA,
                "title": f"{metric} ({comparison.objective.direction}) vs {key}",
                "data": {"values": values},
                "mark": {"type": "point", "filled": True, "size": 80},
                "encoding": {
                    "x": x,
                    "y": {
                        "field": "objective",
                        "type": "quantitative",
                        "title": metric,
                        # Diverging rates reach losses 100x the good ones: use a log axis.
                        "scale": {"type": "log"} if log else {"zero": False},
                    },
                    "tooltip": [{"field": "experiment"}, {"field": "objective"}],
                },
                "width": 300,
                "height": 250,
            }
        )
    return specs


STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 100%; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
p.note { color: #555; max-width: 60em; }
.table-box { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: right; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; font-size: 0.9em; }
.text { text-align: left; }
td.prose { text-align: left; white-space: normal; min-width: 10em; max-width: 28em; }
tr.best { font-weight: bold; background: #e8f5e9; }
ul.advice li { margin-bottom: 0.4em; }
.chart { display: inline-block; margin: 0 1em 1em 0; padding-left: 1em; vertical-align: top; }
/* vl-convert sizes labels with its own font; a wider one in the browser must not be cut. */
.chart svg { overflow: visible; }
"""


def write_page(
    path: str | Path,
    comparison: Comparison,
    rows: list[dict[str, Any]],
    sections: list[Section],
    advice: Sequence[str] = (),
) -> None:
    """The page: the table of ``rows``, the ``advice`` (warnings about the search's
    edges, one sentence each; no section when empty), then each chart section."""
    import vl_convert as vlc

    objective = comparison.objective
    title = f"nntune: top {len(rows)} experiments by {objective.metric} ({objective.direction})"
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Top experiments</h2>", _table(rows)]
    if advice:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in advice)
        parts.append(f'<section id="advice"><h2>Warnings</h2><ul class="advice">{items}</ul>')
        parts.append("</section>")
    for section in sections:
        charts = "".join(
            f'<figure class="chart">{vlc.vegalite_to_svg(vl_spec=spec)}</figure>'
            for spec in section.specs
        )
        note = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(section.note))
        note = f'<p class="note">{note}</p>' if note else ""
        anchor = section.heading.lower().replace(" ", "-")
        parts.append(
            f'<section id="{anchor}"><h2>{html.escape(section.heading)}</h2>{note}{charts}'
            "</section>"
        )
    body = "\n".join(parts)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
{body}
</body>
</html>
"""
    artifacts.write_text(path, page)


def _table(rows: list[dict[str, Any]]) -> str:
    """The rows in a box that scrolls sideways when the table is wider than the window."""
    if not rows:
        return "<p>no experiments</p>"
    # Text columns (experiment, diagnosis) read from the left, numbers from the right; a
    # header may wrap after a dot or underscore: model.<wbr>units, test_<wbr>accuracy.
    text = {c for c in rows[0] if all(isinstance(row.get(c), str) for row in rows)}
    align = {c: ' class="text"' if c in text else "" for c in rows[0]}
    head = "".join(f"<th{align[c]}>{_breakable(html.escape(str(c)))}</th>" for c in rows[0])
    body = []
    for row in rows:
        cells = "".join(_cell(v) for v in row.values())
        css = ' class="best"' if row.get("rank") == 1 else ""
        body.append(f"<tr{css}>{cells}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="table-box">{table}</div>'


def _breakable(text: str) -> str:
    return re.sub(r"([._])", r"\1<wbr>", text)


def _cell(value: Any) -> str:
    text = format_value(value)
    css = ""
    if isinstance(value, str):
        css = ' class="prose"' if " " in text else ' class="text"'
    return f"<td{css}>{html.escape(text)}</td>"


def _x_field(spec: dict[str, Any]) -> str | None:
    encoding = spec.get("encoding") or spec.get("spec", {}).get("encoding") or {}
    name = encoding.get("x", {}).get("field")
    return str(name) if name else None

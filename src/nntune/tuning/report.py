"""``nntune plots``: one self-contained HTML page comparing the best experiments.

The learning curves come from ``dvc plots diff --json`` (DVC's own vega-lite specs of the
plots dvc.yaml declares, data inlined); the objective-against-parameter charts are
vega-lite specs built here. vl-convert renders every spec to SVG inside this process, so
the page needs no network: ``dvc plots show`` HTML loads vega from a CDN, which clusters
and offline machines cannot reach.
"""

from __future__ import annotations

import html
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nntune.errors import NntuneError
from nntune.experiments import Experiment, use_this_python
from nntune.stage import artifacts
from nntune.tuning.ranking import Comparison, format_value, plain, varying_params

VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"


CURVES_HINT = (
    " (is a .gitignore rule such as `plots/` keeping dvclive/plots out of the experiments' "
    "commits? anchor it as `/plots/`; `nntune init --force` repairs the project's own)"
)


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
        numbers = [v["value"] for v in values if isinstance(v["value"], int | float)]
        x: dict[str, Any] = {"field": "value", "title": key}
        if len(numbers) == len(values) and len(set(numbers)) > 8:
            x["type"] = "quantitative"
            x["scale"] = {"type": "log"} if _spans_decades(numbers) else {"zero": False}
        else:
            # A grid has a few values per parameter: one evenly spaced column each.
            x["type"] = "ordinal"
            if len(numbers) == len(values):
                x["sort"] = sorted(set(numbers))
            else:
                values = [{**v, "value": format_value(v["value"])} for v in values]
        objectives = [float(v["objective"]) for v in values]
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
                        "scale": {"type": "log"} if _spans_decades(objectives) else {"zero": False},
                    },
                    "tooltip": [{"field": "experiment"}, {"field": "objective"}],
                },
                "width": 300,
                "height": 250,
            }
        )
    return specs


def write_page(
    path: str | Path,
    comparison: Comparison,
    rows: list[dict[str, Any]],
    specs: list[dict[str, Any]],
) -> None:
    import vl_convert as vlc

    charts = "\n".join(
        f'<figure class="chart">{vlc.vegalite_to_svg(vl_spec=spec)}</figure>' for spec in specs
    )
    objective = comparison.objective
    title = f"nntune: top {len(rows)} experiments by {objective.metric} ({objective.direction})"
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }}
tr.best {{ font-weight: bold; background: #e8f5e9; }}
.chart {{ display: inline-block; margin: 0 1em 1em 0; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
{_table(rows)}
<section id="charts">
{charts}
</section>
</body>
</html>
"""
    artifacts.write_text(path, page)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>no experiments</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = []
    for row in rows:
        cells = "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row.values())
        css = ' class="best"' if row.get("rank") == 1 else ""
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _spans_decades(values: list[float]) -> bool:
    return min(values) > 0 and max(values) / min(values) >= 100


def _x_field(spec: dict[str, Any]) -> str | None:
    encoding = spec.get("encoding") or spec.get("spec", {}).get("encoding") or {}
    field = encoding.get("x", {}).get("field")
    return str(field) if field else None

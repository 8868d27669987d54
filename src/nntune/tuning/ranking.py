"""Rank experiments by the objective and lay the comparison out as a table, CSV, JSON or
Markdown. Pure functions over ``Experiment`` rows: no DVC here."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from nntune.config.metrics import Objective, Task, holdout_metric_names
from nntune.experiments import Experiment

# Columns about how training went, shown after the metrics.
TRAINING_COLUMNS = ("epochs_trained", "best_epoch", "train_seconds")


@dataclass(frozen=True)
class Comparison:
    objective: Objective
    ranked: list[Experiment]  # succeeded with a finite objective, best first
    diverged: list[Experiment]  # succeeded as a pipeline, but training blew up
    failed: list[Experiment]  # the pipeline failed: its metrics are not its own
    pending: list[Experiment]  # queued or running
    varying: list[str]  # params that differ between the experiments shown
    columns: list[str]  # metric columns shown after the objective

    @property
    def best(self) -> Experiment | None:
        return self.ranked[0] if self.ranked else None


def compare(experiments: list[Experiment], objective: Objective, task: Task) -> Comparison:
    """Split experiments into ranked / diverged / failed / pending and rank the first by
    the objective. Failed rows are never ranked: DVC reports the baseline's metrics for
    them."""
    ranked, diverged, failed, pending = [], [], [], []
    for exp in experiments:
        if exp.state in ("Queued", "Running"):
            pending.append(exp)
        elif not exp.succeeded:
            failed.append(exp)
        elif exp.diverged or not _finite(exp.metrics.get(objective.metric)):
            diverged.append(exp)
        else:
            ranked.append(exp)
    sign = 1.0 if objective.direction == "min" else -1.0
    ranked.sort(key=lambda e: (sign * float(e.metrics[objective.metric]), e.name))
    shown = ranked + diverged + failed
    metric_columns = [m for m in holdout_metric_names(task) if m != objective.metric]
    return Comparison(
        objective=objective,
        ranked=ranked,
        diverged=diverged,
        failed=failed,
        pending=pending,
        varying=varying_params(shown),
        columns=[*metric_columns, *TRAINING_COLUMNS],
    )


def varying_params(experiments: list[Experiment]) -> list[str]:
    """Params keys whose value is not the same in every experiment, in file order."""
    if len(experiments) < 2:
        return []
    keys: list[str] = []
    for exp in experiments:
        keys += [k for k in exp.params if k not in keys]
    return [k for k in keys if len({json.dumps(e.params.get(k)) for e in experiments}) > 1]


def records(comparison: Comparison, top: int | None = None) -> list[dict[str, Any]]:
    """One flat record per experiment shown: ranked ones (best first, cut at ``top``),
    then diverged, then failed, each with its ``rank`` and ``status``."""
    out = []
    ranked = comparison.ranked[:top] if top else comparison.ranked
    groups = (("ok", ranked), ("diverged", comparison.diverged), ("failed", comparison.failed))
    for status, group in groups:
        for position, exp in enumerate(group, start=1):
            record: dict[str, Any] = {
                "rank": position if status == "ok" else None,
                "experiment": exp.name,
                "status": status,
            }
            record.update({k: plain(exp.params.get(k)) for k in comparison.varying})
            own = status != "failed"  # a failed row shows the baseline's numbers: hide them
            record[comparison.objective.metric] = _metric(exp, comparison.objective.metric, own)
            record.update({c: _metric(exp, c, own) for c in comparison.columns})
            out.append(record)
    return out


def to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_json(comparison: Comparison, rows: list[dict[str, Any]]) -> str:
    payload = {
        "objective": {
            "metric": comparison.objective.metric,
            "direction": comparison.objective.direction,
        },
        "best": comparison.best.name if comparison.best else None,
        "experiments": rows,
        "pending": [e.name for e in comparison.pending],
    }
    return json.dumps(payload, indent=2)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_value(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def _metric(exp: Experiment, name: str, own: bool) -> Any:
    return plain(exp.metrics.get(name)) if own else None


def plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # exp_show turns every int into a float
    return value


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Cleanup:
    """What ``nntune gc`` keeps (with the reason) and removes."""

    keep: dict[str, str]
    remove: list[str]


def select_garbage(comparison: Comparison, top: int, protected: dict[str, str]) -> Cleanup:
    """Keep the best ``top`` experiments, every ``protected`` one (promoted to a branch or
    applied to the workspace), and the warm-start parents of anything kept (a promoted
    trial's lineage needs its parent's model); remove the other finished experiments.
    Queued and running ones are not for the taking."""
    keep: dict[str, str] = {}
    for position, exp in enumerate(comparison.ranked[:top], start=1):
        keep[exp.name] = f"rank {position}"
    shown = comparison.ranked + comparison.diverged + comparison.failed
    for exp in shown:
        if exp.name in protected and exp.name not in keep:
            keep[exp.name] = protected[exp.name]
    by_name = {exp.name: exp for exp in shown}
    for name in list(keep):
        child = name
        parent = by_name[child].params.get(WARM_START_KEY) if child in by_name else None
        while parent and parent in by_name:
            keep.setdefault(parent, f"warm-start parent of {child}")
            child, parent = parent, by_name[parent].params.get(WARM_START_KEY)
    remove = [exp.name for exp in shown if exp.name not in keep]
    return Cleanup(keep=keep, remove=remove)


WARM_START_KEY = "train.warm_start.experiment"

"""Rank experiments by the objective, say where the best ones sit on the edge of the
search space, and lay the comparison out as a table, CSV, JSON or Markdown. Pure functions
over ``Experiment`` rows: no DVC here."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from nntune.config.metrics import Objective, Task, holdout_metric_names
from nntune.experiments import Experiment
from nntune.tuning.diagnosis import ADVICE, UNKNOWN, UNKNOWN_LABEL, Diagnosis

# Columns about how training went, shown after the metrics.
TRAINING_COLUMNS = ("epochs_trained", "best_epoch", "train_seconds")

# A failed experiment's row shows no diagnosis: DVC gives it the baseline's files.
FAILED = Diagnosis(UNKNOWN_LABEL, "the pipeline failed: its files are not its own")

# The best trials looked at for the edge of the search space, and the params whose extremes
# say nothing about it: seeds have no order, and successive halving gives its best trials
# the most epochs by design (train.max_epochs, continued from train.warm_start.epochs).
EDGE_TOP = 3
NOT_A_RANGE = ("train.max_epochs", "train.warm_start.epochs")


@dataclass(frozen=True)
class Comparison:
    objective: Objective
    ranked: list[Experiment]  # succeeded with a finite objective, best first
    diverged: list[Experiment]  # succeeded as a pipeline, but training blew up
    failed: list[Experiment]  # the pipeline failed: its metrics are not its own
    pending: list[Experiment]  # queued or running
    varying: list[str]  # params that differ between the experiments shown
    columns: list[str]  # metric columns shown after the objective
    diagnoses: dict[str, Diagnosis] = field(default_factory=dict)  # by name; absent: unknown
    # Ensemble experiments (``nntune ensemble``): scored on the test split only, never
    # ranked with the trials (their validation metrics are the baseline's, not theirs).
    ensembles: list[Experiment] = field(default_factory=list)

    @property
    def best(self) -> Experiment | None:
        return self.ranked[0] if self.ranked else None

    def diagnosis(self, exp: Experiment) -> Diagnosis:
        return self.diagnoses.get(exp.name, UNKNOWN)


def compare(experiments: list[Experiment], objective: Objective, task: Task) -> Comparison:
    """Split experiments into ranked / diverged / failed / pending and rank the first by
    the objective. Failed rows are never ranked: DVC reports the baseline's metrics for
    them."""
    ranked: list[Experiment] = []
    diverged: list[Experiment] = []
    failed: list[Experiment] = []
    pending: list[Experiment] = []
    ensembles: list[Experiment] = []
    for exp in experiments:
        if exp.state in ("Queued", "Running"):
            pending.append(exp)
        elif is_ensemble(exp):
            (ensembles if exp.succeeded else failed).append(exp)
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
        ensembles=ensembles,
    )


def is_ensemble(exp: Experiment) -> bool:
    """Whether the experiment averages others (its params list ``ensemble.members``)."""
    members = exp.params.get("ensemble.members")
    if isinstance(members, str):  # exp_show gives lists as text
        try:
            members = yaml.safe_load(members)
        except yaml.YAMLError:
            return False
    return bool(members)


def ensemble_records(comparison: Comparison) -> list[dict[str, Any]]:
    """One record per ensemble experiment: its members and its test metrics (the
    ``ensemble_test_*`` of metrics/ensemble.json, named as the trials' test metrics)."""
    out = []
    for exp in comparison.ensembles:
        record: dict[str, Any] = {"experiment": exp.name}
        record["members"] = plain(exp.metrics.get("ensemble_members"))
        for key, value in exp.metrics.items():
            if key.startswith("ensemble_test_"):
                record[key.removeprefix("ensemble_")] = plain(value)
        out.append(record)
    return out


def varying_params(experiments: list[Experiment]) -> list[str]:
    """Params keys whose value is not the same in every experiment, in file order."""
    if len(experiments) < 2:
        return []
    keys: list[str] = []
    for exp in experiments:
        # A failed ensemble's member list is not a searched parameter: no column for it.
        keys += [k for k in exp.params if k not in keys and not k.startswith("ensemble.")]
    return [k for k in keys if len({json.dumps(e.params.get(k)) for e in experiments}) > 1]


def next_moves(rows: list[dict[str, Any]]) -> list[str]:
    """One line per diagnosis found among ``rows`` (``records``' rows), with how many
    trials got it and the suggested next move: ``overfitting (2): try more dropout ...``."""
    found: dict[str, int] = {}
    for row in rows:
        label = str(row.get("diagnosis"))
        found[label] = found.get(label, 0) + 1
    return [
        f"{label} ({found[label]}): try {move}" for label, move in ADVICE.items() if label in found
    ]


def edge_advice(comparison: Comparison, top: int = EDGE_TOP) -> list[str]:
    """One line per numeric param whose best trials sit on the edge of what was tried: the
    best trial, and most of the top ``top``, use the largest (or the smallest) of at least
    3 distinct values tried; the range should go on past it."""
    tried = comparison.ranked + comparison.diverged
    best = comparison.ranked[:top]
    lines: list[str] = []
    for key in comparison.varying if best else []:
        values = {e.name: _number(e.params.get(key)) for e in tried}
        distinct = sorted({v for v in values.values() if v is not None})
        if key in NOT_A_RANGE or key.endswith("seed") or None in values.values():
            continue
        if len(distinct) < 3:
            continue
        for edge, side, beyond in (
            (distinct[-1], "largest", "above"),
            (distinct[0], "smallest", "below"),
        ):
            on_edge = sum(values[e.name] == edge for e in best)
            if values[best[0].name] == edge and 2 * on_edge > len(best):
                lines.append(
                    f"{key}: the best trials use the {side} value tried "
                    f"({format_value(plain(edge))}, in {on_edge} of the top {len(best)}); "
                    f"extend the range {beyond} it"
                )
    return lines


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # exp_show gives booleans and lists as text
    return float(value) if math.isfinite(value) else None


def records(comparison: Comparison, top: int | None = None) -> list[dict[str, Any]]:
    """One flat record per experiment shown: ranked ones (best first, cut at ``top``),
    then diverged, then failed, each with its ``rank``, ``status`` and, last, its
    ``diagnosis`` (a failed one's is unknown: its curves are not its own)."""
    out = []
    ranked = comparison.ranked[:top] if top else comparison.ranked
    metric = comparison.objective.metric
    # Cross-validated experiments: the objective is the folds' mean; its sd goes beside it.
    spread = f"{metric}_sd"
    folded = any(spread in e.metrics for e in (*ranked, *comparison.diverged))
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
            record[metric] = _metric(exp, metric, own)
            if folded:
                record[spread] = _metric(exp, spread, own)
            record.update({c: _metric(exp, c, own) for c in comparison.columns})
            record["diagnosis"] = (comparison.diagnosis(exp) if own else FAILED).label
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
    """The comparison as JSON: each experiment's record with its diagnosis's ``advice`` and
    ``evidence``, and the search-space ``advice`` list (``edge_advice``)."""
    found = {e.name: comparison.diagnosis(e) for e in comparison.ranked + comparison.diverged}
    experiments = []
    for row in rows:
        diagnosis = found.get(row["experiment"], FAILED)
        experiments.append({**row, "advice": diagnosis.advice, "evidence": diagnosis.evidence})
    payload = {
        "objective": {
            "metric": comparison.objective.metric,
            "direction": comparison.objective.direction,
        },
        "best": comparison.best.name if comparison.best else None,
        "experiments": experiments,
        "pending": [e.name for e in comparison.pending],
        "ensembles": ensemble_records(comparison),
        "advice": edge_advice(comparison),
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

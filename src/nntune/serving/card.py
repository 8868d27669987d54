"""The model card ``nntune export`` writes beside the exported model: what it was trained
on and how it scored, what it takes and what it returns, in JSON (``model_card.json``) and
Markdown (``MODEL_CARD.md``) built from the same dictionary."""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import nntune
from nntune.config.mapping import flatten
from nntune.serving.ensemble import MemberSource
from nntune.serving.preprocessing import PreprocessingSpec


@dataclass(frozen=True)
class ExportSource:
    """What an export reads, from the workspace or from one experiment's commit."""

    model: bytes  # models/model.keras
    meta: dict[str, Any]  # data/prepared/meta.json
    params: dict[str, Any]  # params.yaml as YAML reads it
    train_metrics: dict[str, Any]  # metrics/train.json
    evaluate_metrics: dict[str, Any]  # metrics/evaluate.json
    train_run: dict[str, Any]  # reports/train_run.json (versions that trained it)
    experiment: str | None  # None: the workspace
    commit: str | None  # the experiment's commit, or the workspace's HEAD
    # An ensemble experiment's members (then ``model`` is empty, ``meta`` the first
    # member's and ``evaluate_metrics`` the ensemble's metrics/ensemble.json).
    members: tuple[MemberSource, ...] = ()

    @property
    def label(self) -> str:
        return f"experiment {self.experiment}" if self.experiment else "the workspace"


def model_card(
    source: ExportSource,
    spec: PreprocessingSpec,
    names: dict[str, str],
    fmt: str,
    output: str,
) -> dict[str, Any]:
    """The card as plain JSON data; ``names`` maps each raw column to its input name."""
    card = {
        "format": fmt,
        "source": {
            "experiment": source.experiment,
            "workspace": source.experiment is None,
            "commit": source.commit,
            "model_md5": _md5(source.model) if source.model else None,
        },
        "data": {
            "source_md5": source.meta.get("source_md5"),
            "target": spec.target,
            "task": spec.task,
            "missing": spec.missing,
            "rows": source.meta.get("rows", {}),
        },
        "classes": list(spec.classes),
        "inputs": input_columns(spec, names),
        "output": output_description(spec, output),
        "params": flatten(source.params),
        "metrics": {"train": source.train_metrics, "evaluate": source.evaluate_metrics},
        "versions": {
            "exported_with": exporting_versions(),
            "trained_with": source.train_run.get("versions", {}),
        },
    }
    if source.members:  # what is averaged; the metrics are the ensemble's on the test split
        card["ensemble"] = [
            {"experiment": m.experiment, "model_md5": _md5(m.model)} for m in source.members
        ]
        card["metrics"] = {"ensemble": source.evaluate_metrics}
    return card


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def input_columns(spec: PreprocessingSpec, names: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per raw column, in the model's order: its input name, dtype, what a
    missing value is and becomes, and a categorical column's categories."""
    impute = spec.missing == "impute"
    columns: list[dict[str, Any]] = []
    for numeric in spec.numeric:
        gap = f"NaN -> median {numeric.median}" if impute else "NaN -> NaN output"
        columns.append(
            {
                "column": numeric.column,
                "input": names[numeric.column],
                "kind": "numeric",
                "dtype": "float32",
                "missing": gap,
                "scaling": spec.scaling,
                "mean": numeric.mean,
                "scale": numeric.scale,
            }
        )
    for categorical in spec.categorical:
        if impute:
            gap = f'"" -> most frequent {categorical.most_frequent!r}'
        else:
            gap = '"" -> as an unseen category'
        unseen = "the infrequent group" if categorical.infrequent else "all zeros"
        columns.append(
            {
                "column": categorical.column,
                "input": names[categorical.column],
                "kind": "categorical",
                "dtype": "string",
                "missing": gap,
                "categories": list(categorical.categories),
                # grouped into one input, with any unseen category
                "infrequent": list(categorical.infrequent),
                "unseen": unseen,
            }
        )
    return columns


def output_description(spec: PreprocessingSpec, output: str) -> dict[str, Any]:
    if spec.task == "regression":
        return {
            "name": output,
            "dtype": "float32",
            "shape": ["n"],
            "meaning": f"the predicted {spec.target}, in its own units",
        }
    if spec.task == "binary":
        meaning = (
            f"[P({spec.classes[0]}), P({spec.classes[1]})] = [1 - p, p] from the model's "
            "sigmoid p, as the evaluate stage reads it; the label is classes[argmax]"
        )
    else:
        meaning = "the softmax: one probability per class; the label is classes[argmax]"
    return {
        "name": output,
        "dtype": "float32",
        "shape": ["n", len(spec.classes)],
        "meaning": f"{meaning} (classes in the order of `classes`)",
    }


def exporting_versions() -> dict[str, str | None]:
    return {
        "nntune": nntune.__version__,
        "python": platform.python_version(),
        **{name: _installed(name) for name in ("keras", "tensorflow")},
    }


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def card_markdown(card: dict[str, Any]) -> str:
    """The card for people: the same facts as the JSON, as a Markdown page."""
    source, data, output = card["source"], card["data"], card["output"]
    origin = "the workspace" if source["workspace"] else f"experiment `{source['experiment']}`"
    model = f"model md5 `{source['model_md5']}`"
    if card.get("ensemble"):
        model = f"an ensemble of {len(card['ensemble'])} models"
    lines = [
        f"# Model card: {data['task']} model of `{data['target']}`",
        "",
        f"Exported from {origin} (commit `{source['commit']}`) as `{card['format']}`; "
        f"{model}, trained on data md5 `{data['source_md5']}` "
        f"(rows per split: {_inline(data['rows'])}).",
        "",
        *_ensemble_lines(card.get("ensemble", [])),
        "## Inputs",
        "",
        "One named input per raw column, a batch of scalars each. data.missing: "
        f"`{data['missing']}`.",
        "",
        "| column | input | kind | dtype | missing | categories |",
        "|---|---|---|---|---|---|",
    ]
    for column in card["inputs"]:
        categories = ", ".join(f"`{c}`" for c in column.get("categories", []))
        cells = [column["column"], f"`{column['input']}`", column["kind"], column["dtype"]]
        cells += [column["missing"], categories]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    shape = ", ".join(str(s) for s in output["shape"])
    lines += [
        "",
        "## Output",
        "",
        f"`{output['name']}`: {output['dtype']} ({shape}), {output['meaning']}.",
    ]
    if card["classes"]:
        lines.append(f"Classes: {', '.join(f'`{c}`' for c in card['classes'])}.")
    lines += ["", "## Metrics", "", "| split | metric | value |", "|---|---|---|"]
    for split, values in card["metrics"].items():
        lines += [
            f"| {split} | {_cell(name)} | {value} |" for name, value in sorted(values.items())
        ]
    lines += ["", "## Params", "", "| param | value |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in card["params"].items()]
    lines += ["", "## Versions", ""]
    for when, versions in card["versions"].items():
        lines.append(f"- {when.replace('_', ' ')}: {_inline(versions)}")
    return "\n".join(lines) + "\n"


def _ensemble_lines(members: list[dict[str, Any]]) -> list[str]:
    if not members:
        return []
    listed = ", ".join(f"`{m['experiment']}` (model md5 `{m['model_md5']}`)" for m in members)
    return [f"An ensemble: the average of the outputs of {listed}.", ""]


def _cell(value: object) -> str:
    """A Markdown table cell: a ``|`` in a column or category name would end it."""
    return str(value).replace("|", "\\|")


def _inline(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in mapping.items()) or "-"

"""pandera schemas for the input table and the validation report built from them.

The schema lives in a YAML file (pandera's own serialisation) that the user can read and
edit; the validate stage depends on it. ``digits_schema()`` is the schema of the embedded
default data set and the source of ``data/digits.schema.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from nntune.errors import NntuneError
from nntune.params import DataParams

MAX_EXAMPLES = 5  # failing values shown per (column, check)
MIN_ROWS_PER_CLASS = 3  # one row each for train, validation and test


class SchemaFileError(NntuneError):
    pass


@dataclass(frozen=True)
class Failure:
    column: str | None
    check: str
    failure_count: int
    examples: list[dict[str, Any]]  # [{"row": 0-based data row or None, "value": ...}]


@dataclass(frozen=True)
class ValidationReport:
    source: str
    schema: str
    rows: int
    columns: int
    failures: list[Failure] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "valid": self.valid}


def digits_schema() -> pa.DataFrameSchema:
    """scikit-learn's 8x8 digits: 64 integer pixel intensities in 0..16 and a label 0..9."""
    pixels = {
        f"pixel_{row}_{col}": pa.Column(int, pa.Check.in_range(0, 16), nullable=False)
        for row in range(8)
        for col in range(8)
    }
    label = pa.Column(int, pa.Check.isin(list(range(10))), nullable=False)
    return pa.DataFrameSchema({**pixels, "target": label}, strict=True, name="digits")


def load_schema(path: str | Path) -> pa.DataFrameSchema:
    path = Path(path)
    if not path.is_file():
        raise SchemaFileError(
            f"{path}: schema file not found; set data.schema in params.yaml to a pandera "
            "YAML schema"
        )
    try:
        return pa.DataFrameSchema.from_yaml(path)
    except Exception as exc:  # pandera raises assorted errors for a malformed file
        raise SchemaFileError(f"{path}: not a valid pandera YAML schema: {exc}") from exc


def validate_table(
    frame: pd.DataFrame, schema: pa.DataFrameSchema, data: DataParams, schema_path: str
) -> ValidationReport:
    """Check ``frame`` against the schema (all failures, not just the first) and against
    what the split and the task need from the target column."""
    failures: list[Failure] = []
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as errors:
        failures.extend(_summarise(errors.failure_cases))
    failures.extend(_target_failures(frame, data))
    return ValidationReport(
        source=data.source,
        schema=schema_path,
        rows=len(frame),
        columns=frame.shape[1],
        failures=failures,
    )


def _summarise(cases: pd.DataFrame) -> list[Failure]:
    failures = []
    for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
        examples = [
            {"row": _plain(row), "value": _plain(value)}
            for row, value in zip(group["index"], group["failure_case"], strict=True)
        ][:MAX_EXAMPLES]
        failures.append(
            Failure(
                column=None if _missing(column) else str(column),
                check=str(check),
                failure_count=len(group),
                examples=examples,
            )
        )
    return failures


def _target_failures(frame: pd.DataFrame, data: DataParams) -> list[Failure]:
    if data.target not in frame.columns:
        return [Failure(data.target, "target column present (data.target)", 1, [])]
    target = frame[data.target].dropna()
    if data.task == "regression":
        if not pd.api.types.is_numeric_dtype(target):
            return [Failure(data.target, "numeric target for task regression", 1, [])]
        return []
    counts = target.value_counts()
    failures = []
    if data.task == "binary" and len(counts) != 2:
        failures.append(
            Failure(data.target, "exactly 2 classes for task binary", 1, _classes(counts))
        )
    if data.task == "multiclass" and len(counts) < 2:
        failures.append(
            Failure(data.target, "at least 2 classes for task multiclass", 1, _classes(counts))
        )
    rare = counts[counts < MIN_ROWS_PER_CLASS]
    if len(rare):
        failures.append(
            Failure(
                data.target,
                f"at least {MIN_ROWS_PER_CLASS} rows per class (one each for train/val/test)",
                len(rare),
                _classes(rare),
            )
        )
    return failures


def _classes(counts: pd.Series) -> list[dict[str, Any]]:
    return [{"row": None, "value": f"{_plain(k)} ({n} rows)"} for k, n in counts.items()][
        :MAX_EXAMPLES
    ]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """numpy scalars and NaN -> JSON-friendly Python values."""
    if hasattr(value, "item"):
        value = value.item()
    if _missing(value):
        return None
    return value if isinstance(value, int | float | str | bool) else str(value)


def render_report(report: ValidationReport) -> None:
    """Print the report as a rich table on stderr (the validate stage's log)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    if report.valid:
        console.print(
            f"[green]valid[/green]: {report.source} ({report.rows} rows, "
            f"{report.columns} columns) matches {report.schema}"
        )
        return
    table = Table(title=f"{report.source} fails {report.schema}", title_justify="left")
    for name in ("column", "check", "failures", "examples (row: value)"):
        table.add_column(name)
    for f in report.failures:
        examples = ", ".join(f"{e['row']}: {e['value']!r}" for e in f.examples)
        table.add_row(f.column or "(table)", f.check, str(f.failure_count), examples)
    console.print(table)

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

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from nntune.config.sections import DataParams
from nntune.errors import NntuneError
from nntune.stage.data import read_table
from nntune.stage.profiling import MAX_ENUMERATED, id_like_columns
from nntune.stage.screening import screened

MAX_EXAMPLES = 5  # failing values shown per (column, check)
MIN_ROWS_PER_CLASS = 3  # one row each for train, validation and test
IMBALANCE_SHARE = 0.05  # a class rarer than this gets a warning


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
    warnings: list[Failure] = field(default_factory=list)  # reported, but do not stop a run

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


def infer_schema(frame: pd.DataFrame, data: DataParams) -> pa.DataFrameSchema:
    """A starting schema from the data, to read and edit: every column's dtype and observed
    nullability, numeric ranges, the allowed values of categorical columns (up to
    ``MAX_ENUMERATED`` of them) and the label set of a classification target. Unknown
    columns are rejected (strict)."""
    inferred = pa.infer_schema(frame)
    updates: dict[str, dict[str, Any]] = {}
    for name in frame.columns:
        values = frame[name].dropna()
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        is_label = name == data.target and data.task != "regression"
        if is_label or not numeric:
            allowed = sorted(values.unique().tolist(), key=str)
            if is_label or len(allowed) <= MAX_ENUMERATED:  # else an id: its type only
                updates[str(name)] = {"checks": [pa.Check.isin([_plain(v) for v in allowed])]}
        elif len(values):
            # One range check instead of pandera's >= and <= pair: half the passes.
            low, high = _plain(values.min()), _plain(values.max())
            updates[str(name)] = {"checks": [pa.Check.in_range(low, high)]}
    schema = inferred.update_columns(updates) if updates else inferred
    # No coercion: converting every column on each validation costs more than reading the
    # file; a text value in a numeric column is reported by _type_failures instead.
    return pa.DataFrameSchema(schema.columns, strict=True, name=Path(data.source).stem)


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


def check_data(data: DataParams) -> ValidationReport:
    """Read ``data.source`` and validate it against ``data.schema``: the validate stage and
    ``nntune validate`` both run exactly this."""
    schema = load_schema(data.schema)
    return validate_table(read_table(data.source, data.delimiter), schema, data, data.schema)


def validate_table(
    frame: pd.DataFrame,
    schema: pa.DataFrameSchema,
    data: DataParams,
    schema_path: str,
    warnings: bool = True,
) -> ValidationReport:
    """Check ``frame`` against the schema (all failures, not just the first) and against
    what the split and the task need from the target column; ``warnings`` (constant
    columns, rare classes) only when asked, as they describe a training table."""
    failures: list[Failure] = _type_failures(frame, schema)
    try:
        # inplace: no copy of the whole table (pandera's default); the frame is ours alone
        # and only a user schema with ``coerce: true`` would change it. Value checks that
        # the column summaries prove are not run row by row (the report is the same).
        screened(frame, schema).validate(frame, lazy=True, inplace=True)
    except SchemaErrors as errors:
        failures.extend(_summarise(errors.failure_cases))
    failures.extend(_column_failures(frame, data))
    failures.extend(_target_failures(frame, data))
    return ValidationReport(
        source=data.source,
        schema=schema_path,
        rows=len(frame),
        columns=frame.shape[1],
        failures=failures,
        warnings=_warnings(frame, data) if warnings else [],
    )


def _type_failures(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> list[Failure]:
    """Text in a column the schema declares numeric: name the values that are not numbers
    (pandera alone would only say the column's dtype is wrong)."""
    failures = []
    for name, column in schema.columns.items():
        declared = str(column.dtype)
        if name not in frame.columns or not declared.startswith(("int", "float", "uint")):
            continue
        values = frame[name]
        if pd.api.types.is_numeric_dtype(values):
            continue
        bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())[:MAX_EXAMPLES]
            examples = [{"row": int(r), "value": _plain(values.iloc[r])} for r in rows]
            failures.append(
                Failure(str(name), f"numbers only ({declared})", int(bad.sum()), examples)
            )
    return failures


def _column_failures(frame: pd.DataFrame, data: DataParams) -> list[Failure]:
    """What the params ask of the columns: named ones exist, no missing feature values
    under ``data.missing: error`` (a missing label only makes the row unlabeled), no
    infinities ever."""
    failures = []
    for key, names in (("data.features", data.features or ()), ("data.exclude", data.exclude)):
        absent = [n for n in names if n not in frame.columns]
        if absent:
            examples = [{"row": None, "value": n} for n in absent][:MAX_EXAMPLES]
            failures.append(Failure(None, f"columns named in {key} exist", len(absent), examples))
    used = [c for c in _used_columns(frame, data) if c in frame.columns]
    for column in used:
        values = frame[column]
        array = _float_array(values)
        if array is not None and np.isfinite(array).all():
            continue  # one pass answers both questions for the common, clean case
        if data.missing == "error" and column != data.target and values.isna().any():
            failures.append(_rows(values.isna(), column, "no missing values (data.missing: error)"))
        if array is not None and np.isinf(array).any():
            failures.append(_rows(pd.Series(np.isinf(array)), column, "finite values"))
    return failures


def _float_array(values: pd.Series) -> np.ndarray | None:
    """The column as a float array (missing -> NaN) when it is numeric, else None."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return None
    if isinstance(values.dtype, np.dtype):
        return values.to_numpy()  # no copy
    return values.to_numpy(dtype=np.float64, na_value=np.nan)  # nullable / arrow dtypes


def _used_columns(frame: pd.DataFrame, data: DataParams) -> list[str]:
    features = data.features or [
        c for c in frame.columns if c != data.target and c not in data.exclude
    ]
    return [*features, data.target]


def _constant(values: pd.Series) -> bool:
    array = _float_array(values)
    if array is not None:
        if array.size == 0:
            return True
        # fmin / fmax skip NaN in one vectorised pass (pandas' min/max first build a mask);
        # an all-missing column gives NaN, which counts as constant.
        low, high = np.fmin.reduce(array), np.fmax.reduce(array)
        return bool(low == high) or bool(np.isnan(low))
    present = values.dropna()
    return present.empty or not bool((present != present.iloc[0]).any())


def _rows(mask: pd.Series, column: str, check: str) -> Failure:
    rows = np.flatnonzero(mask.to_numpy())
    examples = [{"row": int(r), "value": None} for r in rows[:MAX_EXAMPLES]]
    return Failure(column, check, len(rows), examples)


def _warnings(frame: pd.DataFrame, data: DataParams) -> list[Failure]:
    """Signs of trouble that should not stop a run: constant features, identifiers among
    the features, a rare class."""
    used = _used_columns(frame, data)[:-1]
    warnings = [
        Failure(found.column, f"{found.reason()}; add it to data.exclude", found.rows, [])
        for found in id_like_columns(frame[[c for c in used if c in frame.columns]], data.target)
    ]
    for column in used:
        if column in frame.columns and _constant(frame[column]):
            value = frame[column].dropna().iloc[0] if frame[column].notna().any() else None
            warnings.append(
                Failure(
                    column,
                    "constant column: carries no information",
                    1,
                    [{"row": None, "value": _plain(value)}],
                )
            )
    if data.target in frame.columns and 0 < frame[data.target].isna().sum() < len(frame):
        unlabeled = frame[data.target].isna()
        rows = np.flatnonzero(unlabeled.to_numpy())
        warnings.append(
            Failure(
                data.target,
                "rows without a label: left out of training and testing, used by pretraining",
                len(rows),
                [{"row": int(r), "value": None} for r in rows[:MAX_EXAMPLES]],
            )
        )
    if data.task != "regression" and data.target in frame.columns:
        shares = frame[data.target].value_counts(normalize=True)
        if len(shares) >= 2 and shares.min() < IMBALANCE_SHARE:
            rare = shares[shares < IMBALANCE_SHARE]
            examples = [
                {"row": None, "value": f"{_plain(k)} ({v:.1%} of rows)"} for k, v in rare.items()
            ]
            warnings.append(
                Failure(
                    data.target,
                    f"imbalanced target: classes under {IMBALANCE_SHARE:.0%} of rows",
                    len(rare),
                    examples[:MAX_EXAMPLES],
                )
            )
    return warnings


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
        hint = ""
        if frame.shape[1] == 1:
            hint = f"; the file reads as one column ({frame.columns[0]!r}): wrong data.delimiter?"
        return [Failure(data.target, f"target column present (data.target){hint}", 1, [])]
    if frame[data.target].isna().all():
        return [Failure(data.target, "target has values (it is all missing)", len(frame), [])]
    target = frame[data.target].dropna()
    needed = _rows_needed(data)
    if len(target) < needed:
        return [
            Failure(
                data.target,
                f"at least {needed} labelled rows for the train/val/test split "
                f"(test_fraction {data.test_fraction}, val_fraction {data.val_fraction})",
                len(target),
                [],
            )
        ]
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


def _rows_needed(data: DataParams) -> int:
    """Rows for each split to get at least one, and training at least three."""
    smallest = min(data.test_fraction, data.val_fraction)
    train_share = 1.0 - data.test_fraction - data.val_fraction
    return max(math.ceil(1 / smallest), math.ceil(3 / train_share), MIN_ROWS_PER_CLASS)


def _classes(counts: pd.Series) -> list[dict[str, Any]]:
    return [{"row": None, "value": f"{_plain(k)} ({n} rows)"} for k, n in counts.items()][
        :MAX_EXAMPLES
    ]


def _example(example: dict[str, Any]) -> str:
    row, value = example["row"], example["value"]
    if row is None:
        return repr(value)
    return f"row {row}" if value is None else f"row {row}: {value!r}"


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

    console = Console(stderr=True)
    if report.warnings:
        console.print(_table(f"warnings for {report.source} (the run goes on)", report.warnings))
    if report.valid:
        console.print(
            f"[green]valid[/green]: {report.source} ({report.rows} rows, "
            f"{report.columns} columns) matches {report.schema}"
        )
        return
    console.print(_table(f"{report.source} fails {report.schema}", report.failures))


def _table(title: str, failures: list[Failure]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("column", "check", "count", "examples (data rows count from 0)"):
        table.add_column(name)
    for f in failures:
        examples = ", ".join(_example(e) for e in f.examples)
        table.add_row(f.column or "(table)", f.check, str(f.failure_count), examples)
    return table

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
from conftest import REPO, make_table

from nntune.config.sections import DataParams, Params
from nntune.stage.data import digits_frame
from nntune.stage.schema import SchemaFileError, digits_schema, load_schema, validate_table


def test_committed_schema_file_is_digits_schema() -> None:
    path = REPO / "data" / "digits.schema.yaml"
    assert path.read_text() == digits_schema().to_yaml()
    assert load_schema(path) == digits_schema()


def test_digits_pass(tiny_params: Params) -> None:
    report = validate_table(digits_frame(), digits_schema(), tiny_params.data, "schema.yaml")
    assert report.valid
    assert (report.rows, report.columns) == (1797, 65)
    assert report.to_dict()["valid"] is True


def test_every_failure_is_reported_not_just_the_first(tiny_params: Params) -> None:
    frame = digits_frame()
    frame.loc[3, "pixel_0_0"] = 17  # out of range
    frame.loc[5, "pixel_4_4"] = -1  # out of range
    frame["pixel_7_7"] = frame["pixel_7_7"].astype("float64")
    frame.loc[8, "pixel_7_7"] = np.nan  # null
    frame.loc[9, "target"] = 12  # unknown label
    frame["comment"] = "x"  # column the schema does not know
    frame = frame.drop(columns=["pixel_2_2"])  # column missing
    report = validate_table(frame, digits_schema(), tiny_params.data, "schema.yaml")
    assert not report.valid
    checks = {(f.column, f.check.split("(")[0]): f for f in report.failures}
    assert ("pixel_4_4", "in_range") in checks
    assert ("pixel_7_7", "not_nullable") in checks
    assert ("target", "isin") in checks  # label 12
    assert ("target", "at least 3 rows per class ") in checks  # and a class of one row
    failure = checks[("pixel_0_0", "in_range")]
    assert failure.failure_count == 1
    assert failure.examples == [{"row": 3, "value": 17}]
    flat = json.dumps(report.to_dict())
    assert "comment" in flat and "pixel_2_2" in flat


def test_target_checks(tiny_params: Params) -> None:
    frame = make_table(n_rows=30, n_classes=3)
    frame.loc[0, "target"] = 9  # a class with a single row cannot be split three ways
    schema = digits_schema().__class__({})  # no column checks: only the target checks run
    report = validate_table(frame, schema, tiny_params.data, "s.yaml")
    assert [f.check for f in report.failures] == [
        "at least 3 rows per class (one each for train/val/test)"
    ]
    binary = dataclasses.replace(tiny_params.data, task="binary")
    checks = [f.check for f in validate_table(frame, schema, binary, "s.yaml").failures]
    assert "exactly 2 classes for task binary" in checks
    missing = dataclasses.replace(tiny_params.data, target="label")
    report = validate_table(frame, schema, missing, "s.yaml")
    assert report.failures[0].check == "target column present (data.target)"


def test_load_schema_errors(tmp_path: Path) -> None:
    with pytest.raises(SchemaFileError, match="schema file not found"):
        load_schema(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("columns: [1, 2\n")
    with pytest.raises(SchemaFileError, match="not a valid pandera YAML schema"):
        load_schema(bad)


def _bad_customers(data: DataParams) -> tuple[pd.DataFrame, pa.DataFrameSchema]:
    """A table and its inferred schema, then values the schema refuses: a number out of
    range, an unknown category, and a gap (which value checks ignore)."""
    from nntune.stage.schema import infer_schema

    table = make_table(60, labels=["x", "y", "z"])
    table["colour"] = np.where(table["a"] > 1, "red", "blue")
    schema = infer_schema(table, data)
    bad = table.copy()
    bad.loc[2, "b"] = 1e9
    bad.loc[4, "colour"] = "purple"
    bad.loc[6, "c"] = np.nan
    return bad, schema


def test_screening_drops_only_the_checks_a_column_passes(tiny_params: Params) -> None:
    from nntune.stage.screening import screened

    bad, schema = _bad_customers(dataclasses.replace(tiny_params.data, missing="impute"))
    left = screened(bad, schema)
    names = {c: [k.name for k in left.columns[c].checks] for c in ("a", "b", "c", "colour")}
    assert names["a"] == [] and names["c"] == []  # every value inside: proven (gap ignored)
    assert names["b"] == ["in_range"] and names["colour"] == ["isin"]  # left to pandera
    assert screened(bad.iloc[:0], schema).columns["b"].checks == []  # no rows: nothing fails


def test_screening_changes_no_report(tiny_params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same failures, counts and examples with the summaries' proof as with pandera
    checking every row."""
    from nntune.stage import schema as schema_module

    data = dataclasses.replace(tiny_params.data, missing="impute")
    bad, schema = _bad_customers(data)
    screened_report = schema_module.validate_table(bad, schema, data, "s.yaml")
    monkeypatch.setattr(schema_module, "screened", lambda frame, s: s)
    full_report = schema_module.validate_table(bad, schema, data, "s.yaml")
    assert screened_report.to_dict() == full_report.to_dict()
    checks = {(f.column, f.check.split("(")[0]) for f in full_report.failures}
    assert {("b", "in_range"), ("colour", "isin")} <= checks

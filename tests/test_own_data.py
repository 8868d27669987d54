"""Bringing your own table: categorical features, the missing-value policy, delimiters,
an inferred schema, and the catalogue of bad inputs, each stopped with a clear message."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nntune.config.params import parse_params
from nntune.config.sections import DataParams, Params, ParamsError
from nntune.stage.data import SPLITS, UNLABELED, DataError, read_table
from nntune.stage.preprocess import prepare
from nntune.stage.schema import SchemaFileError, ValidationReport, check_data, infer_schema


def mixed_table(n_rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """Numbers, strings and booleans, with a label that depends on them."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], size=n_rows)
    size = rng.normal(10, 3, size=n_rows).round(2)
    label = np.where((colour == "red") | (size > 12), "yes", "no")
    return pd.DataFrame(
        {
            "customer_id": np.arange(n_rows),
            "size": size,
            "colour": colour,
            "member": rng.random(n_rows) > 0.5,
            "label": label,
        }
    )


def data_params(tiny_params: Params, **changes: Any) -> DataParams:
    base = dataclasses.replace(
        tiny_params.data,
        source="data.csv",
        schema="schema.yaml",
        target="label",
        task="binary",
        exclude=("customer_id",),
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with data.csv (the mixed table) and schema.yaml inferred from it."""
    monkeypatch.chdir(tmp_path)
    mixed_table().to_csv("data.csv", index=False)
    return tmp_path


def write_schema(data: DataParams, frame: pd.DataFrame | None = None) -> None:
    schema = infer_schema(frame if frame is not None else mixed_table(), data)
    Path(data.schema).write_text(schema.to_yaml())


def checks(report: ValidationReport) -> list[str]:
    return [f"{f.column}: {f.check}" for f in report.failures]


# --- features, categories, missing values ------------------------------------------------


def test_categorical_columns_are_one_hot_encoded(tiny_params: Params) -> None:
    prepared = prepare(mixed_table(), data_params(tiny_params))
    assert prepared.features == ["size", "member", "colour_blue", "colour_green", "colour_red"]
    assert "customer_id" not in prepared.features  # excluded ID column
    onehot = prepared.splits["train"][["colour_blue", "colour_green", "colour_red"]]
    assert set(onehot.sum(axis=1)) == {1.0}
    assert prepared.classes == ["no", "yes"]


def test_categories_come_from_the_training_split_only(tiny_params: Params) -> None:
    table = mixed_table(300)
    table.loc[:59, "colour"] = [f"rare{i}" for i in range(60)]  # each seen exactly once
    prepared = prepare(table, data_params(tiny_params))
    colour_columns = [f for f in prepared.features if f.startswith("colour_")]
    rare_in_train = [c for c in colour_columns if c.startswith("colour_rare")]
    # Every rare value that landed in val or test is unknown to the encoder: no column,
    # and its row is all zeros instead of a crash.
    assert 0 < len(rare_in_train) < 60
    test_rows = prepared.splits["test"][colour_columns].sum(axis=1)
    assert (test_rows == 0).any()


def test_explicit_feature_list(tiny_params: Params) -> None:
    data = data_params(tiny_params, features=("size",), exclude=())
    assert prepare(mixed_table(), data).features == ["size"]


def test_missing_drop_and_impute(tiny_params: Params) -> None:
    table = mixed_table()
    table.loc[[1, 5, 9], "size"] = np.nan
    table.loc[[2, 6], "colour"] = None
    table.loc[[3], "label"] = None  # no label: never trains or tests, only pretrains
    dropped = prepare(table, data_params(tiny_params, missing="drop"))
    assert sum(len(dropped.splits[s]) for s in SPLITS) == 200 - 6
    assert len(dropped.splits[UNLABELED]) == 1
    imputed = prepare(table, data_params(tiny_params, missing="impute"))
    assert sum(len(imputed.splits[s]) for s in SPLITS) == 200 - 1
    assert len(imputed.splits[UNLABELED]) == 1
    for name in SPLITS:
        assert not imputed.splits[name].isna().any().any()
    assert not imputed.splits[UNLABELED][imputed.features].isna().any().any()
    with pytest.raises(DataError, match=r"missing values in size, colour and data\.missing is"):
        prepare(table, data_params(tiny_params, missing="error"))


def test_semicolon_csv_is_sniffed(tmp_path: Path) -> None:
    path = tmp_path / "semi.csv"
    mixed_table().to_csv(path, index=False, sep=";")
    assert list(read_table(path).columns) == list(mixed_table().columns)
    tab = tmp_path / "tab.csv"
    mixed_table().to_csv(tab, index=False, sep="\t")
    assert read_table(tab, delimiter="\t").shape == (200, 5)


def test_inferred_schema_round_trips_and_names_categories(
    project: Path, tiny_params: Params
) -> None:
    data = data_params(tiny_params)
    write_schema(data)
    text = Path("schema.yaml").read_text()
    assert "isin:" in text and "- red" in text and "- 'yes'" in text
    report = check_data(data)
    assert report.valid, checks(report)


def test_missing_values_are_reported_by_row_under_error(project: Path, tiny_params: Params) -> None:
    data = data_params(tiny_params)
    write_schema(data)
    table = mixed_table()
    table.loc[[4, 7], "size"] = np.nan
    table.to_csv("data.csv", index=False)
    report = check_data(data)
    assert "size: no missing values (data.missing: error)" in checks(report)
    failure = next(f for f in report.failures if f.check.startswith("no missing"))
    assert failure.failure_count == 2
    assert [e["row"] for e in failure.examples] == [4, 7]
    # The same file passes under impute (the schema allows nulls it was inferred with).
    write_schema(data, table)
    assert check_data(dataclasses.replace(data, missing="impute")).valid


def test_warnings_do_not_fail_validation(project: Path, tiny_params: Params) -> None:
    table = mixed_table(400)
    table["constant"] = 1.0
    table["label"] = np.where(np.arange(400) < 10, "yes", "no")  # 2.5% positives
    table.to_csv("data.csv", index=False)
    data = data_params(tiny_params)
    write_schema(data, table)
    report = check_data(data)
    assert report.valid
    warned = [f"{w.column}: {w.check}" for w in report.warnings]
    assert "constant: constant column: carries no information" in warned
    assert any(w.startswith("label: imbalanced target") for w in warned)


# --- the bad-input catalogue: one test each -----------------------------------------------


def test_bad_missing_file(project: Path, tiny_params: Params) -> None:
    data = data_params(tiny_params, source="absent.csv")
    write_schema(data)
    with pytest.raises(DataError, match=r"absent\.csv: data file not found; check data\.source"):
        check_data(data)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("", r"data\.csv: file is empty", id="empty_file"),
        pytest.param(
            "customer_id,size,colour,member,label\n",
            "has a header but no data rows",
            id="header_only",
        ),
        pytest.param(
            "size,size,label\n1,2,yes\n",
            r"duplicate column names \['size'\]",
            id="duplicate_column_names",
        ),
    ],
)
def test_bad_file_contents(project: Path, tiny_params: Params, content: str, message: str) -> None:
    data = data_params(tiny_params)
    write_schema(data)
    Path("data.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        check_data(data)


def test_bad_wrong_delimiter(project: Path, tiny_params: Params) -> None:
    data = data_params(tiny_params, delimiter=",")
    write_schema(data)
    mixed_table().to_csv("data.csv", index=False, sep=";")
    report = check_data(data)
    assert any("wrong data.delimiter?" in c for c in checks(report)), checks(report)


def test_bad_missing_target_column(project: Path, tiny_params: Params) -> None:
    data = data_params(tiny_params)
    write_schema(data)
    mixed_table().drop(columns=["label"]).to_csv("data.csv", index=False)
    assert "label: target column present (data.target)" in checks(check_data(data))


def test_bad_strings_in_a_numeric_column(project: Path, tiny_params: Params) -> None:
    data = data_params(tiny_params)
    write_schema(data)
    table = mixed_table().astype({"size": "object"})
    table.loc[3, "size"] = "twelve"
    table.to_csv("data.csv", index=False)
    report = check_data(data)
    failures = [f for f in report.failures if f.column == "size"]
    assert failures, checks(report)
    assert any(e["value"] == "twelve" for f in failures for e in f.examples)


def test_bad_infinite_values(project: Path, tiny_params: Params) -> None:
    data = data_params(tiny_params, missing="impute")
    write_schema(data)
    table = mixed_table()
    table.loc[8, "size"] = np.inf
    table.to_csv("data.csv", index=False)
    report = check_data(data)
    assert "size: finite values" in checks(report)


def test_bad_label_outside_the_declared_set(project: Path, tiny_params: Params) -> None:
    data = data_params(tiny_params)
    write_schema(data)
    table = mixed_table()
    table.loc[11, "label"] = "maybe"
    table.to_csv("data.csv", index=False)
    report = check_data(data)
    label = [f for f in report.failures if f.column == "label" and "isin" in f.check]
    assert label and label[0].examples == [{"row": 11, "value": "maybe"}]


def test_bad_single_class_target(project: Path, tiny_params: Params) -> None:
    data = data_params(tiny_params, task="multiclass")
    table = mixed_table().assign(label="yes")
    write_schema(data, table)
    table.to_csv("data.csv", index=False)
    assert "label: at least 2 classes for task multiclass" in checks(check_data(data))


def test_bad_fewer_rows_than_the_splits_need(project: Path, tiny_params: Params) -> None:
    data = data_params(tiny_params)
    table = mixed_table(4)
    write_schema(data, table)
    table.to_csv("data.csv", index=False)
    assert any("labelled rows for the train/val/test split" in c for c in checks(check_data(data)))


def test_bad_target_all_null(project: Path, tiny_params: Params) -> None:
    data = data_params(tiny_params, missing="drop")
    table = mixed_table().assign(label=None)
    write_schema(data, mixed_table())
    table.to_csv("data.csv", index=False)
    assert "label: target has values (it is all missing)" in checks(check_data(data))


def test_bad_parquet_that_is_not_parquet(project: Path, tiny_params: Params) -> None:
    data = data_params(tiny_params, source="data.parquet")
    write_schema(data)
    Path("data.parquet").write_text("customer_id,size\n1,2\n")
    with pytest.raises(DataError, match=r"data\.parquet: cannot be read as parquet"):
        check_data(data)


@pytest.mark.parametrize("source", ["/tmp/elsewhere/data.csv", "../data.csv", "data/../../x.csv"])
def test_bad_data_path_outside_the_project(raw_params: dict[str, Any], source: str) -> None:
    raw_params["data"]["source"] = source
    with pytest.raises(ParamsError, match="must be a path inside the project"):
        parse_params(raw_params)


def test_bad_schema_file_missing(project: Path, tiny_params: Params) -> None:
    with pytest.raises(SchemaFileError, match="schema file not found"):
        check_data(data_params(tiny_params, schema="none.yaml"))


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["yes", "no", "yes"], "binary"),
        ([0, 1, 1, 0], "binary"),
        (["a", "b", "c"], "multiclass"),
        ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "multiclass"),
        ([0.5, 1.25, 3.0], "regression"),
        (list(range(500)), "regression"),
    ],
)
def test_task_is_inferred_from_the_target(values: list[Any], task: str) -> None:
    from nntune.scaffold.project import infer_task

    assert infer_task(pd.Series(values)) == task

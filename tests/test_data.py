from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_table

from nntune.config.sections import Params
from nntune.stage import artifacts
from nntune.stage.data import (
    DataError,
    check_validated,
    digits_frame,
    read_prepared,
    read_table,
    write_prepared,
)
from nntune.stage.preprocess import prepare


def _original_uids(prepared_split: pd.DataFrame, prepared_meta: dict[str, list[float]]) -> set[int]:
    i = prepared_meta["features"].index("uid")  # type: ignore[arg-type]
    raw = prepared_split["uid"] * prepared_meta["scale"][i] + prepared_meta["mean"][i]
    return set(np.rint(raw.to_numpy()).astype(int))


def test_split_is_disjoint_complete_and_sized(tiny_params: Params) -> None:
    table = make_table(n_rows=200, n_classes=4)
    prepared = prepare(table, tiny_params.data)
    meta = {
        "features": prepared.features,
        "mean": prepared.scaler_mean,
        "scale": prepared.scaler_scale,
    }
    uids = {name: _original_uids(frame, meta) for name, frame in prepared.splits.items()}  # type: ignore[arg-type]
    assert not uids["train"] & uids["val"]
    assert not uids["train"] & uids["test"]
    assert not uids["val"] & uids["test"]
    assert uids["train"] | uids["val"] | uids["test"] == set(range(0, 2000, 10))
    assert len(prepared.splits["test"]) == 40  # test_fraction 0.2 of 200
    assert len(prepared.splits["val"]) == 40  # val_fraction 0.2 of all rows, not of the rest


def test_scaler_is_fitted_on_train_only(tiny_params: Params) -> None:
    table = make_table(n_rows=200)
    prepared = prepare(table, tiny_params.data)
    train = prepared.splits["train"][prepared.features].to_numpy()
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-4)
    # The statistics are the train split's, not the whole table's.
    assert not np.allclose(prepared.scaler_mean, table[prepared.features].mean().to_numpy())


def test_split_is_stratified(tiny_params: Params) -> None:
    table = make_table(n_rows=300, n_classes=3)
    prepared = prepare(table, tiny_params.data)
    for frame in prepared.splits.values():
        shares = frame["target"].value_counts(normalize=True)
        np.testing.assert_allclose(shares.to_numpy(), 1 / 3, atol=0.02)


def test_split_is_seeded(tiny_params: Params) -> None:
    table = make_table()
    a = prepare(table, tiny_params.data).splits["test"]
    b = prepare(table, tiny_params.data).splits["test"]
    pd.testing.assert_frame_equal(a, b)
    other = dataclasses.replace(tiny_params.data, split_seed=7)
    assert not prepare(table, other).splits["test"].equals(a)


def test_string_labels_are_encoded_and_kept(tiny_params: Params) -> None:
    table = make_table(n_classes=3, labels=["cat", "dog", "emu"])
    prepared = prepare(table, tiny_params.data)
    assert prepared.classes == ["cat", "dog", "emu"]
    _, y = prepared.xy("train")
    assert set(y) == {0, 1, 2}


def test_regression_is_not_stratified_and_keeps_float_target(tiny_params: Params) -> None:
    table = make_table()
    table["target"] = table["a"] * 2.5
    data = dataclasses.replace(tiny_params.data, task="regression")
    prepared = prepare(table, data)
    assert prepared.classes == []
    _, y = prepared.xy("test")
    assert y.dtype == np.float32


def test_prepared_round_trip(tmp_path: Path, tiny_params: Params) -> None:
    prepared = prepare(make_table(), tiny_params.data)
    write_prepared(prepared, tmp_path / "prepared")
    back = read_prepared(tmp_path / "prepared", splits=("train",))
    assert list(back.splits) == ["train"]
    pd.testing.assert_frame_equal(back.splits["train"], prepared.splits["train"])
    assert back.meta()["scaler"] == prepared.meta()["scaler"]
    with pytest.raises(DataError, match="run the prepare stage first"):
        read_prepared(tmp_path / "missing")


def test_prepared_folder_is_replaced_as_a_whole(
    tmp_path: Path, tiny_params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prepare killed half-way (here: meta.json fails after the splits are written)
    leaves the old folder byte for byte; a finished one leaves nothing of the old."""
    out = tmp_path / "prepared"
    write_prepared(prepare(make_table(seed=1), tiny_params.data), out)
    (out / "stray.parquet").write_bytes(b"from an older layout")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(path: Path, data: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(artifacts, "write_json", fail)
        with pytest.raises(OSError, match="disk full"):
            write_prepared(prepare(make_table(seed=2), tiny_params.data), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temporary folder

    write_prepared(prepare(make_table(seed=2), tiny_params.data), out)
    names = {"train.parquet", "val.parquet", "test.parquet", "unlabeled.parquet", "meta.json"}
    assert {p.name for p in out.iterdir()} == names
    assert (out / "meta.json").read_bytes() != before["meta.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_read_table_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        read_table(tmp_path / "absent.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="file is empty"):
        read_table(empty)
    header = tmp_path / "header.csv"
    header.write_text("a,b,target\n")
    with pytest.raises(DataError, match="header but no data rows"):
        read_table(header)
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(DataError, match="cannot be read as parquet"):
        read_table(broken)


def test_read_table_parquet(tmp_path: Path) -> None:
    table = make_table()
    table.to_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.parquet"), table)


def test_prepare_refuses_unvalidated_data(tmp_path: Path) -> None:
    report = tmp_path / "validation.json"
    with pytest.raises(DataError, match="no validation report"):
        check_validated(report, "data/x.csv")
    report.write_text(json.dumps({"source": "data/x.csv", "valid": False}))
    with pytest.raises(DataError, match="has not passed validation"):
        check_validated(report, "data/x.csv")
    report.write_text(json.dumps({"source": "data/other.csv", "valid": True}))
    with pytest.raises(DataError, match="has not passed validation"):
        check_validated(report, "data/x.csv")
    report.write_text(json.dumps({"source": "data/x.csv", "valid": True}))
    check_validated(report, "data/x.csv")


def test_committed_digits_file_is_the_bundled_data_set() -> None:
    committed = pd.read_csv(REPO / "data" / "digits.csv")
    pd.testing.assert_frame_equal(committed, digits_frame())
    assert committed.shape == (1797, 65)


def test_atomic_writes_leave_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "metrics.json"
    artifacts.write_json(target, {"b": 1.5, "a": float("nan"), "c": [float("inf"), 2]})
    assert (
        target.read_text() == '{\n  "a": null,\n  "b": 1.5,\n  "c": [\n    null,\n    2\n  ]\n}\n'
    )
    assert stat.S_IMODE(target.stat().st_mode) & 0o044  # readable by others, not mkstemp's 0600

    def failing_writer() -> None:
        with artifacts.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        failing_writer()
    assert json.loads(target.read_text())["b"] == 1.5  # the old file is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]  # no temp left


def test_prepared_meta_records_the_fitted_preprocessing_and_the_test_rows(
    tiny_params: Params, tmp_path: Path
) -> None:
    """What predict and export need to redo the prepare stage's transform on raw rows: each
    numeric column's median, mean and scale, each categorical column's most frequent value
    and categories, and which rows of the table are the test split."""
    table = make_table(90, labels=["x", "y", "z"])
    table["colour"] = np.where(table["a"] > 1, "red", "blue")
    table.loc[[3, 4], "colour"] = None
    table.loc[[5], "b"] = np.nan
    data = dataclasses.replace(tiny_params.data, missing="impute")
    prepared = prepare(table, data)
    write_prepared(prepared, tmp_path / "prepared")
    spec = read_prepared(tmp_path / "prepared", splits=("test",)).preprocessing
    assert spec["missing"] == "impute"
    assert [n["column"] for n in spec["numeric"]] == ["a", "b", "c", "uid"]
    (colour,) = spec["categorical"]
    assert colour["column"] == "colour" and colour["categories"] == ["blue", "red"]
    assert colour["most_frequent"] in ("blue", "red")  # imputed from the training rows
    # The test split's rows of the raw table, transformed with the recorded numbers, give the
    # prepared test split (numbers here; the one-hot block is the category's position).
    rows = table.loc[prepared.test_rows]
    np.testing.assert_array_equal(
        prepared.splits["test"]["target"].to_numpy(),
        rows["target"].map({"x": 0, "y": 1, "z": 2}).to_numpy(),
    )
    for number in spec["numeric"]:
        column = rows[number["column"]].fillna(number["median"])
        expected = (column - number["mean"]) / number["scale"]
        np.testing.assert_allclose(
            prepared.splits["test"][number["column"]].to_numpy(), expected, rtol=1e-5, atol=1e-6
        )

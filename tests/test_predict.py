"""``nntune predict``: raw rows through the recorded preprocessing and the model give what
the model gives on the prepared test split (labels equal, probabilities within 1e-5), in a
tmp project built in-process (prepare, write_prepared, build_model, save_model)."""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_table, repo_params_dict, shrink
from typer.testing import CliRunner

from nntune.cli import app
from nntune.config.params import parse_params
from nntune.serving.preprocessing import PreprocessingError, PreprocessingSpec, encode_rows
from nntune.stage import artifacts
from nntune.stage.data import Prepared, write_prepared
from nntune.stage.preprocess import prepare
from nntune.stage.schema import infer_schema

runner = CliRunner()


def categorical_table(n_rows: int = 150) -> pd.DataFrame:
    """make_table plus a category tied to the class, gaps in a number and in the category,
    and an id column the params exclude."""
    table = make_table(n_rows, labels=["cat", "dog", "eel"])
    table["colour"] = np.array(["red", "green", "blue"], dtype=object)[np.arange(n_rows) % 3]
    table.loc[table.index % 7 == 0, "a"] = np.nan
    table.loc[table.index % 11 == 0, "colour"] = None
    table["id"] = [f"row-{i}" for i in range(n_rows)]
    return table


def regression_table(n_rows: int = 120) -> pd.DataFrame:
    table = make_table(n_rows).drop(columns="target")
    table["target"] = 3.0 * table["a"] - table["b"] + 100.0  # far from 0: units matter
    return table


@dataclass
class Project:
    root: Path
    table: pd.DataFrame
    prepared: Prepared
    net: Any  # keras.Model

    def test_rows(self) -> pd.DataFrame:
        return self.table.loc[self.prepared.test_rows]

    def model_output(self, x: np.ndarray | None = None) -> np.ndarray:
        x = self.prepared.x("test") if x is None else x
        return np.asarray(self.net.predict(x, verbose=0))


def make_project(
    root: Path, table: pd.DataFrame, loose: tuple[str, ...] = (), **data: Any
) -> Project:
    """params.yaml, the table, an inferred schema (``loose`` columns without checks), the
    prepared splits and an untrained model: all `nntune predict` reads."""
    import keras

    from nntune.stage.model import build_model

    raw = shrink(repo_params_dict())
    raw["data"].update(source="data/table.csv", schema="data/table.schema.yaml", **data)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    artifacts.write_csv(root / "data/table.csv", table)
    schema = infer_schema(table, params.data)
    for column in loose:
        schema = schema.update_column(column, checks=[])
    artifacts.write_text(root / "data/table.schema.yaml", schema.to_yaml())
    prepared = prepare(table, params.data)
    write_prepared(prepared, root / "data/prepared")
    keras.utils.set_random_seed(0)
    net = build_model(
        params.model, params.train, len(prepared.features), params.data.task, len(prepared.classes)
    )
    artifacts.save_model(net, root / "models/model.keras")
    return Project(root, table, prepared, net)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def predict(*args: str) -> Any:
    return runner.invoke(app, ["predict", *args])


def stdout_frame(result: Any) -> pd.DataFrame:
    assert result.exit_code == 0, result.output
    return pd.read_csv(io.StringIO(result.stdout))


def expected_labels(project: Project, output: np.ndarray) -> np.ndarray:
    """The labels the evaluate stage writes for this output (reports/predictions.csv)."""
    from nntune.stage.evaluate import evaluate_predictions

    _, y = project.prepared.xy("test")
    _, frame = evaluate_predictions(project.prepared, y, output)
    return frame["predicted"].to_numpy()


def spec_of(project: Project) -> PreprocessingSpec:
    return PreprocessingSpec.from_meta(project.prepared.meta())


@pytest.mark.parametrize(
    ("table", "data"),
    [
        (make_table(120), {}),
        (categorical_table(), {"missing": "impute", "exclude": ["id"]}),
    ],
    ids=["numeric", "categorical-impute"],
)
def test_encode_rows_reproduces_the_prepared_test_split(
    tiny_params: Any, table: pd.DataFrame, data: dict[str, Any]
) -> None:
    import dataclasses

    params = dataclasses.replace(tiny_params.data, **data)
    prepared = prepare(table, params)
    spec = PreprocessingSpec.from_meta(prepared.meta())
    encoded = encode_rows(table.loc[prepared.test_rows], spec, "test rows")
    np.testing.assert_allclose(encoded.features, prepared.x("test"), atol=1e-6, rtol=0)
    assert encoded.features.dtype == np.float32 and encoded.unseen == () and encoded.kept.all()


def test_spec_of_an_older_meta_without_the_record(tiny_params: Any) -> None:
    """A project prepared before the record existed: all-numeric features and no
    imputation are rebuilt from the scaler; anything else asks for `dvc repro prepare`."""
    prepared = prepare(make_table(120), tiny_params.data)
    meta = {k: v for k, v in prepared.meta().items() if k != "preprocessing"}
    spec = PreprocessingSpec.from_meta(meta, missing="error")
    encoded = encode_rows(make_table(120).loc[prepared.test_rows], spec, "rows")
    np.testing.assert_allclose(encoded.features, prepared.x("test"), atol=1e-6, rtol=0)
    with pytest.raises(PreprocessingError, match="dvc repro prepare"):
        PreprocessingSpec.from_meta(meta, missing="impute")


def test_missing_value_under_error_names_column_and_rows(tiny_params: Any) -> None:
    table = make_table(120)
    spec = PreprocessingSpec.from_meta(prepare(table, tiny_params.data).meta())
    table.loc[[4, 9], "b"] = np.nan
    with pytest.raises(
        PreprocessingError, match=r"column b has missing values in data row\(s\) 4, 9"
    ):
        encode_rows(table, spec, "new.csv")


def test_labels_and_probabilities_match_the_model_on_the_prepared_test_split(
    in_tmp: Path,
) -> None:
    project = make_project(in_tmp, make_table(150, labels=["x", "y", "z"]))
    artifacts.write_csv(in_tmp / "new.csv", project.test_rows())  # target present: ignored
    output = project.model_output()
    labels = stdout_frame(predict("new.csv"))
    assert list(labels.columns) == ["prediction"]
    assert labels["prediction"].tolist() == expected_labels(project, output).tolist()
    proba = stdout_frame(predict("new.csv", "--proba"))
    assert list(proba.columns) == ["proba_x", "proba_y", "proba_z"]
    np.testing.assert_allclose(proba.to_numpy(), output, atol=1e-5, rtol=0)


def test_binary_labels_from_the_sigmoid_head(in_tmp: Path) -> None:
    """Original labels (strings) and [1 - p, p], as evaluate turns a sigmoid into classes;
    the target column may be absent."""
    project = make_project(
        in_tmp, make_table(150, n_classes=2, labels=["no", "yes"]), task="binary"
    )
    artifacts.write_csv(in_tmp / "new.csv", project.test_rows().drop(columns="target"))
    output = project.model_output()
    labels = stdout_frame(predict("new.csv"))
    assert labels["prediction"].tolist() == expected_labels(project, output).tolist()
    proba = stdout_frame(predict("new.csv", "--proba"))
    np.testing.assert_allclose(proba["proba_yes"], output[:, 0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(proba["proba_no"], 1.0 - output[:, 0], atol=1e-5, rtol=0)


def test_categories_gaps_and_an_unseen_category(in_tmp: Path) -> None:
    """Gaps imputed with the training values; an unseen category encodes as zeros and is
    counted on stderr; the id (excluded from the features) is kept, first."""
    project = make_project(
        in_tmp, categorical_table(), loose=("colour",), missing="impute", exclude=["id"]
    )
    rows = project.test_rows().copy()
    unseen = rows.index[rows["colour"].notna()][:2]
    rows.loc[unseen, "colour"] = "purple"
    artifacts.write_csv(in_tmp / "new.csv", rows)
    x = project.prepared.x("test").copy()
    block = [project.prepared.features.index(f"colour_{c}") for c in ("blue", "green", "red")]
    x[np.ix_(rows.index.get_indexer(unseen), block)] = 0.0  # what scikit-learn does
    output = project.model_output(x)
    result = predict("new.csv", "--keep", "id")
    frame = stdout_frame(result)
    assert list(frame.columns) == ["id", "prediction"]
    assert frame["id"].tolist() == rows["id"].tolist()
    assert frame["prediction"].tolist() == expected_labels(project, output).tolist()
    assert (
        "warning: column colour: 2 row(s) with categories not seen in training "
        "(encoded as zeros): purple"
    ) in result.stderr
    proba = stdout_frame(predict("new.csv", "--proba"))
    np.testing.assert_allclose(proba.to_numpy(), output, atol=1e-5, rtol=0)


def test_regression_in_the_targets_units(in_tmp: Path) -> None:
    project = make_project(in_tmp, regression_table(), task="regression")
    artifacts.write_csv(in_tmp / "new.csv", project.test_rows())
    frame = stdout_frame(predict("new.csv"))
    np.testing.assert_allclose(frame["prediction"], project.model_output()[:, 0], atol=1e-5)
    result = predict("new.csv", "--proba")
    assert result.exit_code == 2 and "regression" in result.stderr


def test_schema_violation_exits_2_with_the_report_and_writes_nothing(in_tmp: Path) -> None:
    project = make_project(in_tmp, make_table(150))
    rows = project.test_rows().drop(columns="target")
    rows["b"] = rows["b"].astype(object)
    rows.loc[rows.index[0], "b"] = "oops"
    rows.loc[rows.index[1], "a"] = 1e9
    artifacts.write_csv(in_tmp / "new.csv", rows)
    result = predict("new.csv", "-o", "out.csv")
    assert result.exit_code == 2
    assert "new.csv fails data/table.schema.yaml" in result.stderr  # validate's report
    assert "numbers only" in result.stderr and "in_range" in result.stderr
    assert "error: new.csv: " in result.stderr and "nothing was predicted" in result.stderr
    assert not (in_tmp / "out.csv").exists() and result.stdout == ""


def test_files_keep_columns_and_dropped_rows(in_tmp: Path) -> None:
    """-o by suffix (CSV, Parquet); --keep a column the schema does not know; under
    data.missing: drop a row with a gap is left out and counted."""
    table = make_table(150)
    table.loc[[5, 6], "c"] = np.nan  # the inferred schema lets c have gaps
    project = make_project(in_tmp, table, missing="drop")
    rows = project.test_rows().drop(columns="target")
    rows["name"] = [f"n{i}" for i in range(len(rows))]  # not in the schema: passes unchecked
    rows.loc[rows.index[3], "c"] = np.nan
    artifacts.write_parquet(in_tmp / "new.parquet", rows)
    result = predict("new.parquet", "-o", "out.parquet", "-k", "name", "-k", "uid")
    assert result.exit_code == 0, result.output
    assert "1 row(s) with missing values dropped, not predicted" in result.stderr
    assert "data row(s) 3" in result.stderr
    frame = pd.read_parquet(in_tmp / "out.parquet")
    assert list(frame.columns) == ["name", "uid", "prediction"]
    assert frame["name"].tolist() == rows["name"].drop(rows.index[3]).tolist()
    expected = expected_labels(project, project.model_output())
    assert frame["prediction"].tolist() == np.delete(expected, 3).tolist()
    wrong = predict("new.parquet", "-o", "out.txt", "-k", "name")
    assert (
        wrong.exit_code == 2 and "out.txt: write predictions to a .csv or .parquet" in wrong.stderr
    )
    assert not (in_tmp / "out.txt").exists()


def test_missing_model_says_run_dvc_repro(in_tmp: Path) -> None:
    make_project(in_tmp, make_table(150))
    artifacts.write_csv(in_tmp / "new.csv", make_table(10))
    (in_tmp / "models/model.keras").unlink()
    result = predict("new.csv")
    assert result.exit_code == 2
    assert "models/model.keras: not found; run `dvc repro` first" in result.stderr


def test_experiment_reads_its_model_from_git_and_dvc_not_the_workspace(in_tmp: Path) -> None:
    """--experiment NAME resolves through DVC (here a branch; an experiment's name resolves
    the same way) and leaves the workspace as it was."""
    from dvc.repo import Repo

    project = make_project(in_tmp, make_table(150, labels=["x", "y", "z"]))
    artifacts.write_csv(in_tmp / "new.csv", project.test_rows())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@nntune.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=in_tmp, check=True)
    Repo.init(str(in_tmp)).close()
    subprocess.run([*git, "add", "-A"], cwd=in_tmp, check=True)
    subprocess.run([*git, "commit", "-qm", "trained"], cwd=in_tmp, check=True)
    subprocess.run(["git", "branch", "tuned"], cwd=in_tmp, check=True)
    for path in ("models/model.keras", "data/prepared/meta.json", "params.yaml"):
        (in_tmp / path).unlink()  # the workspace has none of them now
    before = subprocess.run(["git", "status", "--porcelain"], cwd=in_tmp, capture_output=True)
    frame = stdout_frame(predict("new.csv", "--experiment", "tuned"))
    assert frame["prediction"].tolist() == expected_labels(project, project.model_output()).tolist()
    after = subprocess.run(["git", "status", "--porcelain"], cwd=in_tmp, capture_output=True)
    assert after.stdout == before.stdout
    missing = predict("new.csv", "--experiment", "no-such-exp")
    assert (
        missing.exit_code == 2 and "no experiment or commit named 'no-such-exp'" in missing.stderr
    )

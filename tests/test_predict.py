"""``nntune predict``: raw rows through the recorded preprocessing and the model give what
the model gives on the prepared test split (labels equal, probabilities within 1e-5), in a
tmp project built in-process (prepare, write_prepared, build_model, save_model); bad input
is refused with one line per problem and no output file; predict, the exported Keras model
and the evaluate stage agree on the same raw rows."""

from __future__ import annotations

import dataclasses
import io
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_table, repo_params_dict, shrink, tensorflow_only
from typer.testing import CliRunner

from nntune.cli import app
from nntune.config.params import load_params, parse_params
from nntune.serving.card import ExportSource
from nntune.serving.preprocessing import PreprocessingError, PreprocessingSpec, encode_rows
from nntune.stage import artifacts
from nntune.stage.data import Prepared, read_prepared, write_prepared
from nntune.stage.outputs import class_probabilities
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
    # The inferred schema allows only the table's colours: predict still takes a new one.
    project = make_project(in_tmp, categorical_table(), missing="impute", exclude=["id"])
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


def test_schema_violation_exits_2_with_one_line_per_problem_and_writes_nothing(
    in_tmp: Path,
) -> None:
    """Every problem at once, each on its line: text in one column, a value outside the
    schema's range in another; pandera's own dtype and range failures for the column with
    text only repeat its problem and are left out."""
    project = make_project(in_tmp, make_table(150))
    rows = project.test_rows().drop(columns="target")
    rows["b"] = rows["b"].astype(object)
    rows.loc[rows.index[0], "b"] = "oops"
    rows.loc[rows.index[1], "a"] = 1e9
    artifacts.write_csv(in_tmp / "new.csv", rows)
    result = predict("new.csv", "-o", "out.csv")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "error: new.csv: 2 problems; fix those rows (checked against data/table.schema.yaml), "
        "nothing was predicted:"
    )
    assert lines[1] == (
        "  column b has text where the model needs numbers, in 1 row(s): row 0: 'oops'"
    )
    assert lines[2].startswith("  column a fails in_range(") and "row 1: 1000000000.0" in lines[2]
    assert len(lines) == 3
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


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A briefly trained model of categorical_table (gaps imputed, the id excluded) whose
    table has "purple", a colour no training row has, in two test rows: the tests below
    share it and write their own files outside it."""
    from nntune.stage.training import fit

    table = categorical_table()
    data = parse_params(shrink(repo_params_dict())).data
    split = prepare(table, dataclasses.replace(data, missing="impute", exclude=("id",)))
    table.loc[split.test_rows[1:3], "colour"] = "purple"  # the split depends on the target
    root = tmp_path_factory.mktemp("tuned")
    project = make_project(root, table, missing="impute", exclude=["id"])
    assert project.prepared.test_rows == split.test_rows
    params = load_params(root / "params.yaml")
    fit(project.net, project.prepared, params.train, root / "dvclive", seed=0)
    artifacts.save_model(project.net, root / "models/model.keras")
    return project


@pytest.fixture
def in_tuned(tuned: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(tuned.root)
    return tuned


def refused(result: Any, out: Path) -> str:
    """The one error of a command that exits 2 and writes nothing."""
    assert result.exit_code == 2, result.output
    assert not out.exists() and result.stdout == ""
    (line,) = result.stderr.splitlines()
    return str(line)


def test_a_missing_feature_column_is_named(in_tuned: Project, tmp_path: Path) -> None:
    """The absent column, and the columns the table has that the model does not read (a
    misspelt name shows up there)."""
    rows, out = in_tuned.test_rows(), tmp_path / "out.csv"
    artifacts.write_csv(tmp_path / "no-a.csv", rows.drop(columns="a"))
    assert refused(predict(str(tmp_path / "no-a.csv"), "-o", str(out)), out) == (
        f"error: {tmp_path}/no-a.csv: no column a, which the model needs (a feature it was "
        "trained on); add it, nothing was predicted (the table's columns it does not read: id)"
    )
    artifacts.write_csv(tmp_path / "typo.csv", rows.rename(columns={"colour": "color", "b": "B"}))
    assert refused(predict(str(tmp_path / "typo.csv"), "-o", str(out)), out) == (
        f"error: {tmp_path}/typo.csv: no columns b, colour, which the model needs (features it "
        "was trained on); add them, nothing was predicted (the table's columns it does not "
        "read: B, color, id)"
    )


def test_columns_the_model_does_not_read_are_left_out_before_validation(
    in_tuned: Project, tmp_path: Path
) -> None:
    """An unknown column (the strict schema would refuse it) is ignored with a warning; the
    training table's id, which the model does not read, may be there or not, unchecked."""
    rows, out = in_tuned.test_rows(), tmp_path / "out.csv"
    expected = expected_labels(in_tuned, in_tuned.model_output()).tolist()
    unknown = rows.drop(columns="id").assign(notes="text, not checked")
    artifacts.write_csv(tmp_path / "notes.csv", unknown)
    result = predict(str(tmp_path / "notes.csv"), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert (
        f"warning: {tmp_path}/notes.csv: column notes is unknown to the model and its schema: "
        "ignored (--keep notes copies it into the output)"
    ) in result.stderr.splitlines()
    assert pd.read_csv(out)["prediction"].tolist() == expected
    artifacts.write_csv(tmp_path / "id.csv", rows)
    with_id = predict(str(tmp_path / "id.csv"))
    assert "unknown to the model" not in with_id.stderr  # the schema knows the id
    assert stdout_frame(with_id)["prediction"].tolist() == expected


def test_text_in_a_numeric_column_names_the_column_rows_and_values(
    in_tuned: Project, tmp_path: Path
) -> None:
    rows, out = in_tuned.test_rows().copy(), tmp_path / "out.csv"
    rows["uid"] = rows["uid"].astype(object)
    rows.loc[rows.index[[2, 5]], "uid"] = ["none", "1,5"]
    artifacts.write_csv(tmp_path / "text.csv", rows)
    assert refused(predict(str(tmp_path / "text.csv"), "-o", str(out)), out) == (
        f"error: {tmp_path}/text.csv: column uid has text where the model needs numbers, in "
        "2 row(s): row 2: 'none', row 5: '1,5'; fix those rows (checked against "
        "data/table.schema.yaml), nothing was predicted"
    )


def test_text_in_a_numeric_column_the_schema_does_not_type(tiny_params: Any) -> None:
    """encode_rows checks too: a schema need not declare a dtype; six rows name five."""
    table = make_table(120)
    spec = PreprocessingSpec.from_meta(prepare(table, tiny_params.data).meta())
    table["c"] = table["c"].astype(object)
    table.loc[range(3, 9), "c"] = "x"
    with pytest.raises(PreprocessingError) as raised:
        encode_rows(table, spec, "new.csv")
    assert str(raised.value) == (
        "new.csv: column c has text where the model needs numbers, in 6 row(s): row 3: 'x', "
        "row 4: 'x', row 5: 'x', row 6: 'x', row 7: 'x' and 1 more; fix those values, "
        "nothing was predicted"
    )


def test_an_empty_file_is_refused(in_tuned: Project, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    (tmp_path / "empty.csv").write_bytes(b"")
    assert refused(predict(str(tmp_path / "empty.csv"), "-o", str(out)), out) == (
        f"error: {tmp_path}/empty.csv: the file is empty (0 bytes), nothing to predict; give "
        "a CSV or Parquet table with a header row and one row per prediction"
    )
    artifacts.write_csv(tmp_path / "header.csv", in_tuned.test_rows().iloc[:0])
    assert refused(predict(str(tmp_path / "header.csv"), "-o", str(out)), out) == (
        f"error: {tmp_path}/header.csv: has a header but no data rows"
    )


def test_a_table_of_the_target_alone_has_no_feature_column(
    in_tuned: Project, tmp_path: Path
) -> None:
    out = tmp_path / "out.csv"
    artifacts.write_csv(tmp_path / "target.csv", in_tuned.test_rows()[["target"]])
    assert refused(predict(str(tmp_path / "target.csv"), "-o", str(out)), out) == (
        f"error: {tmp_path}/target.csv: no feature column is present (the table has only the "
        "target column target); the model reads a, b, c, uid, colour: give a table with "
        "those columns, nothing was predicted"
    )


@tensorflow_only  # the export is a TensorFlow model
def test_predict_the_exported_model_and_evaluate_agree_on_the_raw_test_rows(
    in_tuned: Project, tmp_path: Path
) -> None:
    """The same raw test rows (gaps imputed, a colour unseen in training) through
    `nntune predict --proba`, the exported Keras model and the evaluate stage (the model
    file on the prepared test split): the same labels, probabilities within 1e-5."""
    import keras

    from nntune.serving.export import export_model, input_names
    from nntune.stage.evaluate import evaluate_predictions

    rows = in_tuned.test_rows()
    assert (rows["colour"] == "purple").sum() == 2
    assert rows["a"].isna().any() and rows["colour"].isna().any()
    prepared = read_prepared("data/prepared", splits=("test",))
    x_test, y_test = prepared.xy("test")
    output = keras.saving.load_model("models/model.keras").predict(x_test, verbose=0)
    metrics, evaluated = evaluate_predictions(prepared, y_test, output)
    labels, probabilities = evaluated["predicted"].tolist(), class_probabilities(output)
    classes = np.asarray(prepared.classes, dtype=object)

    artifacts.write_csv(tmp_path / "rows.csv", rows)
    result = predict(str(tmp_path / "rows.csv"), "--proba", "-o", str(tmp_path / "proba.csv"))
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(tmp_path / "proba.csv").to_numpy()
    assert classes[predicted.argmax(axis=1)].tolist() == labels
    np.testing.assert_allclose(predicted, probabilities, atol=1e-5, rtol=0)
    assert "colour: 2 row(s) with categories not seen in training" in result.stderr

    source = ExportSource(
        model=Path("models/model.keras").read_bytes(),
        meta=in_tuned.prepared.meta(),
        params=yaml.safe_load(Path("params.yaml").read_text()),
        train_metrics={},  # the card's record, not what is compared here
        evaluate_metrics=metrics,
        train_run={},
        experiment=None,
        commit=None,
    )
    exported = export_model(source, tmp_path / "export", "keras")
    spec = PreprocessingSpec.from_meta(source.meta)
    categorical = {c.column for c in spec.categorical}
    inputs = {  # as the export takes them: float32 with NaN, strings with "" for a gap
        name: rows[column].fillna("").to_numpy(dtype=object)
        if column in categorical
        else rows[column].to_numpy(dtype="float32")
        for column, name in input_names(spec).items()
    }
    net = keras.saving.load_model(exported.out / "model.keras")
    from_export = np.asarray(net.predict(inputs, verbose=0))
    assert classes[from_export.argmax(axis=1)].tolist() == labels
    np.testing.assert_allclose(from_export, probabilities, atol=1e-5, rtol=0)

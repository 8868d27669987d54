"""``nntune export``: the exported model, fed the raw test rows, predicts what the trained
model predicts on the prepared test split (Keras file and SavedModel, in this process and
in one that cannot import nntune), and its model card records where it came from."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_table, repo_params_dict, shrink, tensorflow_only

from nntune.config.params import parse_params
from nntune.serving.card import ExportSource
from nntune.serving.export import ExportError, export_model
from nntune.serving.sources import experiment_source
from nntune.stage import artifacts
from nntune.stage.data import read_prepared, write_prepared
from nntune.stage.evaluate import evaluate_predictions
from nntune.stage.outputs import class_probabilities
from nntune.stage.preprocess import prepare

# The export is a TensorFlow model; on JAX it is refused (tests/test_backend.py).
pytestmark = tensorflow_only

COLOURS = ["red", "green", "blue"]

# Run by a fresh Python in a folder with rows.json: argv is the SavedModel's folder and the
# .keras file. It drops every path entry that holds nntune (src/, the editable install's).
WITHOUT_NNTUNE = """
import importlib.util, json, os, sys
sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "nntune"))]
assert importlib.util.find_spec("nntune") is None
import numpy as np, tensorflow as tf, keras
saved_model, keras_file = sys.argv[1:]
rows = json.load(open("rows.json"))
card = json.load(open(os.path.join(saved_model, "model_card.json")))
serve = tf.saved_model.load(saved_model).signatures["serving_default"]
dtypes = {"float32": tf.float32, "string": tf.string}
named = {c["input"]: tf.constant(rows[c["column"]], dtypes[c["dtype"]]) for c in card["inputs"]}
saved = serve(**named)["probabilities"].numpy()
net = keras.saving.load_model(keras_file)
kinds = {"float32": "float32", "string": object}
arrays = {c["input"]: np.array(rows[c["column"]], kinds[c["dtype"]]) for c in card["inputs"]}
from_keras = net.predict(arrays, verbose=0)
assert "nntune" not in sys.modules, sorted(m for m in sys.modules if "nntune" in m)
json.dump({"saved": saved.tolist(), "keras": from_keras.tolist()}, open("out.json", "w"))
"""


def _classification_table(n_classes: int, labels: list[str]) -> pd.DataFrame:
    """make_table plus a categorical column tied to the class, a year-like column (large
    mean, small spread: what float32 scaling would get wrong) and a name with a space."""
    frame = make_table(n_rows=150, n_classes=n_classes, labels=labels)
    rng = np.random.default_rng(1)
    codes = np.arange(len(frame)) % n_classes
    frame["colour"] = [
        COLOURS[c % 3] if rng.random() < 0.8 else COLOURS[(c + 1) % 3] for c in codes
    ]
    frame["year of make"] = 2000.0 + rng.integers(0, 4, len(frame)) + codes * 0.5
    return frame


def _regression_table() -> pd.DataFrame:
    frame = make_table(n_rows=150, n_classes=3).drop(columns="target")
    rng = np.random.default_rng(2)
    frame["colour"] = rng.choice(COLOURS, len(frame))
    effect = frame["colour"].map({"red": 1.0, "green": -1.0, "blue": 0.0})
    frame["target"] = 2 * frame["a"] - frame["b"] + effect + rng.normal(0, 0.1, len(frame))
    return frame


def _with_gaps(frame: pd.DataFrame, rows: list[int], unseen: bool) -> pd.DataFrame:
    """Gaps in train and test rows alike; an unseen category in two test rows."""
    frame = frame.copy()
    frame.loc[frame.index[::7], "a"] = np.nan
    frame.loc[frame.index[3::11], "colour"] = np.nan
    frame.loc[rows[:2], "b"] = np.nan
    frame.loc[rows[2:4], "colour"] = np.nan
    if unseen:
        frame.loc[rows[4:6], "colour"] = "purple"
    return frame


@dataclasses.dataclass
class Trained:
    frame: pd.DataFrame  # the raw table
    source: ExportSource
    expected: np.ndarray  # probabilities (n, K) or values (n,) on the prepared test split
    classes: list[Any]
    folder: Path


def _train(folder: Path, frame: pd.DataFrame, task: str, unseen: bool, **data: Any) -> Trained:
    from nntune.stage.model import TargetScale, build_model
    from nntune.stage.training import fit, seed_everything

    raw = shrink(repo_params_dict())
    raw["data"].update(task=task, missing="impute", target="target", **data)
    params = parse_params(raw, source="test")
    first = prepare(frame, params.data)  # the split depends on the target alone
    frame = _with_gaps(frame, first.test_rows, unseen)
    prepared = prepare(frame, params.data, source_md5="f" * 32)
    assert prepared.test_rows == first.test_rows
    write_prepared(prepared, folder / "data" / "prepared")
    data = read_prepared(folder / "data" / "prepared")
    seed_everything(params.runtime)
    net = build_model(
        params.model,
        params.train,
        len(data.features),
        data.task,
        len(data.classes),
        target=TargetScale.of(data.task, data.xy("train")[1]),
    )
    result = fit(net, data, params.train, folder / "dvclive", seed=params.runtime.seed)
    artifacts.save_model(net, folder / "models" / "model.keras")
    x_test, y_test = data.xy("test")
    output = net.predict(x_test, verbose=0)
    test_metrics, _ = evaluate_predictions(data, y_test, output)
    source = ExportSource(
        model=(folder / "models" / "model.keras").read_bytes(),
        meta=json.loads((folder / "data" / "prepared" / "meta.json").read_text()),
        params=raw,
        train_metrics=result.metrics,
        evaluate_metrics=test_metrics,
        train_run={"versions": {"keras": "trained-with"}},
        experiment="exp-one",
        commit="c" * 40,
    )
    expected = output.reshape(-1) if task == "regression" else class_probabilities(output)
    return Trained(frame, source, expected, data.classes, folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    """One briefly trained model per task, each on a table with gaps (imputed)."""
    base = tmp_path_factory.mktemp("trained")
    return {
        "multiclass": _train(
            base / "multiclass", _classification_table(3, ["x", "y", "z"]), "multiclass", True
        ),
        "binary": _train(base / "binary", _classification_table(2, ["no", "yes"]), "binary", False),
        "regression": _train(base / "regression", _regression_table(), "regression", True),
    }


def _shops(frame: pd.DataFrame) -> pd.DataFrame:
    """A categorical column with a long tail: three common values tied to the class and
    thirty rare ones, for data.max_categories to group."""
    rng = np.random.default_rng(4)
    codes = frame["target"].map({label: i for i, label in enumerate(sorted(set(frame["target"])))})
    common = np.array(["north", "south", "east"])[codes.to_numpy() % 3]
    rare = np.array([f"kiosk{i}" for i in rng.integers(0, 30, len(frame))])
    return frame.assign(shop=np.where(rng.random(len(frame)) < 0.7, common, rare))


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Trained, Path]]:
    """Models prepared with the quantile and the robust scaling and a capped categorical
    column (its rare values grouped), exported as .keras files."""
    base = tmp_path_factory.mktemp("tabular")
    table = _shops(_classification_table(3, ["x", "y", "z"]))
    models = {
        "quantile": _train(
            base / "quantile", table, "multiclass", True, scaling="quantile", max_categories=4
        ),
        "robust": _train(
            base / "robust", _shops(_regression_table()), "regression", True, scaling="robust",
            max_categories=3,
        ),
    }  # fmt: skip
    return {
        name: (model, export_model(model.source, base / f"{name}-keras", "keras").out)
        for name, model in models.items()
    }


@pytest.fixture(scope="module")
def exported(
    trained: dict[str, Trained], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], Path]:
    base = tmp_path_factory.mktemp("exported")
    return {
        (task, fmt): export_model(model.source, base / f"{task}-{fmt}", fmt).out  # type: ignore[arg-type]
        for task, model in trained.items()
        for fmt in ("keras", "savedmodel")
    }


def _raw_test_rows(model: Trained) -> dict[str, np.ndarray]:
    """The test split's raw rows as the exported model takes them: numbers float32 with NaN
    for a gap, categories as strings with "" for a gap."""
    rows = model.frame.iloc[model.source.meta["test_rows"]].drop(columns="target")
    inputs: dict[str, np.ndarray] = {}
    for column in rows.columns:
        values = rows[column]
        if pd.api.types.is_numeric_dtype(values):
            inputs[column] = values.to_numpy(dtype="float32")
        else:
            inputs[column] = values.astype(object).where(values.notna(), "").to_numpy(dtype=object)
    return inputs


def _by_input_name(inputs: dict[str, np.ndarray], folder: Path) -> dict[str, np.ndarray]:
    """The rows keyed by each column's input name, as the export's model card lists them."""
    card = json.loads((folder / "model_card.json").read_text())
    return {c["input"]: inputs[c["column"]] for c in card["inputs"]}


def _saved_model_output(folder: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import tensorflow as tf

    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    named = {k: tf.constant(list(v)) for k, v in _by_input_name(inputs, folder).items()}
    (output,) = serve(**named).values()
    return np.asarray(output)


def _assert_same_predictions(model: Trained, output: np.ndarray) -> None:
    if not model.classes:
        np.testing.assert_allclose(output, model.expected, rtol=1e-5, atol=1e-5)
        return
    labels = np.asarray(model.classes, dtype=object)
    assert list(labels[output.argmax(axis=1)]) == list(labels[model.expected.argmax(axis=1)])
    np.testing.assert_allclose(output, model.expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression"])
def test_the_keras_file_predicts_raw_rows_as_the_model_predicts_prepared_ones(
    trained: dict[str, Trained], exported: dict[tuple[str, str], Path], task: str
) -> None:
    import keras

    model = trained[task]
    folder = exported[task, "keras"]
    net = keras.saving.load_model(folder / "model.keras")
    output = np.asarray(net.predict(_by_input_name(_raw_test_rows(model), folder), verbose=0))
    _assert_same_predictions(model, output)


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression"])
def test_the_saved_model_predicts_raw_rows_as_the_model_predicts_prepared_ones(
    trained: dict[str, Trained], exported: dict[tuple[str, str], Path], task: str
) -> None:
    model = trained[task]
    _assert_same_predictions(
        model, _saved_model_output(exported[task, "savedmodel"], _raw_test_rows(model))
    )


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression"])
def test_the_built_in_preprocessing_gives_the_prepared_features(
    trained: dict[str, Trained], exported: dict[tuple[str, str], Path], task: str
) -> None:
    """Imputation, float64 scaling (the year column), one-hot with "" imputed and an unseen
    category as zeros: the features the trained model sees are prepare's, to 1e-6."""
    import keras

    model, folder = trained[task], exported[task, "keras"]
    net = keras.saving.load_model(folder / "model.keras")
    features = keras.Model(net.inputs, net.get_layer("features").output)
    inputs = _by_input_name(_raw_test_rows(model), folder)
    got = np.asarray(features.predict(inputs, verbose=0))
    prepared = read_prepared(model.folder / "data" / "prepared", splits=("test",))
    np.testing.assert_allclose(got, prepared.x("test"), rtol=0, atol=1e-6)
    colour = [prepared.features.index(f"colour_{c}") for c in sorted(COLOURS)]
    unseen = np.flatnonzero(_raw_test_rows(model)["colour"] == "purple")
    assert len(unseen) == (0 if task == "binary" else 2)
    assert not got[np.ix_(unseen, colour)].any()  # an unseen category is all zeros


def test_exports_load_and_predict_where_nntune_cannot_be_imported(
    trained: dict[str, Trained], exported: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    """A fresh Python without src/ on its path (nor the editable install's entry) loads the
    SavedModel with TensorFlow alone and the .keras file with Keras alone."""
    model = trained["multiclass"]
    inputs = {k: v.tolist() for k, v in _raw_test_rows(model).items()}
    (tmp_path / "rows.json").write_text(json.dumps(inputs, allow_nan=True))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    paths = [str(exported["multiclass", "savedmodel"]), str(exported["multiclass", "keras"])]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_NNTUNE, paths[0], f"{paths[1]}/model.keras"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    _assert_same_predictions(model, np.array(out["saved"]))
    _assert_same_predictions(model, np.array(out["keras"]))


def test_the_model_card_records_data_params_metrics_inputs_and_origin(
    trained: dict[str, Trained], exported: dict[tuple[str, str], Path]
) -> None:
    model = trained["multiclass"]
    folder = exported["multiclass", "savedmodel"]
    card = json.loads((folder / "model_card.json").read_text())
    assert card["source"]["experiment"] == "exp-one" and card["source"]["commit"] == "c" * 40
    assert card["data"]["source_md5"] == "f" * 32
    assert card["params"]["data.missing"] == "impute"
    assert card["params"]["model.units"] == model.source.params["model"]["units"]
    assert card["metrics"]["train"]["val_loss"] == model.source.train_metrics["val_loss"]
    assert card["metrics"]["evaluate"] == model.source.evaluate_metrics
    assert card["classes"] == ["x", "y", "z"]
    inputs = {c["column"]: c for c in card["inputs"]}
    assert inputs["colour"]["dtype"] == "string"
    assert inputs["colour"]["categories"] == sorted(COLOURS)
    assert inputs["year of make"] == {
        **inputs["year of make"],
        "dtype": "float32",
        "input": "year_of_make",
    }
    assert card["output"]["name"] == "probabilities" and card["output"]["shape"] == ["n", 3]
    assert card["versions"]["trained_with"] == {"keras": "trained-with"}
    assert card["versions"]["exported_with"]["keras"]
    markdown = (folder / "MODEL_CARD.md").read_text()
    assert "experiment `exp-one`" in markdown and "| colour | `colour` | categorical |" in markdown
    assert (folder / "saved_model.pb").is_file()
    assert sorted(p.name for p in exported["multiclass", "keras"].iterdir()) == [
        "MODEL_CARD.md",
        "model.keras",
        "model_card.json",
    ]


def test_a_folder_that_is_not_an_export_is_never_replaced(
    trained: dict[str, Trained], tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_model(trained["binary"].source, tmp_path, "keras")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _git(project: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _project(folder: Path, source: ExportSource) -> tuple[Path, str, str]:
    """A git + DVC project whose HEAD commits the files an export reads (git-tracked here,
    which DVC's file system reads as it reads its cache), recorded as experiment exp-one of
    the commit before it: (project, baseline, experiment commit)."""
    project = folder / "project"
    project.mkdir()
    _git(project, "init", "-q")
    from dvc.repo import Repo

    Repo.init(str(project)).close()
    _git(project, "commit", "-qm", "baseline")
    baseline = _git(project, "rev-parse", "HEAD")
    files = {
        "models/model.keras": source.model,
        "data/prepared/meta.json": json.dumps(source.meta).encode(),
        "metrics/train.json": json.dumps(source.train_metrics).encode(),
        "metrics/evaluate.json": json.dumps(source.evaluate_metrics).encode(),
        "reports/train_run.json": json.dumps(source.train_run).encode(),
        "params.yaml": yaml.safe_dump(source.params).encode(),
    }
    for path, content in files.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_bytes(content)
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "experiment")
    commit = _git(project, "rev-parse", "HEAD")
    _git(project, "update-ref", f"refs/exps/{baseline[:2]}/{baseline[2:]}/exp-one", commit)
    return project, baseline, commit


def test_the_command_exports_the_workspace_model(
    trained: dict[str, Trained], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nntune export` without --experiment: the workspace's files, HEAD as the commit."""
    from typer.testing import CliRunner

    from nntune.cli import app  # every command module registered

    project, _, head = _project(tmp_path, trained["binary"].source)
    monkeypatch.chdir(project)
    result = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "out"), "-f", "keras"])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert card["source"]["workspace"] is True and card["source"]["commit"] == head
    assert card["format"] == "keras" and card["classes"] == ["no", "yes"]


def test_an_experiment_is_read_from_its_commit_without_touching_the_workspace(
    trained: dict[str, Trained], tmp_path: Path
) -> None:
    source = trained["regression"].source
    project, baseline, commit = _project(tmp_path, source)
    _git(project, "reset", "-q", "--hard", baseline)  # the workspace has none of its files
    before = _git(project, "status", "--porcelain", "--ignored")
    read = experiment_source(project, "exp-one")
    assert (read.experiment, read.commit) == ("exp-one", commit)
    assert read.model == source.model and read.meta == source.meta
    assert read.params == source.params and read.evaluate_metrics == source.evaluate_metrics
    assert _git(project, "status", "--porcelain", "--ignored") == before
    assert not (project / "models").exists()


@pytest.mark.parametrize("name", ["quantile", "robust"])
def test_the_export_builds_in_the_quantile_and_robust_scalings_and_grouped_categories(
    tabular: dict[str, tuple[Trained, Path]], name: str
) -> None:
    """The features the exported model computes from raw rows (the quantile map through
    erfinv, the grouped rare and unseen shops) are prepare's to 1e-6, and its predictions
    the trained model's."""
    import keras

    model, folder = tabular[name]
    net = keras.saving.load_model(folder / "model.keras")
    inputs = _by_input_name(_raw_test_rows(model), folder)
    features = keras.Model(net.inputs, net.get_layer("features").output)
    got = np.asarray(features.predict(inputs, verbose=0))
    prepared = read_prepared(model.folder / "data" / "prepared", splits=("test",))
    assert "shop_infrequent_sklearn" in prepared.features
    assert prepared.x("test")[:, prepared.features.index("shop_infrequent_sklearn")].any()
    np.testing.assert_allclose(got, prepared.x("test"), rtol=0, atol=1e-6)
    _assert_same_predictions(model, np.asarray(net.predict(inputs, verbose=0)))
    card = json.loads((folder / "model_card.json").read_text())
    shop = next(c for c in card["inputs"] if c["column"] == "shop")
    assert shop["unseen"] == "the infrequent group" and len(shop["infrequent"]) >= 20

"""Cross-validation (``data.cv_folds``): the params, the folds' split, a fold's training,
the folds' summary that compare and search rank by, the upgrade of an older params.yaml,
and, end to end, one DVC stage per fold whose mean `nntune compare` shows with its sd."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, make_table, repo_params_dict, shrink
from project import NNTUNE, run, scaffold
from sklearn.metrics import log_loss

from nntune.config.metrics import Objective
from nntune.config.params import parse_params
from nntune.config.sections import Params, ParamsError
from nntune.experiments import read_outputs
from nntune.experiments.folds import with_folds
from nntune.experiments.rows import Experiment
from nntune.scaffold.params_text import with_interpolated_keys
from nntune.stage.preprocess import prepare
from nntune.tuning.ranking import compare, records


def _params(**sections: dict[str, Any]) -> Params:
    raw = shrink(repo_params_dict())
    for name, values in sections.items():
        raw[name].update(values)
    return parse_params(raw, source="test")


def _problems(**sections: dict[str, Any]) -> str:
    with pytest.raises(ParamsError) as caught:
        _params(**sections)
    return "\n".join(caught.value.problems)


def test_cv_folds_is_off_by_default_and_takes_the_list_of_folds() -> None:
    assert _params().data.cv_folds == ()
    assert _params(data={"cv_folds": [0, 1, 2]}).data.cv_folds == (0, 1, 2)
    raw = shrink(repo_params_dict())
    del raw["data"]["cv_folds"]
    assert parse_params(raw).data.cv_folds == ()


@pytest.mark.parametrize("value", [5, [0], [1, 2], [0, 2], ["0", "1"], [0, 1, True], "all"])
def test_anything_but_the_folds_0_to_k_is_refused_with_the_list_form(value: Any) -> None:
    text = _problems(data={"cv_folds": value})
    assert "data.cv_folds" in text and "[0, 1, 2, 3, 4] for 5 folds" in text


def test_cross_validation_refuses_warm_starts_and_pretraining() -> None:
    warm = {"experiment": "parent", "model_md5": "a" * 32, "epochs": 1}
    text = _problems(data={"cv_folds": [0, 1]}, train={"warm_start": warm})
    assert "train.warm_start" in text and "--method tpe" in text
    text = _problems(data={"cv_folds": [0, 1]}, pretrain={"enabled": True})
    assert "pretrain.enabled" in text


def test_the_folds_partition_the_train_and_validation_rows_and_keep_the_test_split() -> None:
    table = make_table(n_rows=300, n_classes=3)
    plain = prepare(table, _params().data)
    data = _params(data={"cv_folds": [0, 1, 2, 3]}).data
    folds = [prepare(table, data, fold=f) for f in data.cv_folds]
    rest = set(table.index) - set(plain.test_rows)
    val_uids = [set(f.splits["val"]["uid"].round(4)) for f in folds]
    for prepared in folds:
        assert prepared.test_rows == plain.test_rows  # the test split never moves
        assert len(prepared.splits["train"]) + len(prepared.splits["val"]) == len(rest)
        # stratified: every class in every fold's validation part, in proportion
        counts = prepared.splits["val"]["target"].value_counts()
        assert counts.max() - counts.min() <= 1
    sizes = [len(v) for v in val_uids]
    assert sum(sizes) == len(rest) and max(sizes) - min(sizes) <= 1
    for i, a in enumerate(val_uids):  # the validation folds are disjoint
        for b in val_uids[i + 1 :]:
            assert not a & b


def test_a_fold_trains_on_the_others_and_records_its_validation_metrics() -> None:
    from nntune.stage.crossval import run_fold

    params = _params(data={"cv_folds": [0, 1]}, train={"max_epochs": 2})
    record = run_fold(params, make_table(n_rows=120), 1).record
    assert set(record) == {
        "fold_1_of",
        "fold_1_val_loss",
        "fold_1_val_accuracy",
        "fold_1_best_epoch",
        "fold_1_train_rows",
        "fold_1_val_rows",
    }
    assert record["fold_1_of"] == 2 and record["fold_1_val_rows"] == 48  # half of 96
    assert 0.0 < record["fold_1_val_loss"] < 5.0


def test_with_folds_ranks_by_the_folds_mean_and_keeps_the_split_value() -> None:
    metrics = {
        "val_loss": 0.5,
        "val_accuracy": 0.8,
        "fold_0_of": 2,
        "fold_1_of": 2,
        "fold_0_val_loss": 0.2,
        "fold_1_val_loss": 0.4,
        "fold_0_val_accuracy": 0.9,
        "fold_1_val_accuracy": 0.7,
        "test_accuracy": 0.85,
    }
    out = with_folds(metrics)
    assert out["val_loss"] == pytest.approx(0.3) and out["split_val_loss"] == 0.5
    assert out["val_loss_sd"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert out["val_accuracy"] == pytest.approx(0.8) and out["cv_folds"] == 2
    assert out["test_accuracy"] == 0.85
    assert with_folds({"val_loss": 0.5}) == {"val_loss": 0.5}
    diverged = with_folds({**metrics, "fold_1_val_loss": None})
    assert diverged["val_loss"] is None  # one fold without a value: no mean
    # An experiment without folds, listed beside one with folds: DVC's table gives it empty
    # fold columns, which are not folds of its own (it is not diverged).
    plain = {"val_loss": 0.5, **{k: None for k in metrics if k.startswith("fold_")}}
    assert with_folds(plain) == plain


def _experiment(name: str, metrics: dict[str, Any]) -> Experiment:
    folds = {f"fold_{k[5]}_of": 2 for k in metrics if k.startswith("fold_")}
    return Experiment(name, "r" * 40, "Success", {}, with_folds({**metrics, **folds}))


def test_compare_ranks_by_the_mean_and_shows_the_sd_beside_it() -> None:
    # a: best single split, worse folds; b: the folds' better mean wins
    a = _experiment("a", {"val_loss": 0.1, "fold_0_val_loss": 0.5, "fold_1_val_loss": 0.7})
    b = _experiment("b", {"val_loss": 0.3, "fold_0_val_loss": 0.3, "fold_1_val_loss": 0.4})
    comparison = compare([a, b], Objective("val_loss", "min"), "multiclass")
    assert [e.name for e in comparison.ranked] == ["b", "a"]
    rows = records(comparison)
    assert rows[0]["val_loss"] == pytest.approx(0.35)
    assert rows[0]["val_loss_sd"] == pytest.approx(np.std([0.3, 0.4], ddof=1))


def test_init_force_adds_cv_folds_to_an_older_params_yaml() -> None:
    text = (REPO / "params.yaml").read_text()
    old = "\n".join(line for line in text.splitlines() if "cv_folds" not in line) + "\n"
    upgraded, added = with_interpolated_keys(old)
    assert added == ["data.cv_folds"]
    assert yaml.safe_load(upgraded)["data"]["cv_folds"] == []
    assert parse_params(yaml.safe_load(upgraded)).data == parse_params(yaml.safe_load(old)).data
    assert with_interpolated_keys(text) == (text, [])


@pytest.mark.e2e
def test_each_fold_is_a_dvc_stage_and_compare_shows_the_mean_and_sd(tmp_path: Path) -> None:
    project = scaffold(tmp_path / "project")
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["max_epochs"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(project, "git", "commit", "-qam", "two epochs")
    run(project, "dvc", "exp", "run", "--name", "plain")
    run(project, "dvc", "exp", "run", "--name", "cv3", "-S", "data.cv_folds=[0,1,2]")
    shown = json.loads(run(project, "dvc", "exp", "show", "--json").stdout)
    assert shown  # DVC knows both experiments
    run(project, "dvc", "exp", "apply", "cv3")
    status = run(project, "dvc", "status", "--json").stdout
    assert json.loads(status) == {}  # every fold stage is cached: nothing to rerun
    stages = run(project, "dvc", "stage", "list", "--name-only").stdout.split()
    assert {"fold@0", "fold@1", "fold@2"} <= set(stages)
    folds = [json.loads((project / f"metrics/folds/{i}.json").read_text()) for i in range(3)]
    assert [f[f"fold_{i}_of"] for i, f in enumerate(folds)] == [3, 3, 3]
    out = run(project, NNTUNE, "compare", "--format", "json").stdout
    ranked = {row["experiment"]: row for row in json.loads(out)["experiments"]}
    losses = [f[f"fold_{i}_val_loss"] for i, f in enumerate(folds)]
    assert ranked["cv3"]["val_loss"] == pytest.approx(np.mean(losses), rel=1e-6)
    assert ranked["cv3"]["val_loss_sd"] == pytest.approx(np.std(losses, ddof=1), rel=1e-6)
    assert ranked["plain"]["val_loss_sd"] is None  # one split: no spread

    # Out-of-fold predictions: in DVC's cache, one file per fold; an ensemble of
    # cross-validated experiments is scored on them first, and --if-better needs them.
    refused = run(
        project, NNTUNE, "ensemble", "-e", "plain", "-e", "cv3", "--if-better", check=False
    )
    assert refused.returncode == 2 and "plain were not cross-validated" in refused.stderr
    run(
        project,
        "dvc",
        "exp",
        "run",
        "--name",
        "cv3b",
        "-S",
        "data.cv_folds=[0,1,2]",
        "-S",
        "model.units=32",
    )
    scores, frames = {}, {}
    for name in ("cv3", "cv3b"):
        files = read_outputs(project, name, [f"reports/folds/{i}.parquet" for i in range(3)])
        frame = pd.concat([pd.read_parquet(io.BytesIO(b)) for b in files.values()])
        frames[name] = frame.sort_values("row")
        scores[name] = log_loss(frames[name]["target"], _proba(frames[name]), labels=range(10))
    assert list(frames["cv3"]["row"]) == list(frames["cv3b"]["row"])  # the same held-out rows
    assert len(frames["cv3"]) == sum(f[f"fold_{i}_val_rows"] for i, f in enumerate(folds))
    average = np.mean([_proba(f) for f in frames.values()], axis=0)
    together = log_loss(frames["cv3"]["target"], average, labels=range(10))
    out = run(project, NNTUNE, "ensemble", "-e", "cv3", "-e", "cv3b", "--if-better").stdout
    best = min(scores, key=lambda n: ranked.get(n, {}).get("val_loss", 0.0))
    assert f"log loss {together:.4g} against {scores[best]:.4g}" in out
    assert ("(test split)" in out) == (together < scores[best])
    assert ("no ensemble run" in out) == (together >= scores[best])


def _proba(frame: pd.DataFrame) -> np.ndarray:
    """A fold frame's softmax outputs (digits: 10 classes), each row summing to 1."""
    out = frame[[f"out_{j}" for j in range(10)]].to_numpy("float64")
    return out / out.sum(axis=1, keepdims=True)

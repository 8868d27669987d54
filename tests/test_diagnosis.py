"""Trial diagnosis: the rules on synthetic curves, the same rules on tiny models really
trained by nntune's own fit, and reading the curves from experiment commits."""

from __future__ import annotations

import dataclasses
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import make_table, repo_params_dict, shrink

from nntune.config.mapping import flatten
from nntune.config.params import parse_params
from nntune.experiments import Experiment, read_files
from nntune.tuning.diagnosis import (
    HEALTHY,
    LR_TOO_HIGH,
    NOT_CONVERGED,
    OVERFITTING,
    PREDICTIONS,
    TRAIN_LOSS,
    UNDERFITTING,
    UNKNOWN,
    VAL_LOSS,
    Curves,
    curves_from_files,
    diagnose,
    diagnose_experiments,
    prior_loss,
)

PARAMS = {"train.max_epochs": 200.0, "train.early_stopping.patience": 10.0}
LN10 = math.log(10)


def decay(start: float, end: float, n: int) -> list[float]:
    """A smooth curve from ``start`` down towards ``end`` over ``n`` epochs."""
    return [end + (start - end) * math.exp(-4 * i / n) for i in range(n)]


def label(train: list[float], val: list[float], prior: float | None = LN10, **metrics: Any) -> str:
    curves = Curves(tuple(train), tuple(val))
    metrics = {"epochs_trained": len(val), **metrics}
    return diagnose(curves, metrics, PARAMS, prior).label


# The rules, on synthetic curves (patience 10, max_epochs 200, a 10-class prior of ln 10).


def test_healthy_curve_stopped_early() -> None:
    val = [*decay(2.0, 0.2, 20), *(0.2 + 0.005 * (-1) ** i for i in range(10))]
    assert label(decay(2.0, 0.05, 30), val) == HEALTHY


def test_a_noisy_flat_tail_is_not_overfitting() -> None:
    # Real digits trial h0-b64-lr0.1: val wobbles around its best for 10 epochs.
    val = [0.47, 0.31, 0.19, 0.18, 0.19, 0.2, 0.23, 0.19, 0.21, 0.16, 0.17, 0.15, 0.15]
    val += [0.16, 0.124, 0.158, 0.146, 0.155, 0.15, 0.143, 0.185, 0.126, 0.154, 0.142, 0.165]
    assert label(decay(0.6, 0.035, 25), val) == HEALTHY


def test_overfitting_val_rises_while_train_falls() -> None:
    val = [*decay(2.0, 0.3, 8), *(0.3 + 0.03 * i for i in range(1, 11))]
    assert label(decay(2.0, 0.01, 18), val) == OVERFITTING


def test_underfitting_flat_at_the_priors_loss() -> None:
    ln2 = math.log(2)
    train = [0.72, 0.70, *([0.69] * 10)]
    val = [0.71, 0.70, *([0.695] * 10)]
    assert label(train, val, prior=ln2) == UNDERFITTING
    # Without knowing the task's floor, high cannot be told from low: no label from it.
    assert label(train, val, prior=None) == HEALTHY


@pytest.mark.parametrize(
    ("train", "val", "metrics"),
    [
        ([1.0], [1.0], {"diverged": "True", "diverged_at_epoch": 1.0}),  # exp_show's text
        ([1.0, 0.5, float("nan")], [0.9, 0.6, 0.55], {}),  # non-finite, not flagged diverged
        ([1.0, 0.8, 0.7, 0.6], [0.5, 0.6, 2.0, 7.0], {}),  # val exploded 14x its first
        ([1.0, 0.4, 0.3, 0.8, 0.5, 0.6], [0.5, 0.4, 0.4, 0.5, 0.5, 0.6], {}),  # train rebound
        # The real digits trial with rate 1e5: finite, not "diverged", val_loss 7.4e11.
        ([3e11, 5e11, 4e11, 6e11], [9e11, 5e11, 7e11, 7.4e11], {"val_loss": 7.4e11}),
        # High losses whose train loss keeps bouncing (digits h2-u200-b64-lr0.1).
        ([15.6, 2.49, 2.28, 2.1, 2.1, 1.99, 2.17, 2.25, 2.02, 2.18, 2.19, 2.06, 2.34, 2.23],
         [2.38, 2.48, 2.35, 2.32, 2.0, 1.71, 2.1, 2.01, 1.98, 2.47, 2.52, 2.75, 2.88, 2.02],
         {}),
    ],
)  # fmt: skip
def test_rate_too_high(train: list[float], val: list[float], metrics: dict[str, Any]) -> None:
    assert label(train, val, **metrics) == LR_TOO_HIGH


def test_not_converged_when_max_epochs_ends_an_improving_run() -> None:
    curves = Curves(tuple(decay(2.0, 0.05, 200)), tuple(decay(2.0, 0.1, 200)))
    found = diagnose(curves, {"epochs_trained": 200.0, "best_epoch": 197.0}, PARAMS, LN10)
    assert found.label == NOT_CONVERGED
    assert "best is epoch 197" in found.evidence
    assert found.advice == "more epochs or a higher rate"
    # Its best epoch further back than the patience: it had stalled, so it is converged.
    stalled = diagnose(curves, {"epochs_trained": 200.0, "best_epoch": 150.0}, PARAMS, LN10)
    assert stalled.label == HEALTHY


def test_no_curves_is_unknown_and_never_a_crash() -> None:
    assert diagnose(None, {}, {}) == UNKNOWN
    assert diagnose(Curves((), ()), {"epochs_trained": None}, {}).label == "-"
    assert curves_from_files(None, "step\tloss\n0\t1.0\n") is None
    assert curves_from_files("garbage", "step\tloss\n0\tx\n") is None
    # Curves of different lengths (a run killed between the two writes) are cut to match.
    assert diagnose(Curves((1.0, 0.9), (1.0, 0.9, 0.5, 1.5, 1.6)), {}, {}).label == HEALTHY
    # A diverged run is known from its metrics alone.
    assert diagnose(None, {"diverged": True}, {}).label == LR_TOO_HIGH


def test_curves_and_prior_from_dvclive_and_predictions_files() -> None:
    curves = curves_from_files("step\tloss\n3\t1.5\n4\t1.2\n", "step\tloss\n3\t1.4\n4\tnan\n")
    assert curves is not None
    assert curves.train_loss == (1.5, 1.2) and curves.first_epoch == 4  # warm start at 3
    assert math.isnan(curves.val_loss[1])
    assert prior_loss("multiclass", [str(i % 10) for i in range(100)]) == pytest.approx(LN10)
    assert prior_loss("binary", ["a", "b", "b", "b"]) == pytest.approx(0.5623, abs=1e-4)
    assert prior_loss("regression", ["1", "3"]) == pytest.approx(1.0)
    assert prior_loss("binary", []) is None


def test_diagnose_experiments_reads_each_commit_once() -> None:
    def exp(name: str) -> Experiment:
        return Experiment(name, f"rev-{name}", "Success", dict(PARAMS), {"epochs_trained": 12.0})

    files = {
        ("rev-a", TRAIN_LOSS): "step\tloss\n" + "".join(f"{i}\t0.69\n" for i in range(12)),
        ("rev-a", VAL_LOSS): "step\tloss\n" + "".join(f"{i}\t0.7\n" for i in range(12)),
        ("rev-a", PREDICTIONS): "actual,predicted\nx,x\ny,x\n",
    }
    asked: list[list[tuple[str, str]]] = []

    def read(wanted: list[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        asked.append(wanted)
        return {key: files.get(key) for key in wanted}

    found = diagnose_experiments([exp("a"), exp("old")], "binary", read)
    assert found["a"].label == UNDERFITTING  # at ln 2, the prior's loss of 2 balanced classes
    assert found["old"] == UNKNOWN  # made before dvclive logged curves
    assert len(asked) == 1 and len(asked[0]) == 5


def test_read_files_from_commits_of_a_project_below_the_git_root(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    project = tmp_path / "project"
    (project / "dvclive").mkdir(parents=True)
    (project / "dvclive" / "loss.tsv").write_text("step\tloss\n0\t1.0\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    rev = git("rev-parse", "--short", "HEAD")
    texts = read_files(project, [(rev, "dvclive/loss.tsv"), (rev, "dvclive"), (rev, "nope")])
    assert texts == {
        (rev, "dvclive/loss.tsv"): "step\tloss\n0\t1.0\n",
        (rev, "dvclive"): None,  # a folder
        (rev, "nope"): None,
    }


# The same rules on tiny models really trained by nntune's fit, one per label.


def _trained(
    table: pd.DataFrame,
    tmp_path: Path,
    train: dict[str, Any],
    model: dict[str, Any] | None = None,
    patience: int = 2,
    task: str = "multiclass",
) -> tuple[str, dict[str, Any]]:
    """The label and metrics of a model trained on ``table`` with the shrunk params."""
    from nntune.stage.model import build_model
    from nntune.stage.preprocess import prepare
    from nntune.stage.training import fit, seed_everything

    raw = shrink(repo_params_dict())
    raw["data"]["task"] = task
    raw["model"].update(model or {})
    raw["train"].update(train)
    raw["train"]["early_stopping"]["patience"] = patience
    params = parse_params(raw, source="test")
    seed_everything(params.runtime)
    data = prepare(table, params.data)
    net = build_model(params.model, params.train, len(data.features), data.task, len(data.classes))
    live = tmp_path / "live"
    result = fit(net, data, params.train, live, seed=params.runtime.seed)
    curves = curves_from_files(
        (live / "plots/metrics/train/loss.tsv").read_text(),
        (live / "plots/metrics/eval/loss.tsv").read_text(),
    )
    _, y_val = data.xy("val")
    prior = prior_loss(params.data.task, [str(v) for v in y_val])
    return diagnose(curves, result.metrics, flatten(raw), prior).label, result.metrics


def xor_table(n_rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """Two classes no straight line separates: the sign of a * b."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n_rows, 2))
    frame = pd.DataFrame(x, columns=["a", "b"])
    frame["target"] = np.where(x[:, 0] * x[:, 1] > 0, "same", "different")
    return frame


def test_a_big_unregularised_network_on_few_noisy_rows_overfits(tmp_path: Path) -> None:
    table = make_table(n_rows=60)
    rng = np.random.default_rng(1)
    flip = rng.random(len(table)) < 0.3
    table.loc[flip, "target"] = rng.integers(0, 3, int(flip.sum()))
    big = {"hidden_layers": 2, "units": 128, "dropout": 0.0, "l2": 0.0}
    # At 0.003, not 0.01: at 0.01 the curves on JAX also bounce enough to read "lr too high".
    train = {"max_epochs": 20, "learning_rate": 0.003}
    assert _trained(table, tmp_path, train, big, patience=20)[0] == OVERFITTING


def test_no_hidden_layer_on_a_non_linear_problem_underfits(tmp_path: Path) -> None:
    linear = {"hidden_layers": 0, "dropout": 0.0, "l2": 0.0}
    train = {"max_epochs": 40, "learning_rate": 0.05}
    found, _ = _trained(xor_table(), tmp_path, train, linear, patience=5, task="binary")
    assert found == UNDERFITTING


def test_a_rate_of_1e5_is_too_high_though_its_loss_stays_finite(tmp_path: Path) -> None:
    train = {"max_epochs": 8, "learning_rate": 1e5}
    found, metrics = _trained(make_table(), tmp_path, train, patience=10)
    assert metrics["diverged"] is False and math.isfinite(metrics["val_loss"])
    assert found == LR_TOO_HIGH


def test_a_run_cut_by_max_epochs_has_not_converged(tmp_path: Path) -> None:
    train = {"max_epochs": 3, "learning_rate": 0.01}
    assert _trained(make_table(), tmp_path, train, patience=2)[0] == NOT_CONVERGED


def test_advice_per_label() -> None:
    advice = {
        name: dataclasses.replace(UNKNOWN, label=name).advice
        for name in (OVERFITTING, UNDERFITTING, LR_TOO_HIGH, NOT_CONVERGED, HEALTHY)
    }
    assert advice == {
        OVERFITTING: "more dropout or L2, or fewer units",
        UNDERFITTING: "more units or layers, or a higher rate",
        LR_TOO_HIGH: "a lower rate",
        NOT_CONVERGED: "more epochs or a higher rate",
        HEALTHY: "",
    }

"""Parameter importance: a study rebuilt from experiments, Optuna's evaluators over it, and
`nntune importance`, which says so when there is too little to tell."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from typer.testing import CliRunner

from nntune.cli import app
from nntune.config.metrics import Objective
from nntune.experiments import Experiment
from nntune.tuning import importance
from nntune.tuning.ranking import compare

LOSS = Objective("val_loss", "min")


def experiments(count: int, metric: str = "val_loss", sign: float = 1.0) -> list[Experiment]:
    """``count`` random points over three params; the objective depends on the learning
    rate alone (best at 10^-2.5), plus noise a thousand times smaller."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(count):
        lr = float(10 ** rng.uniform(-4, -1))
        params = {
            "train.learning_rate": lr,
            "model.units": float(rng.choice([16, 32, 64, 128])),  # exp_show's floats
            "model.activation": str(rng.choice(["relu", "tanh", "elu"])),
            "train.epochs": 10.0,  # the same everywhere: not a parameter to rank
        }
        value = (math.log10(lr) + 2.5) ** 2 + float(rng.normal(0, 1e-3))
        metrics = {metric: sign * value, "diverged": False}
        rows.append(Experiment(f"e{i}", f"r{i}", "Success", params, metrics))
    return rows


@pytest.mark.parametrize("evaluator", importance.EVALUATORS)
@pytest.mark.parametrize("objective", [LOSS, Objective("val_accuracy", "max")])
def test_the_parameter_the_objective_depends_on_ranks_first(
    evaluator: importance.Evaluator, objective: Objective
) -> None:
    sign = 1.0 if objective.direction == "min" else -1.0  # accuracy: higher is better
    shares = importance.param_importances(
        experiments(30, objective.metric, sign), objective, evaluator
    )
    assert next(iter(shares)) == "train.learning_rate", shares
    assert set(shares) == {"train.learning_rate", "model.units", "model.activation"}
    assert shares["train.learning_rate"] > 0.5
    assert sum(shares.values()) == pytest.approx(1.0)


def test_distributions_are_inferred_from_the_values() -> None:
    log_float = importance.distribution([0.001, 0.01, 0.1])
    assert log_float == FloatDistribution(0.001, 0.1, log=True)
    assert importance.distribution([0.1, 0.5, 0.9]) == FloatDistribution(0.1, 0.9)
    # exp_show's 50.0 is the int 50; 50..200 spans less than two decades.
    assert importance.distribution([50.0, 100.0, 200.0]) == IntDistribution(50, 200)
    assert importance.distribution([1, 1000]) == IntDistribution(1, 1000, log=True)
    assert importance.distribution([0, 2, 500]) == IntDistribution(0, 500)  # no log of 0
    assert importance.distribution(["relu", "tanh"]) == CategoricalDistribution(["relu", "tanh"])
    assert importance.distribution([True, False]) == CategoricalDistribution([False, True])
    lists = importance.distribution([[8, 4], None, [8]])
    assert lists == CategoricalDistribution(["[8, 4]", "[8]", None])


def test_the_study_holds_one_trial_per_experiment() -> None:
    rows = experiments(6)
    study = importance.build_study(rows, LOSS)
    assert [t.value for t in study.trials] == [e.metrics["val_loss"] for e in rows]
    assert [t.user_attrs["experiment"] for t in study.trials] == [e.name for e in rows]
    assert set(study.trials[0].params) == {"train.learning_rate", "model.units", "model.activation"}
    assert study.trials[0].params["model.units"] == int(rows[0].params["model.units"])
    assert study.direction == StudyDirection.MINIMIZE
    accuracy = Objective("val_accuracy", "max")
    higher = importance.build_study(experiments(6, "val_accuracy", -1.0), accuracy)
    assert higher.direction == StudyDirection.MAXIMIZE


@pytest.mark.parametrize(
    ("rows", "said"),
    [
        (experiments(4), "4 finished with a finite val_loss (needs 5), and 3 parameter(s)"),
        (
            [
                Experiment(e.name, e.rev, e.state, {"train.learning_rate": lr}, e.metrics)
                for e, lr in zip(experiments(8), np.linspace(0.01, 0.1, 8), strict=True)
            ],
            "8 finished with a finite val_loss (needs 5), and 1 parameter(s) vary among "
            "them (train.learning_rate; needs 2)",
        ),
    ],
    ids=["four-experiments", "one-varying-param"],
)
def test_too_few_experiments_say_so(rows: list[Experiment], said: str) -> None:
    with pytest.raises(importance.TooFewExperimentsError) as raised:
        importance.param_importances(rows, LOSS, "fanova")
    message = str(raised.value)
    assert message.startswith("too few experiments to tell which parameters matter: ")
    assert said in message
    assert message.endswith("queue more with `nntune grid` or `nntune search` and run them")


# `nntune importance` over the experiments `compare` ranks, the listing faked.

runner = CliRunner()


def fake_experiments(monkeypatch: pytest.MonkeyPatch, rows: list[Experiment]) -> None:
    comparison = compare(rows, LOSS, "multiclass")
    monkeypatch.setattr("nntune.cli.insight.load_comparison", lambda *_: comparison)


def test_the_command_is_registered() -> None:
    # A fresh interpreter: importing a command's module in this one registers it anyway.
    shown = subprocess.run(
        [sys.executable, "-c", "from nntune.cli import app; app()", "importance", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "fanova" in shown.stdout and "ped-anova" in shown.stdout


def test_importance_prints_a_table_of_the_ranked_experiments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A failed trial's metrics are the baseline's and a diverged one's loss is nan: neither
    # is a trial to learn from.
    failed = Experiment("broken", "rb", "Failed", {"train.learning_rate": 9.0}, {"val_loss": 0})
    blown = Experiment("blown", "rn", "Success", {"model.units": 4.0}, {"val_loss": math.nan})
    fake_experiments(monkeypatch, [*experiments(30), failed, blown])
    result = runner.invoke(app, ["importance"])
    assert result.exit_code == 0, result.output
    assert "importance for val_loss (min): fANOVA over 30 experiments" in result.output
    lines = [line for line in result.output.splitlines() if "model." in line or "train." in line]
    assert "train.learning_rate" in lines[0] and len(lines) == 3


def test_importance_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_experiments(monkeypatch, experiments(30))
    result = runner.invoke(app, ["importance", "--evaluator", "ped-anova", "--format", "json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["evaluator"] == "ped-anova" and shown["experiments"] == 30
    assert next(iter(shown["importances"])) == "train.learning_rate"
    assert shown["objective"] == {"metric": "val_loss", "direction": "min"}


def test_importance_with_too_few_experiments_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_experiments(monkeypatch, experiments(3))
    result = runner.invoke(app, ["importance"])
    assert result.exit_code == 2
    assert result.output.startswith("error: too few experiments to tell which parameters matter")
    assert "Traceback" not in result.output and len(result.output.splitlines()) == 1

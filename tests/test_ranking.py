from __future__ import annotations

import json
import math
from typing import Any

import pytest

from nntune.config.metrics import Objective
from nntune.experiments import Experiment, same_params
from nntune.tuning import ranking
from nntune.tuning.ranking import compare, records, to_csv, to_json, to_markdown

BASELINE = {"val_loss": 0.05, "test_accuracy": 0.99, "diverged": False}


def exp(name: str, state: str = "Success", units: float = 64.0, **metrics: Any) -> Experiment:
    return Experiment(
        name=name,
        rev=name[:7],
        state=state,
        params={"model.units": units, "train.batch_size": 32.0},
        metrics=metrics,
    )


def test_ranks_by_objective_and_sets_failures_apart() -> None:
    rows = [
        exp("mid", val_loss=0.2, test_accuracy=0.95, diverged=False),
        exp("good", units=128.0, val_loss=0.1, test_accuracy=0.97, diverged="False"),
        # Failed rows carry the baseline's metrics in exp_show: they must not win.
        exp("broken", state="Failed", units=32.0, **BASELINE),
        exp("nan", units=256.0, val_loss=None, diverged="True"),
        exp("waiting", state="Queued", units=8.0),
    ]
    c = compare(rows, Objective("val_loss", "min"), "multiclass")
    assert [e.name for e in c.ranked] == ["good", "mid"]
    assert c.best is not None and c.best.name == "good"
    assert [e.name for e in c.failed] == ["broken"]
    assert [e.name for e in c.diverged] == ["nan"]
    assert [e.name for e in c.pending] == ["waiting"]
    assert c.varying == ["model.units"]  # batch_size is the same everywhere

    table = records(c)
    assert [r["experiment"] for r in table] == ["good", "mid", "nan", "broken"]
    assert [r["rank"] for r in table] == [1, 2, None, None]
    broken = table[-1]
    assert broken["status"] == "failed"
    assert broken["val_loss"] is None and broken["test_accuracy"] is None
    assert table[0]["model.units"] == 128  # exp_show's floats shown as the ints they were


def test_higher_is_better_metric() -> None:
    rows = [exp("a", val_accuracy=0.9), exp("b", val_accuracy=0.95)]
    c = compare(rows, Objective("val_accuracy", "max"), "multiclass")
    assert [e.name for e in c.ranked] == ["b", "a"]


def test_top_k_and_formats() -> None:
    rows = [exp(f"e{i}", units=float(i), val_loss=1.0 / (i + 1)) for i in range(5)]
    c = compare(rows, Objective("val_loss", "min"), "multiclass")
    top = records(c, top=2)
    assert [r["experiment"] for r in top] == ["e4", "e3"]
    csv_text = to_csv(top)
    assert csv_text.splitlines()[0].startswith("rank,experiment,status,model.units,val_loss")
    assert len(csv_text.splitlines()) == 3
    payload = json.loads(to_json(c, top))
    assert payload["best"] == "e4"
    assert payload["objective"] == {"metric": "val_loss", "direction": "min"}
    md = to_markdown(top)
    assert md.splitlines()[2].startswith("| 1 | e4 | ok | 4 | 0.2 |")


def test_same_params_tolerates_exp_show_types() -> None:
    recorded = {"model.units": 64.0, "runtime.deterministic": "True", "model.activation": "relu"}
    wanted = {"model.units": 64, "runtime.deterministic": True, "model.activation": "relu"}
    assert same_params(recorded, wanted)
    assert not same_params(recorded, {**wanted, "model.units": 128})
    assert not same_params(recorded, {**wanted, "runtime.deterministic": False})
    assert same_params({"model.units": [64.0, 32.0]}, {"model.units": [64, 32]})
    # What dvc.api.exp_show really returns for list params (seen with dvc 3.67):
    assert same_params({"data.exclude": "[]"}, {"data.exclude": []})
    assert same_params({"model.units": "[64, 32]"}, {"model.units": [64, 32]})
    assert not same_params({"data.exclude": "[]"}, {"data.exclude": ["id"]})


def test_gc_keeps_the_best_the_promoted_and_their_warm_start_parents() -> None:
    from nntune.tuning.ranking import select_garbage

    def trial(
        name: str, loss: float | None, parent: str = "", state: str = "Success"
    ) -> Experiment:
        return Experiment(
            name=name,
            rev=name,
            state=state,
            params={"train.warm_start.experiment": parent},
            metrics={"val_loss": loss, "diverged": loss is None},
        )

    rows = [
        trial("a-t0-e9", 0.10, parent="a-t0-e3"),  # best, continued from its rung-3 model
        trial("a-t0-e3", 0.40, parent="a-t0-e1"),
        trial("a-t0-e1", 0.90),
        trial("a-t1-e1", 0.50),
        trial("a-t2-e1", 0.60),  # promoted by the user to a branch
        trial("a-t3-e1", None),  # diverged
        trial("broken", 0.05, state="Failed"),  # baseline's metrics: never ranked, removed
    ]
    comparison = compare(rows, Objective("val_loss", "min"), "multiclass")
    cleanup = select_garbage(comparison, 1, {"a-t2-e1": "on branch tuned"})
    assert cleanup.keep == {
        "a-t0-e9": "rank 1",
        "a-t2-e1": "on branch tuned",
        "a-t0-e3": "warm-start parent of a-t0-e9",
        "a-t0-e1": "warm-start parent of a-t0-e3",
    }
    assert sorted(cleanup.remove) == ["a-t1-e1", "a-t3-e1", "broken"]
    wider = select_garbage(comparison, 3, {})
    assert "a-t1-e1" in wider.keep and "a-t2-e1" in wider.remove


def _diagnosed() -> Any:
    import dataclasses

    from nntune.tuning.diagnosis import Diagnosis

    rows = [
        exp("good", units=128.0, val_loss=0.1, diverged=False),
        exp("noisy", units=32.0, val_loss=0.3, diverged=False),
        exp("old", units=16.0, val_loss=0.4, diverged=False),  # made before dvclive curves
        exp("broken", state="Failed", units=8.0, **BASELINE),
    ]
    c = compare(rows, Objective("val_loss", "min"), "multiclass")
    found = {
        "good": Diagnosis("healthy", "best val loss 0.1 at epoch 9 of 19"),
        "noisy": Diagnosis("lr too high", "train loss climbed back from 0.2 to 0.5"),
    }
    return dataclasses.replace(c, diagnoses=found)


def test_records_end_with_the_diagnosis_and_json_gives_its_advice() -> None:
    c = _diagnosed()
    table = records(c)
    assert [(r["experiment"], r["diagnosis"]) for r in table] == [
        ("good", "healthy"),
        ("noisy", "lr too high"),
        ("old", "-"),
        ("broken", "-"),  # a failed row's files are the baseline's
    ]
    assert list(table[0])[-1] == "diagnosis"
    assert to_csv(table).splitlines()[0].endswith(",train_seconds,diagnosis")
    assert "| lr too high |" in to_markdown(table)
    payload = json.loads(to_json(c, table))
    noisy = payload["experiments"][1]
    assert noisy["advice"] == "a lower rate"
    assert noisy["evidence"] == "train loss climbed back from 0.2 to 0.5"
    assert payload["experiments"][0]["advice"] == ""  # healthy: nothing to change
    assert payload["experiments"][2]["evidence"].startswith("no learning curves")
    assert payload["advice"] == []  # units: the best (128) is the largest, but 1 of 3


def _trial(name: str, loss: float, **params: Any) -> Experiment:
    return Experiment(name, name, "Success", params, {"val_loss": loss, "diverged": False})


def test_edge_advice_when_the_best_sit_on_the_edge_of_a_range() -> None:
    from nntune.tuning.ranking import edge_advice

    rows = [
        _trial("a", 0.10, **{"train.learning_rate": 0.1, "model.hidden_layers": 0.0}),
        _trial("b", 0.20, **{"train.learning_rate": 0.1, "model.hidden_layers": 1.0}),
        _trial("c", 0.30, **{"train.learning_rate": 0.01, "model.hidden_layers": 0.0}),
        _trial("d", 0.40, **{"train.learning_rate": 0.001, "model.hidden_layers": 2.0}),
    ]
    c = compare(rows, Objective("val_loss", "min"), "multiclass")
    assert edge_advice(c) == [
        "train.learning_rate: the best trials use the largest value tried (0.1, in 2 of the "
        "top 3); extend the range above it",
        "model.hidden_layers: the best trials use the smallest value tried (0, in 2 of the "
        "top 3); extend the range below it",
    ]
    # A value a diverged trial tried counts: 0.1 is then not the largest tried.
    blown = _trial("e", math.nan, **{"train.learning_rate": 1.0, "model.hidden_layers": 1.0})
    c = compare([*rows, blown], Objective("val_loss", "min"), "multiclass")
    assert [line.split(":")[0] for line in edge_advice(c)] == ["model.hidden_layers"]


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ("train.batch_size", [64.0, 64.0, 32.0, 32.0]),  # 2 distinct values: no range
        ("model.units", [64.0, 16.0, 32.0, 64.0]),  # the best (64) on the edge, 1 of 3
        ("model.units", ["[64, 32]", "[32]", "[16]", "[8]"]),  # lists: not one number
        ("train.max_epochs", [27.0, 27.0, 9.0, 3.0]),  # successive halving's rungs
        ("runtime.seed", [3.0, 3.0, 2.0, 1.0]),  # seeds have no order
    ],
)
def test_no_edge_advice(key: str, values: list[Any]) -> None:
    from nntune.tuning.ranking import edge_advice

    rows = [_trial(f"t{i}", 0.1 * (i + 1), **{key: v}) for i, v in enumerate(values)]
    assert edge_advice(compare(rows, Objective("val_loss", "min"), "multiclass")) == []


def test_next_moves_count_each_diagnosis_with_its_advice() -> None:
    rows = [
        {"experiment": "a", "diagnosis": "overfitting"},
        {"experiment": "b", "diagnosis": "healthy"},
        {"experiment": "c", "diagnosis": "overfitting"},
        {"experiment": "d", "diagnosis": "lr too high"},
        {"experiment": "e", "diagnosis": "-"},
    ]
    assert ranking.next_moves(rows) == [
        "overfitting (2): try more dropout or L2, or fewer units",
        "lr too high (1): try a lower rate",
    ]

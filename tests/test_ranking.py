from __future__ import annotations

import json
from typing import Any

from nntune.config.metrics import Objective
from nntune.experiments import Experiment, same_params
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

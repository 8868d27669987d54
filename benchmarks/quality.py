"""Benchmark: test-set quality of nntune's searches against gradient boosting, scikit-learn's
MLP and a linear model, on the same split of each table (issue 17).

    KERAS_BACKEND=jax .venv/bin/python benchmarks/quality.py [--tables digits,wine,...]
        [--trials 16] [--max-epochs 100] [--split-seeds 1,2,3] [--skip seed-grid,...]

Tables: scikit-learn's bundled digits, wine, breast_cancer and diabetes, and two generated
ones: ``counts4`` (a 4-class table of heavy-tailed counts and skewed amounts, a categorical
column of 12 values with a long tail of rare ones, 5% gaps, classes 45/30/17/8%, and a
unique ``customer_id``) and ``skewreg`` (a regression table of lognormal and Pareto
features, a categorical column of 40 values, gaps, an interaction, a target in the
hundred-thousands).

Every contender trains on nntune's own prepared split (``prepare`` with the defaults of
params.yaml, ``data.missing: impute``, identifier columns excluded as ``nntune init``
excludes them) and is scored on its test split, which no selection sees:

- ``hgb``: HistGradientBoosting (scikit-learn defaults, early stopping on its own 10%);
- ``sk-mlp``: MLPClassifier / MLPRegressor(100), early stopping;
- ``linear``: LogisticRegression / Ridge;
- ``nntune-baseline``: params.yaml as it is (1 x 128, Adam at 0.01, standard scaling);
- ``seed-grid``: the default grid (grid.yaml, 42 distinct points) with the recipe before
  issue 17 (standard scaling, Adam, constant rate, regression target not standardised),
  best by the validation objective (val_loss), as ``nntune grid`` + ``compare`` picks it;
- ``seed-grid+target``: the same grid with the regression target standardised (only
  regression tables differ);
- ``tabular-tpe``: ``nntune search --space tabular`` as a TPE study of ``--trials`` trials
  (Optuna, seed 0), plus the study's baseline experiment (params.yaml as it is, outside
  Optuna's sampling, as ``nntune search`` runs it), best by val_loss;
- ``tabular-tpe-cv``: the same with ``data.cv_folds`` of ``--cv`` folds (``--cv-trials``
  trials): each point is scored by its folds' mean val_loss (the fold stage's
  ``fold_metrics``), and the chosen point's test metrics are its final model's, trained on
  the standard split as the train stage does;
- ``<search>+top5``: for each search above, the average of its best 5 trials by val_loss
  (``nntune ensemble --top 5``'s average, ``nntune.stage.ensemble.combined``), scored on
  the test split: no training of its own;
- ``tabular-tpe-cv+oof``: what ``nntune search`` with folds ends with: the average of the
  best 5 when its out-of-fold score (pooled log loss, or RMSE, over the folds' held-out
  rows: ``nntune.tuning.oof``) beats the best trial's, else the best trial. Its row records
  which (``picked``) and both out-of-fold scores; ``cv_sd`` is the best trial's folds' sd.

Trials run in this process through nntune's library calls (``prepare``, ``build_model``,
``fit``, the evaluate stage's ``evaluate_predictions``), not through DVC: the quality is
the recipe's, the wall time excludes DVC's per-trial overhead (benchmarks/overhead.py).
Prints one JSON line per (table, contender) (``tabular-tpe-cv`` with ``cv_sd``: the
chosen point's folds' sample sd of the headline metric), a Markdown table at the end, and
issue 17's two targets checked per table and split (:func:`verdict`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from nntune.config.mapping import apply  # noqa: E402
from nntune.config.params import parse_params  # noqa: E402
from nntune.config.sections import Params  # noqa: E402
from nntune.stage.data import Prepared, digits_frame  # noqa: E402
from nntune.stage.preprocess import prepare  # noqa: E402
from nntune.stage.profiling import id_like_columns  # noqa: E402
from nntune.tuning.grid import expand, load_space  # noqa: E402

ENSEMBLE_TOP = 5  # members of the ensemble each search contender also reports
TABLES = ("digits", "wine", "breast_cancer", "diabetes", "counts4", "skewreg")


def load_table(name: str) -> tuple[pd.DataFrame, str]:
    """The table (target column ``target``) and its task."""
    from sklearn import datasets

    if name == "digits":
        return digits_frame(), "multiclass"
    if name in ("wine", "breast_cancer", "diabetes"):
        loaded = getattr(datasets, f"load_{name}")(as_frame=True)
        frame = loaded.frame.rename(columns={loaded.target.name: "target"})
        task = {"wine": "multiclass", "breast_cancer": "binary", "diabetes": "regression"}[name]
        return frame, task
    if name == "counts4":
        return counts4(), "multiclass"
    if name == "skewreg":
        return skewreg(), "regression"
    raise SystemExit(f"unknown table {name}; choose from {', '.join(TABLES)}")


def counts4(rows: int = 6000, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.choice(4, rows, p=[0.45, 0.30, 0.17, 0.08])
    frame = pd.DataFrame({"customer_id": [f"cu-{i:07d}" for i in rng.permutation(rows)]})
    for j in range(6):  # counts whose rate depends on the class, heavy-tailed
        rate = np.exp(0.4 * ((label + j) % 4) + rng.normal(0, 1.0, rows))
        frame[f"count{j}"] = rng.negative_binomial(2, 1 / (1 + rate)).astype("float64")
    frame["amount"] = rng.pareto(1.1, rows) * (1 + 0.6 * (label == 3))
    frame["ratio"] = rng.lognormal(0.2 * label, 1.5, rows)
    for j in range(4):  # uninformative, skewed
        frame[f"noise{j}"] = rng.lognormal(0, 2, rows)
    common = np.array(["a", "b", "c", "d", "e", "f"])[(label * 2 + rng.integers(0, 2, rows)) % 6]
    rare = np.array([f"r{i}" for i in rng.integers(0, 6, rows)])
    frame["segment"] = np.where(rng.random(rows) < 0.85, common, rare)
    for column in ("count0", "amount", "ratio", "segment"):
        frame.loc[rng.random(rows) < 0.05, column] = np.nan
    frame["target"] = np.array(["w", "x", "y", "z"])[label]
    return frame


def skewreg(rows: int = 3000, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "area": rng.lognormal(4.5, 0.5, rows),
            "rooms": rng.poisson(3, rows).astype("float64") + 1,
            "age": rng.pareto(2.0, rows) * 10,
            "distance": rng.lognormal(1, 1, rows),
        }
    )
    for j in range(3):
        frame[f"noise{j}"] = rng.standard_t(2, rows)
    district = rng.integers(0, 40, rows)
    frame["district"] = [f"d{d}" for d in district]
    effect = np.sin(district) * 0.3
    log_price = (
        0.8 * np.log(frame["area"])
        + 0.1 * frame["rooms"]
        - 0.15 * np.log1p(frame["age"])
        - 0.2 * np.log(frame["distance"]) * (frame["rooms"] > 3)
        + effect
        + rng.normal(0, 0.15, rows)
    )
    frame["target"] = 1e5 * np.exp(log_price - log_price.mean())
    for column in ("age", "distance", "district"):
        frame.loc[rng.random(rows) < 0.05, column] = np.nan
    return frame


def base_params(frame: pd.DataFrame, task: str, max_epochs: int) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((ROOT / "params.yaml").read_text())
    metric = "val_loss"
    raw["data"].update(
        source="table.csv",
        target="target",
        task=task,
        missing="impute",
        exclude=[found.column for found in id_like_columns(frame, "target")],
    )
    raw["train"]["max_epochs"] = max_epochs
    raw["evaluate"]["objective"] = {"metric": metric, "direction": "min"}
    raw["train"]["early_stopping"]["monitor"] = metric
    return raw


class Trials:
    """Runs configurations of one table in this process; prepared splits are cached by the
    data section (a search over data.scaling prepares each scaling once)."""

    def __init__(self, frame: pd.DataFrame, task: str, base: dict[str, Any]) -> None:
        self.frame, self.task, self.base = frame, task, base
        self.prepared: dict[str, Prepared] = {}

    def params(self, point: dict[str, Any]) -> Params:
        return parse_params(apply(self.base, point), source="quality")

    def data(self, params: Params) -> Prepared:
        key = json.dumps(params.data.__dict__, sort_keys=True, default=str)
        if key not in self.prepared:
            self.prepared[key] = prepare(self.frame, params.data)
        return self.prepared[key]

    def run(self, point: dict[str, Any], scale_target: bool = True) -> dict[str, Any]:
        from nntune.stage.evaluate import evaluate_predictions
        from nntune.stage.model import TargetScale, build_model
        from nntune.stage.training import fit, seed_everything

        params = self.params(point)
        data = self.data(params)
        seed_everything(params.runtime)
        y_train = data.xy("train")[1]
        net = build_model(
            params.model,
            params.train,
            len(data.features),
            data.task,
            len(data.classes),
            target=TargetScale.of(data.task, y_train) if scale_target else None,
        )
        with (
            tempfile.TemporaryDirectory() as live,
            contextlib.redirect_stdout(io.StringIO()),  # the epoch lines
        ):
            result = fit(net, data, params.train, live, seed=params.runtime.seed)
        x_test, y_test = data.xy("test")
        output = net.predict(x_test, batch_size=1024, verbose=0)
        test, _ = evaluate_predictions(data, y_test, output)
        val = result.metrics.get("val_loss")
        return {"point": point, "val_loss": val, "test": test, "output": output}

    def ensemble(self, results: list[dict[str, Any]], top: int) -> dict[str, Any]:
        """The test metrics of the average of the best ``top`` results by validation loss
        (``nntune ensemble --top K``'s average: ``nntune.stage.ensemble.combined``)."""
        from nntune.stage.ensemble import combined
        from nntune.stage.evaluate import evaluate_predictions

        finite = [r for r in results if r["val_loss"] is not None and np.isfinite(r["val_loss"])]
        chosen = sorted(finite, key=lambda r: r["val_loss"])[:top]
        data = self.data(self.params({}))
        output = combined([r["output"] for r in chosen], self.task)  # type: ignore[arg-type]
        test, _ = evaluate_predictions(data, data.xy("test")[1], output)
        return test

    def cross_validated(self, point: dict[str, Any], folds: int) -> dict[str, Any]:
        """The point's mean validation loss over ``folds`` folds (as the fold stages and
        ``nntune.experiments.folds`` compute it), then its final model on the standard
        split (the train stage's) for the test metrics."""
        from nntune.stage.crossval import run_fold

        params = self.params({**point, "data.cv_folds": list(range(folds))})
        headline = "val_rmse" if self.task == "regression" else "val_accuracy"
        with contextlib.redirect_stdout(io.StringIO()):
            runs = [run_fold(params, self.frame, f) for f in range(folds)]
        records = [r.record for r in runs]
        losses = [r[f"fold_{f}_val_loss"] for f, r in enumerate(records)]
        scores = [r[f"fold_{f}_{headline}"] for f, r in enumerate(records)]
        final = self.run(point)
        finite = all(v is not None and np.isfinite(v) for v in losses + scores)
        return {
            **final,
            "val_loss": float(np.mean(losses)) if finite else None,
            # The folds' spread of the headline metric (accuracy or RMSE, in its units):
            # issue 17's "never below the baseline by more than the CV's sd" uses it.
            "cv_sd": float(np.std(scores, ddof=1)) if finite and folds > 1 else None,
            "oof": [r.predictions for r in runs],  # the folds' out-of-fold predictions
        }

    def oof_choice(self, results: list[dict[str, Any]], top: int) -> tuple[dict[str, Any], Any]:
        """``nntune ensemble --top K --if-better``'s choice on the same trials: the best K by
        validation loss averaged when their out-of-fold score beats the best one's
        (``nntune.tuning.oof.choose``), else the best trial; its test metrics."""
        from nntune.tuning.oof import choose

        finite = [r for r in results if r["val_loss"] is not None and np.isfinite(r["val_loss"])]
        ranked = sorted(finite, key=lambda r: r["val_loss"])[:top]
        choice = choose({str(i): r["oof"] for i, r in enumerate(ranked)}, self.task)
        test = self.ensemble(results, top) if choice.ensemble_wins else ranked[0]["test"]
        return test, choice


def score(task: str, test: dict[str, Any]) -> float | None:
    """The headline test metric: accuracy (classification) or RMSE (regression)."""
    return test.get("test_rmse" if task == "regression" else "test_accuracy")


def best(results: list[dict[str, Any]]) -> dict[str, Any]:
    finite = [r for r in results if r["val_loss"] is not None and np.isfinite(r["val_loss"])]
    return min(finite, key=lambda r: r["val_loss"])


def references(data: Prepared) -> dict[str, float]:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    x, y = data.xy("train")
    x_val, y_val = data.xy("val")
    x_all, y_all = np.vstack([x, x_val]), np.concatenate([y, y_val])  # train + validation
    x_test, y_test = data.xy("test")
    regression = data.task == "regression"
    models: dict[str, Any] = {
        "hgb": (HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier)(
            random_state=0
        ),
        "sk-mlp": (MLPRegressor if regression else MLPClassifier)(
            hidden_layer_sizes=(100,), early_stopping=True, max_iter=500, random_state=0
        ),
        "linear": Ridge() if regression else LogisticRegression(max_iter=5000),
    }
    scores = {}
    for name, model in models.items():
        model.fit(x_all, y_all)
        predicted = model.predict(x_test)
        if regression:
            scores[name] = float(np.sqrt(np.mean((predicted - y_test) ** 2)))
        else:
            scores[name] = float(np.mean(predicted == y_test))
    return scores


def tpe(
    trials: Trials, n: int, space_name: str, folds: int = 0, baseline: bool = True
) -> list[dict[str, Any]]:
    import optuna

    from nntune.tuning.search_space import preset_space, suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = trials.data(trials.params({})).meta()["rows"]  # as `nntune search` sizes batches
    train_rows = (rows["train"] + rows["val"]) * (folds - 1) // folds if folds else rows["train"]
    space = preset_space(space_name, trials.task, train_rows if space_name == "tabular" else None)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    results = []
    for _ in range(n):
        trial = study.ask()
        point = suggest(trial, space)
        result = trials.cross_validated(point, folds) if folds else trials.run(point)
        value = result["val_loss"]
        study.tell(trial, value if value is not None and np.isfinite(value) else 1e9)
        results.append(result)
    if baseline:  # `nntune search`'s STUDY-baseline: params.yaml, outside Optuna's sampling
        results.append(trials.cross_validated({}, folds) if folds else trials.run({}))
    return results


def timed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = action()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default=",".join(TABLES))
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--cv", type=int, default=3, help="folds of tabular-tpe-cv")
    parser.add_argument("--cv-trials", type=int, default=12, help="trials of tabular-tpe-cv")
    parser.add_argument("--skip", default="", help="contenders to leave out, comma-separated")
    parser.add_argument(
        "--split-seeds",
        default="",
        help="repeat each table over these data.split_seed values (comma-separated; default: "
        "params.yaml's); the table then shows each contender's median and range",
    )
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    seeds = [int(s) for s in args.split_seeds.split(",") if s] or [None]
    rows: list[dict[str, Any]] = []
    for name in args.tables.split(","):
        for seed in seeds:
            rows += table_rows(
                name, args.trials, args.max_epochs, skip, args.cv, args.cv_trials, seed
            )
    print(markdown(rows))
    print()
    print(verdict(rows))
    print()
    print(verdict(rows, "tabular-tpe-cv+oof"))


def table_rows(
    name: str,
    n_trials: int,
    max_epochs: int,
    skip: set[str],
    cv: int,
    cv_trials: int,
    split_seed: int | None = None,
) -> list[dict[str, Any]]:
    frame, task = load_table(name)
    base = base_params(frame, task, max_epochs)
    if split_seed is not None:  # another split of the same table: test rows included
        base["data"]["split_seed"] = split_seed
    trials = Trials(frame, task, base)
    grid = [trial.overrides for trial in expand(load_space(ROOT / "grid.yaml"), base)[0]]
    data = trials.data(trials.params({}))
    rows = []

    def report(contender: str, value: float | None, seconds: float, **extra: Any) -> None:
        row = {"table": name, "task": task, "contender": contender, "test": value}
        row["split_seed"] = base["data"]["split_seed"]
        row.update(seconds=round(seconds, 1), **extra)
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)

    refs, seconds = timed(lambda: references(data))
    for contender, value in refs.items():
        report(contender, value, seconds / len(refs))
    runs: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "nntune-baseline": lambda: [trials.run({})],
        "seed-grid": lambda: [trials.run(p, scale_target=False) for p in grid],
        "seed-grid+target": lambda: [trials.run(p) for p in grid],
        "tabular-tpe": lambda: tpe(trials, n_trials, "tabular"),
        "tabular-tpe-cv": lambda: tpe(trials, cv_trials, "tabular", folds=cv),
    }
    if task != "regression":
        runs.pop("seed-grid+target")  # the same as seed-grid
    for contender, run in runs.items():
        if contender in skip:
            continue
        results, seconds = timed(run)
        chosen = best(results)
        report(
            contender,
            score(task, chosen["test"]),
            seconds,
            trials=len(results),
            val_loss=chosen["val_loss"],
            point=chosen["point"],
            **({"cv_sd": chosen["cv_sd"]} if "cv_sd" in chosen else {}),
        )
        if len(results) >= ENSEMBLE_TOP:  # the same trials' best K, averaged: no training
            test = trials.ensemble(results, ENSEMBLE_TOP)
            report(f"{contender}+top{ENSEMBLE_TOP}", score(task, test), 0.0, trials=len(results))
        if len(results) >= ENSEMBLE_TOP and "oof" in chosen:  # cross-validated: choose on OOF
            test, choice = trials.oof_choice(results, ENSEMBLE_TOP)
            report(
                f"{contender}+oof",
                score(task, test),
                0.0,
                trials=len(results),
                picked="ensemble" if choice.ensemble_wins else "best",
                oof_best=choice.best_score,
                oof_ensemble=choice.ensemble_score,
                cv_sd=chosen["cv_sd"],
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per table, one cell per contender: its test score (and wall time), or over
    several split seeds its median with the range."""
    contenders = list(dict.fromkeys(r["contender"] for r in rows))
    lines = [
        "| table | metric | " + " | ".join(contenders) + " |",
        "|---|---|" + "---|" * len(contenders),
    ]
    for table in dict.fromkeys(r["table"] for r in rows):
        mine = [r for r in rows if r["table"] == table]
        task = mine[0]["task"]
        metric = "RMSE" if task == "regression" else "accuracy"
        shape = "{:.4g}" if task == "regression" else "{:.4f}"
        cells = []
        for contender in contenders:
            found = [r for r in mine if r["contender"] == contender and r["test"] is not None]
            if not found:
                cells.append("")
            elif len(found) == 1:
                cells.append(f"{shape.format(found[0]['test'])} ({found[0]['seconds']:.0f} s)")
            else:
                values = [r["test"] for r in found]
                low, mid, high = min(values), float(np.median(values)), max(values)
                cells.append(f"{shape.format(mid)} ({shape.format(low)}-{shape.format(high)})")
        seeds = len({r["split_seed"] for r in mine})
        label = f"{metric}, median of {seeds} splits" if seeds > 1 else metric
        lines.append(f"| {table} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]], search: str = "tabular-tpe-cv") -> str:
    """Issue 17's two targets per table and split, for ``search`` (the default search with
    CV on): at least HGB's accuracy minus 0.5 points (at most HGB's RMSE), and never below
    nntune's own baseline by more than the CV's sd of the chosen point's folds."""
    lines = [
        "| table | split seed | search | hgb | baseline | folds' sd | >= hgb - 0.5 pt "
        "(<= hgb RMSE) | >= baseline - sd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    found = 0
    for table, seed in dict.fromkeys((r["table"], r["split_seed"]) for r in rows):
        mine = {r["contender"]: r for r in rows if (r["table"], r["split_seed"]) == (table, seed)}
        if not all(c in mine for c in (search, "hgb", "nntune-baseline")):
            continue
        found += 1
        ours, hgb, base = (mine[c]["test"] for c in (search, "hgb", "nntune-baseline"))
        sd = mine[search].get("cv_sd")
        regression = mine[search]["task"] == "regression"
        if regression:
            near_hgb = ours <= hgb
            near_base = None if sd is None else ours <= base + sd
        else:
            near_hgb = ours >= hgb - 0.005
            near_base = None if sd is None else ours >= base - sd
        shape = "{:.4g}" if regression else "{:.4f}"
        cells = [shape.format(v) for v in (ours, hgb, base)]
        cells.append("" if sd is None else shape.format(sd))
        cells += ["yes" if near_hgb else "NO"]
        cells += ["not recorded" if near_base is None else "yes" if near_base else "NO"]
        lines.append(f"| {table} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if found else f"({search}, hgb and the baseline were not all run)"


if __name__ == "__main__":
    main()

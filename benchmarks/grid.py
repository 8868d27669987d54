"""Benchmark: a 16-point grid on digits through nntune (one DVC experiment per trial)
against Keras Tuner's GridSearch and a bare Keras loop, in one run, same split and seeds.

    .venv/bin/pip install -e '.[bench]'          # keras-tuner, tensorboard
    .venv/bin/python benchmarks/grid.py [--repeats 3] [--jobs 2]

The grid: hidden_layers {1, 2} x units {64, 128} x learning_rate {0.001, 0.01} x batch_size
{32, 64}; Adam, at most 50 epochs, early stopping with patience 5 on validation loss and
restore-best; everything else from params.yaml. A temp project is made with `nntune init`
on data/digits.csv and its baseline reproduced (not timed). Each repeat then times, as a
user would see them (fresh processes, imports included):

- nntune: `nntune grid` + `nntune run -j JOBS`, after removing the previous repeat's
  experiments and DVC's run cache (or a repeat would restore results without training);
  `--only ... nntune-cold` adds the same with `nntune run --cold` (no warm runner), and
  `nntune-fresh` with a fresh child of the warm runner for every stage (no resident ones);
- Keras Tuner: GridSearch over the same points in one Python process, on the prepared
  splits of the same project, each trial seeded and built by nntune's own code;
- bare Keras: a plain loop over the points in one Python process, likewise.

Each contender also runs on Keras' JAX backend: `nntune-jax` (a second project whose
params.yaml says `runtime.backend: jax`, so its warm runner loads JAX), `keras-tuner-jax`
and `bare-keras-jax` (KERAS_BACKEND=jax). Each run of each contender starts with an empty
JAX compilation cache of its own. (Until 2026-12-04 all shared one per script run, so a
contender loaded what those before it had compiled.)

Per repeat it prints one JSON line per contender (wall seconds, best trial by val_loss, its
val and test accuracy; for nntune also ``fit_floor_s``, the sum of its trials' `fit` seconds
over the jobs: its wall time if every second outside `fit` were gone), then the medians and
the ratios nntune / Keras Tuner, per backend.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPACE = {
    "model.hidden_layers": [1, 2],
    "model.units": [64, 128],
    "train.learning_rate": [0.001, 0.01],
    "train.batch_size": [32, 64],
}
BUDGET = {"max_epochs": 50, "patience": 5}


JAX_CACHE: dict[str, str] = {}  # JAX_COMPILATION_CACHE_DIR, set once the temp dir exists


def env(backend: str | None = None) -> dict[str, str]:
    extra = {"KERAS_BACKEND": backend} if backend else {}
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **JAX_CACHE,
        **extra,
    }


def backend_of(contender: str) -> str:
    return "jax" if contender.endswith("-jax") else "tensorflow"


def sh(cwd: Path, *cmd: str) -> str:
    out = subprocess.run(list(cmd), cwd=cwd, env=env(), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def make_project(tmp: Path, backend: str = "tensorflow", data: Path | None = None) -> Path:
    """A project made with `nntune init` on ``data`` (digits by default), the benchmark's
    budget in its params (and ``data.missing: impute`` for another table), its baseline
    reproduced and committed."""
    name = f"proj-{backend}"
    sh(tmp, str(BIN / "nntune"), "init", name, "--data", str(data or ROOT / "data/digits.csv"),
       "--target", "target")  # fmt: skip
    project = tmp / name
    params = project / "params.yaml"
    text = params.read_text()
    if data is not None:
        text = re.sub(r"^(  missing: )\w+", r"\g<1>impute", text, flags=re.M)
    text = re.sub(r"^(  backend: )\w+", rf"\g<1>{backend}", text, flags=re.M)
    text = re.sub(r"^(  max_epochs: )\d+", rf"\g<1>{BUDGET['max_epochs']}", text, flags=re.M)
    text = re.sub(r"^(    patience: )\d+", rf"\g<1>{BUDGET['patience']}", text, flags=re.M)
    params.write_text(text)
    (tmp / "space.yaml").write_text(
        "".join(f"{key}: {json.dumps(values)}\n" for key, values in SPACE.items())
    )
    sh(project, "dvc", "repro")
    sh(project, "git", "add", "-A")
    sh(project, "git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
       "commit", "-qm", "baseline")  # fmt: skip
    return project


def time_nntune(project: Path, space: Path, jobs: int, mode: str = "warm") -> dict[str, Any]:
    sh(project, "dvc", "queue", "remove", "--all")
    sh(project, "dvc", "exp", "remove", "--all-commits")
    shutil.rmtree(project / ".dvc" / "cache" / "runs", ignore_errors=True)
    started = time.perf_counter()
    sh(project, str(BIN / "nntune"), "grid", "--space", str(space))
    if mode == "fresh":  # the warm runner forks a fresh child per stage (no resident ones)
        os.environ["NNTUNE_WARM_RESIDENT_JOBS"] = "1"
    try:
        flag = "--cold" if mode == "cold" else "--warm"
        sh(project, str(BIN / "nntune"), "run", "--jobs", str(jobs), flag)
    finally:
        os.environ.pop("NNTUNE_WARM_RESIDENT_JOBS", None)
    seconds = time.perf_counter() - started
    sys.path.insert(0, str(ROOT / "src"))
    from nntune.experiments import list_experiments

    rows = [e for e in list_experiments(project, list(SPACE)) if e.succeeded]
    best = min(rows, key=lambda e: float(e.metrics["val_loss"]))
    backend = "" if "tensorflow" in project.name else "-jax"
    return {
        "contender": {"warm": "nntune", "cold": "nntune-cold", "fresh": "nntune-fresh"}[mode]
        + backend,
        "seconds": round(seconds, 1),
        "trials": len(rows),
        "best": best.name,
        "best_val_accuracy": round(float(best.metrics["val_accuracy"]), 4),
        "best_test_accuracy": round(float(best.metrics["test_accuracy"]), 4),
        "max_val_accuracy": round(max(float(e.metrics["val_accuracy"]) for e in rows), 4),
        # The floor with no overhead at all: the trials' own `fit` seconds (each measured
        # under this run's contention) packed perfectly onto `jobs` workers.
        "fit_floor_s": round(sum(float(e.metrics["train_seconds"]) for e in rows) / jobs, 1),
    }


def time_in_process(project: Path, kind: str, tmp: Path) -> dict[str, Any]:
    started = time.perf_counter()
    inner_kind = kind.removesuffix("-jax")
    out = subprocess.run(
        [sys.executable, __file__, "--inner", inner_kind, "--project", str(project),
         "--tmp", str(tmp)],
        env=env(backend_of(kind)),
        capture_output=True,
        text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return {"contender": kind, "seconds": round(seconds, 1), **result}


# ---- inside the child process: Keras Tuner or the bare loop -------------------------------


def points() -> list[dict[str, Any]]:
    from itertools import product

    return [dict(zip(SPACE, values, strict=True)) for values in product(*SPACE.values())]


def trial_params(base: Any, point: dict[str, Any]) -> Any:
    model = dataclasses.replace(
        base.model,
        hidden_layers=point["model.hidden_layers"],
        units=(point["model.units"],) * point["model.hidden_layers"],
    )
    train = dataclasses.replace(
        base.train,
        learning_rate=point["train.learning_rate"],
        batch_size=point["train.batch_size"],
    )
    return dataclasses.replace(base, model=model, train=train)


def inner(kind: str, project: Path, tmp: Path) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import keras

    from nntune.config.params import load_params
    from nntune.stage.data import read_prepared
    from nntune.stage.model import build_model
    from nntune.stage.training import seed_everything

    base = load_params(project / "params.yaml")
    data = read_prepared(project / "data" / "prepared")
    (x, y), (xv, yv), (xt, yt) = (data.xy(s) for s in ("train", "val", "test"))
    es = base.train.early_stopping

    def stopper() -> keras.callbacks.EarlyStopping:
        return keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=es.patience,
            min_delta=es.min_delta,
            restore_best_weights=es.restore_best_weights,
        )

    def build(params: Any) -> keras.Model:
        seed_everything(params.runtime)
        return build_model(
            params.model, params.train, len(data.features), data.task, len(data.classes)
        )

    if kind == "keras-tuner":
        import keras_tuner as kt

        def hypermodel(hp: Any) -> keras.Model:
            point = {key: hp.Choice(key, values) for key, values in SPACE.items()}
            return build(trial_params(base, point))

        class Tuner(kt.GridSearch):  # type: ignore[misc]
            def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
                kwargs["batch_size"] = trial.hyperparameters.get("train.batch_size")
                return super().run_trial(trial, *args, **kwargs)

        tuner = Tuner(
            hypermodel,
            objective="val_loss",
            directory=str(tmp / "kt"),
            project_name="grid",
            overwrite=True,
        )
        tuner.search(
            x, y, validation_data=(xv, yv), epochs=base.train.max_epochs,
            callbacks=[stopper()], verbose=0, shuffle=True,
        )  # fmt: skip
        trials = tuner.oracle.get_best_trials(num_trials=len(points()))
        best_model = tuner.get_best_models(1)[0]
        best_val = best_model.evaluate(xv, yv, verbose=0, return_dict=True)
        val_accuracies = [t.metrics.get_best_value("val_accuracy") for t in trials]
        result = {
            "trials": len(trials),
            "best": str(trials[0].hyperparameters.values),
            "best_val_accuracy": round(float(best_val["accuracy"]), 4),
            "best_test_accuracy": round(
                float(best_model.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"]), 4
            ),
            "max_val_accuracy": round(float(max(val_accuracies)), 4),
        }
    else:
        rows = []
        for point in points():
            params = trial_params(base, point)
            net = build(params)
            net.fit(
                x, y, validation_data=(xv, yv), epochs=params.train.max_epochs,
                batch_size=params.train.batch_size, callbacks=[stopper()], verbose=0,
                shuffle=True,
            )  # fmt: skip
            val = net.evaluate(xv, yv, verbose=0, return_dict=True)
            test = net.evaluate(xt, yt, verbose=0, return_dict=True)
            rows.append((val["loss"], val["accuracy"], test["accuracy"], point))
        best = min(rows, key=lambda r: r[0])
        result = {
            "trials": len(rows),
            "best": str(best[3]),
            "best_val_accuracy": round(float(best[1]), 4),
            "best_test_accuracy": round(float(best[2]), 4),
            "max_val_accuracy": round(float(max(r[1] for r in rows)), 4),
        }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--only",
        nargs="+",
        default=["nntune", "keras-tuner", "bare-keras", "nntune-jax", "keras-tuner-jax",
                 "bare-keras-jax"],
    )  # fmt: skip
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    parser.add_argument("--project", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.inner, Path(args.project), Path(args.tmp))
        return
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in args.only}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        JAX_CACHE["JAX_COMPILATION_CACHE_DIR"] = str(tmp / "jax-cache")
        backends = sorted({backend_of(name) for name in args.only})
        projects = {backend: make_project(tmp, backend) for backend in backends}
        for repeat in range(args.repeats):
            for name in args.only:
                project = projects[backend_of(name)]
                # An empty JAX compilation cache of its own for each run of each contender:
                # none loads what another compiled (the cache is JAX's own env variable, so
                # the in-process contenders use it too).
                JAX_CACHE["JAX_COMPILATION_CACHE_DIR"] = str(tmp / f"jax-cache-{name}-{repeat}")
                if name.startswith("nntune"):
                    mode = {"nntune-cold": "cold", "nntune-fresh": "fresh"}.get(
                        name.removesuffix("-jax"), "warm"
                    )
                    row = time_nntune(project, tmp / "space.yaml", args.jobs, mode)
                else:
                    row = time_in_process(project, name, tmp)
                row["repeat"] = repeat
                print(json.dumps(row), flush=True)
                results[name].append(row)
    medians = {
        name: statistics.median(r["seconds"] for r in rows) for name, rows in results.items()
    }
    summary: dict[str, Any] = {"median_seconds": medians}
    for suffix in ("", "-jax"):
        ours, theirs = f"nntune{suffix}", f"keras-tuner{suffix}"
        if ours in medians and theirs in medians:
            summary[f"{ours}_over_{theirs}"] = round(medians[ours] / medians[theirs], 2)
    if "nntune" in medians and "nntune-jax" in medians:
        summary["nntune-jax_over_nntune"] = round(medians["nntune-jax"] / medians["nntune"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

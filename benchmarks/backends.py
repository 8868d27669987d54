"""Benchmark: the train stage's `fit` on digits per Keras backend and `steps_per_execution`,
against a bare `model.fit` on the same backend, side by side in one run.

    .venv/bin/pip install -e '.[jax]'
    .venv/bin/python benchmarks/backends.py [--repeats 3] [--epochs 20]

A temp project is made with `nntune init` on data/digits.csv and prepared (`dvc repro
prepare`, not timed). The model is the default one (1 x 128 ReLU, dropout 0.1, Adam, batch
32: 34 steps per epoch), trained for EPOCHS + 1 epochs with early stopping off. Per repeat,
in turn, for tensorflow and jax, each with `steps_per_execution` 1 and auto:

- stage: `stages/train.py` as DVC runs it (a fresh process, PYTHONPATH=src); its figures are
  what it records in reports/train_run.json: `samples_per_second` over the whole fit (the
  first epoch traces or compiles the steps) and `steady_samples_per_second` over the epochs
  after the first. JAX's persistent compilation cache is off (NNTUNE_JAX_CACHE=off), as for
  a model shape's first trial; one more JAX row runs with the cache warm, as every later
  trial of that shape does;
- bare: nntune's `build_model` and `model.fit(x, y, validation_data=..., shuffle=True)` on
  the prepared arrays in a fresh process of that backend, with the same steps per call and a
  callback that only notes when each epoch ended (the same two figures).

Prints one JSON line per run, then the medians and the ratios the issue sets targets for:
JAX / TensorFlow default (>= 5), TensorFlow auto / TensorFlow default (>= 1.3), stage / bare
per backend (>= 0.95).
"""

from __future__ import annotations

import argparse
import json
import math
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
RUNS = [("tensorflow", "1"), ("tensorflow", "auto"), ("jax", "1"), ("jax", "auto")]


def make_project(tmp: Path, epochs: int) -> Path:
    project = tmp / "digits"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    subprocess.run(
        [BIN / "nntune", "init", str(project), "--data", str(ROOT / "data" / "digits.csv"),
         "--target", "target"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    subprocess.run([BIN / "dvc", "repro", "prepare"], cwd=project, check=True, env=env,
                   capture_output=True)  # fmt: skip
    for name in ("pretrained", "init"):
        (project / name).mkdir()
    (project / "pretrained" / "info.json").write_text('{"enabled": false}')
    (project / "init" / "warm_start.json").write_text('{"enabled": false}')
    set_params(project, epochs, "tensorflow", "1")
    return project


def set_params(project: Path, epochs: int, backend: str, spe: str) -> None:
    path = project / "params.yaml"
    text = path.read_text()
    for key, value in {
        "max_epochs": str(epochs + 1),
        "enabled": "false",  # early stopping (the first `enabled:` key under train)
        "backend": backend,
        "steps_per_execution": spe,
    }.items():
        if key == "enabled":
            text = re.sub(r"(early_stopping:\n    enabled: )\w+", rf"\g<1>{value}", text)
        else:
            text = re.sub(rf"^(\s+{key}: )\S+", rf"\g<1>{value}", text, count=1, flags=re.M)
    path.write_text(text)


def stage_run(project: Path, cache: Path | None) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": "src"}
    if cache is None:
        env["NNTUNE_JAX_CACHE"] = "off"
    else:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    shutil.rmtree(project / "live", ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "stages/train.py", "params.yaml", "data/prepared", "pretrained", "init",
         "model.keras", "last.keras", "metrics.json", "run.json", "live"],
        cwd=project, env=env, check=True, capture_output=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    run = json.loads((project / "run.json").read_text())
    metrics = json.loads((project / "metrics.json").read_text())
    return {
        "fit": run["samples_per_second"],
        "steady": run["steady_samples_per_second"],
        "stage_wall_s": round(wall, 2),
        "steps_per_execution": run["steps_per_execution"],
        "val_loss": metrics["val_loss"],
    }


def bare_run(project: Path, backend: str, spe: str) -> dict[str, float]:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(project / "src")}
    out = subprocess.run(
        [sys.executable, __file__, "--bare", str(project), "--spe", spe],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.splitlines()[-1]))


def bare_worker(project: Path, spe: str) -> None:
    """In a process whose KERAS_BACKEND is set: a plain fit of nntune's model."""
    import keras

    from nntune.config.params import load_params
    from nntune.stage.data import read_prepared
    from nntune.stage.model import build_model
    from nntune.stage.training import seed_everything, steps_per_execution

    params = load_params(project / "params.yaml")
    seed_everything(params.runtime)
    data = read_prepared(project / "data" / "prepared", splits=("train", "val"))
    x, y = data.xy("train")
    xv, yv = data.xy("val")
    classes = len(data.classes or [])
    net = build_model(params.model, params.train, len(data.features), data.task, classes)
    steps = math.ceil(len(x) / params.train.batch_size)
    net.steps_per_execution = steps_per_execution("auto" if spe == "auto" else int(spe), steps)
    ends: list[float] = []
    clock = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: ends.append(time.perf_counter()))
    epochs = params.train.max_epochs
    started = time.perf_counter()
    net.fit(x, y, validation_data=(xv, yv), epochs=epochs, batch_size=params.train.batch_size,
            shuffle=True, verbose=0, callbacks=[clock])  # fmt: skip
    print(json.dumps({
        "fit": round(len(x) * epochs / (ends[-1] - started), 1),
        "steady": round(len(x) * (epochs - 1) / (ends[-1] - ends[0]), 1),
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spe", default="1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare is not None:
        bare_worker(args.bare, args.spe)
        return
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        project = make_project(tmp, args.epochs)
        cache = tmp / "jax-cache"
        for repeat in range(args.repeats):
            for backend, spe in RUNS:
                set_params(project, args.epochs, backend, spe)
                for kind, row in (
                    ("stage", stage_run(project, None)),
                    ("bare", bare_run(project, backend, spe)),
                ):
                    results.setdefault(f"{kind} {backend} spe={spe}", []).append(row)
                    print(json.dumps({"repeat": repeat, "run": f"{kind} {backend} spe={spe}",
                                      **row}), flush=True)  # fmt: skip
            set_params(project, args.epochs, "jax", "auto")
            stage_run(project, cache)  # fills the cache (the first repeat) or keeps it warm
            row = stage_run(project, cache)
            results.setdefault("stage jax spe=auto warm-cache", []).append(row)
            print(json.dumps({"repeat": repeat, "run": "stage jax spe=auto warm-cache", **row}))
    medians = {
        run: {key: statistics.median(r[key]) for key in ("fit", "steady")}
        for run, rows in results.items()
        for r in [{k: [row[k] for row in rows] for k in ("fit", "steady")}]
    }

    def ratio(a: str, b: str, key: str) -> float:
        return round(medians[a][key] / medians[b][key], 2)

    summary: dict[str, Any] = {"medians": medians, "ratios": {}}
    for key in ("steady", "fit"):
        summary["ratios"][key] = {
            "jax auto / tf default (>= 5)": ratio(
                "stage jax spe=auto", "stage tensorflow spe=1", key
            ),
            "tf auto / tf default (>= 1.3)": ratio(
                "stage tensorflow spe=auto", "stage tensorflow spe=1", key
            ),
            **{
                f"stage / bare, {backend} spe={spe} (>= 0.95)": ratio(
                    f"stage {backend} spe={spe}", f"bare {backend} spe={spe}", key
                )
                for backend, spe in RUNS
            },
        }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: samples per second of the train stage against a bare ``model.fit`` on
in-memory arrays: same model, same data, 200,000 synthetic rows, 5 epochs.

    .venv/bin/python benchmarks/throughput.py [--rows 200000] [--epochs 5] [--repeats 3]

Writes a synthetic classification table (40 float features, 5 classes) as prepared splits
(the prepare stage's own writer), then, per repeat and side by side:

- stage: ``stages/train.py`` as DVC runs it (a fresh process), early stopping off; the fit
  figure is the ``samples_per_second`` it records (``model.fit`` inside the stage, with its
  callbacks: dvclive, divergence guard, early stopping), the stage figure counts the whole
  process (imports, data reading, saving the model);
- bare: ``build_model`` + ``model.fit(x, y, validation_data=...)`` in this process, no
  callbacks.

Prints the medians as JSON, with the ratios stage fit / bare fit and whole stage / bare fit.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def synthetic_prepared(rows: int, out: Path) -> None:
    import numpy as np
    import pandas as pd

    from nntune.stage.data import Prepared, write_prepared

    rng = np.random.default_rng(0)
    features = [f"x{i}" for i in range(40)]

    def split(n: int) -> pd.DataFrame:
        y = rng.integers(0, 5, size=n)
        x = rng.normal(size=(n, 40)).astype("float32") + y[:, None] * 0.1
        return pd.DataFrame(x, columns=features).assign(label=y)

    n_val = rows // 10
    prepared = Prepared(
        splits={"train": split(rows), "val": split(n_val), "test": split(n_val)},
        features=features,
        target="label",
        task="multiclass",
        classes=list(range(5)),
        scaler_mean=[0.0] * 40,
        scaler_scale=[1.0] * 40,
    )
    write_prepared(prepared, out)


def project_params(epochs: int, out: Path) -> None:
    text = (ROOT / "params.yaml").read_text()
    text = re.sub(r"^(  max_epochs: )\d+", rf"\g<1>{epochs}", text, flags=re.M)
    # No early stop: every run trains exactly `epochs` epochs.
    text = re.sub(r"^(    patience: )\d+", rf"\g<1>{epochs}", text, flags=re.M)
    text = re.sub(r"^(    min_delta: )\S+", r"\g<1>0.0", text, flags=re.M)
    out.write_text(text)


def stage_run(tmp: Path) -> tuple[float, float]:
    (tmp / "pretrained").mkdir(exist_ok=True)
    (tmp / "pretrained" / "info.json").write_text('{"enabled": false}')
    (tmp / "init").mkdir(exist_ok=True)
    (tmp / "init" / "warm_start.json").write_text('{"enabled": false}')
    shutil.rmtree(tmp / "live", ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "stages" / "train.py"), str(tmp / "params.yaml"),
         str(tmp / "prepared"), str(tmp / "pretrained"), str(tmp / "init"),
         str(tmp / "model.keras"), str(tmp / "last.keras"), str(tmp / "metrics.json"),
         str(tmp / "run.json"), str(tmp / "live")],
        cwd=tmp, env=env, check=True, capture_output=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    run = json.loads((tmp / "run.json").read_text())
    return float(run["samples_per_second"]), wall


def bare_fit(tmp: Path) -> float:
    from nntune.config.params import load_params
    from nntune.stage.data import read_prepared
    from nntune.stage.model import build_model
    from nntune.stage.training import seed_everything

    params = load_params(tmp / "params.yaml")
    seed_everything(params.runtime)
    data = read_prepared(tmp / "prepared", splits=("train", "val"))
    x, y = data.xy("train")
    xv, yv = data.xy("val")
    net = build_model(params.model, params.train, len(data.features), data.task, 5)
    started = time.perf_counter()
    net.fit(
        x, y, validation_data=(xv, yv), epochs=params.train.max_epochs,
        batch_size=params.train.batch_size, shuffle=True, verbose=0,
    )  # fmt: skip
    return len(x) * params.train.max_epochs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        synthetic_prepared(args.rows, tmp / "prepared")
        project_params(args.epochs, tmp / "params.yaml")
        stage_fit, stage_whole, bare = [], [], []
        for _ in range(args.repeats):
            fit_rate, wall = stage_run(tmp)
            stage_fit.append(fit_rate)
            stage_whole.append(args.rows * args.epochs / wall)
            bare.append(bare_fit(tmp))
    medians = {
        "stage_fit_samples_per_s": statistics.median(stage_fit),
        "stage_whole_samples_per_s": statistics.median(stage_whole),
        "bare_fit_samples_per_s": statistics.median(bare),
    }
    print(
        json.dumps(
            {
                "rows": args.rows,
                "epochs": args.epochs,
                **{k: round(v) for k, v in medians.items()},
                "stage_fit_over_bare": round(
                    medians["stage_fit_samples_per_s"] / medians["bare_fit_samples_per_s"], 3
                ),
                "whole_stage_over_bare": round(
                    medians["stage_whole_samples_per_s"] / medians["bare_fit_samples_per_s"], 3
                ),
            }
        )
    )


if __name__ == "__main__":
    main()

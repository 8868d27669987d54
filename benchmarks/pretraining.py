"""Benchmark: does autoencoder pretraining help on digits? Test accuracy with
``data.label_fraction`` 0.05 and 1.0, pretraining off and on, over 3 seeds.

    .venv/bin/python benchmarks/pretraining.py [--seeds 0 1 2] [--fractions 0.05 1.0]

Each run is what the pipeline does (prepare -> pretrain -> train -> evaluate, the library
calls the stage scripts make) with this checkout's params.yaml, in one process, on the CPU.
A seed sets both ``data.split_seed`` (which rows are test, and which training rows keep
their labels) and ``runtime.seed`` (weights, shuffling, dropout), so the on/off pair of a
seed sees exactly the same rows. Prints one JSON line per run, then a Markdown table of
mean +- std test accuracy per cell.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nntune.config.params import load_params  # noqa: E402
from nntune.config.sections import Params  # noqa: E402
from nntune.stage import device, pretrain  # noqa: E402
from nntune.stage.data import digits_frame  # noqa: E402
from nntune.stage.evaluate import evaluate_predictions  # noqa: E402
from nntune.stage.preprocess import prepare  # noqa: E402
from nntune.stage.training import fit, seed_everything  # noqa: E402


def one_run(
    base: Params, fraction: float, enabled: bool, seed: int, tmp: Path
) -> dict[str, object]:
    params = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, label_fraction=fraction, split_seed=seed),
        runtime=dataclasses.replace(base.runtime, seed=seed, device="cpu"),
        pretrain=dataclasses.replace(base.pretrain, enabled=enabled),
    )
    started = time.perf_counter()
    data = prepare(digits_frame(), params.data)
    seed_everything(params.runtime)
    encoder = pretrain.Pretrained(pretrain.PretrainInfo.disabled(), None)
    pretrain_metrics: dict[str, object] = {}
    if enabled:
        result = pretrain.pretrain_encoder(data, params.model, params.pretrain, tmp / "ae")
        encoder = pretrain.Pretrained(result.info, result.encoder)
        pretrain_metrics = result.metrics
    net, frozen = pretrain.initialised_model(params, data, encoder)
    fitted = fit(
        net,
        data,
        params.train,
        tmp / "live",
        seed=params.runtime.seed,
        frozen=frozen,
        freeze_epochs=params.pretrain.freeze_epochs,
    )
    x_test, y_test = data.xy("test")
    metrics, _ = evaluate_predictions(data, y_test, net.predict(x_test, verbose=0))
    return {
        "label_fraction": fraction,
        "pretrain": enabled,
        "seed": seed,
        "labelled_train_rows": len(data.splits["train"]),
        "unlabeled_rows": len(data.splits["unlabeled"]),
        "test_accuracy": round(float(metrics["test_accuracy"]), 4),
        "val_accuracy": round(float(fitted.metrics["val_accuracy"]), 4),
        "epochs_trained": fitted.metrics["epochs_trained"],
        "pretrain_epochs": pretrain_metrics.get("pretrain_epochs", 0),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 1.0])
    args = parser.parse_args()
    base = load_params(args.params)
    device.configure(dataclasses.replace(base.runtime, device="cpu"))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for fraction in args.fractions:
            for seed in args.seeds:
                for enabled in (False, True):
                    run_dir = Path(tmp) / f"{fraction}-{seed}-{enabled}"
                    row = one_run(base, fraction, enabled, seed, run_dir)
                    print(json.dumps(row), flush=True)
                    runs.append(row)
    print("\n| label_fraction | labelled train rows | pretraining | test accuracy, mean +- std |")
    print("|---|---|---|---|")
    for fraction in args.fractions:
        for enabled in (False, True):
            cell = [r for r in runs if r["label_fraction"] == fraction and r["pretrain"] is enabled]
            accuracy = [float(r["test_accuracy"]) for r in cell]  # type: ignore[arg-type]
            spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
            print(
                f"| {fraction} | {cell[0]['labelled_train_rows']} | {'on' if enabled else 'off'} "
                f"| {statistics.mean(accuracy):.4f} +- {spread:.4f} "
                f"({', '.join(f'{a:.4f}' for a in accuracy)}) |"
            )


if __name__ == "__main__":
    main()

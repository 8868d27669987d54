"""GPU check: train the default model of params.yaml on the digits data on the device that
runtime.device picks, and print the device used and the training throughput.

    .venv/bin/python benchmarks/gpu_check.py                  # TensorFlow backend
    KERAS_BACKEND=jax python benchmarks/gpu_check.py          # the same Keras code on JAX
    python benchmarks/gpu_check.py --device cpu --epochs 10   # override runtime.device

It uses the library's own params loader, data split, model builder and device module, but
neither DVC nor dvclive, so it runs where only Keras, a backend, scikit-learn and pandas are
installed. It prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library, installed or not

import keras  # noqa: E402

from nntune.config.params import Params, load_params  # noqa: E402
from nntune.config.sections import RuntimeParams  # noqa: E402
from nntune.stage import device  # noqa: E402
from nntune.stage.data import digits_frame  # noqa: E402
from nntune.stage.model import build_model  # noqa: E402
from nntune.stage.preprocess import prepare  # noqa: E402


def parser_for(doc: str | None, epochs: int) -> argparse.ArgumentParser:
    """The options of the GPU checks (this script and gpu_resident.py)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--device", help="override runtime.device (auto, cpu, gpu:N)")
    parser.add_argument("--epochs", type=int, default=epochs)
    return parser


def params_and_runtime(args: argparse.Namespace) -> tuple[Params, RuntimeParams]:
    """params.yaml (or ``--params``), and its runtime section with ``--device`` applied."""
    params = load_params(args.params)
    runtime = params.runtime
    if args.device:
        runtime = dataclasses.replace(runtime, device=args.device)
    return params, runtime


def main() -> None:
    args = parser_for(__doc__, epochs=20).parse_args()
    params, runtime = params_and_runtime(args)
    used = device.configure(runtime)
    keras.utils.set_random_seed(runtime.seed)
    data = prepare(digits_frame(), params.data)
    x, y = data.xy("train")
    x_val, y_val = data.xy("val")
    net = build_model(params.model, params.train, len(data.features), data.task, len(data.classes))
    batch = params.train.batch_size
    net.fit(x, y, epochs=1, batch_size=batch, verbose=0)  # compile and warm up, not timed
    started = time.perf_counter()
    net.fit(x, y, epochs=args.epochs, batch_size=batch, verbose=0)
    seconds = time.perf_counter() - started
    val = net.evaluate(x_val, y_val, batch_size=batch, verbose=0, return_dict=True)
    print(
        json.dumps(
            {
                **used.record(),
                "notes": list(used.notes),
                "epochs": args.epochs,
                "batch_size": batch,
                "train_rows": len(x),
                "seconds": round(seconds, 3),
                "samples_per_second": round(len(x) * args.epochs / seconds, 1),
                "val_accuracy": round(float(val["accuracy"]), 4),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Benchmark: what a digits trial pays once per process, on TensorFlow (issue 21).

    .venv/bin/python benchmarks/process_warmup.py [--trials 4] [--epochs 3] [--idle 4]

One trial is what the train stage does with params.yaml (digits, 1 x 128, Adam 0.01,
batch 32) for ``--epochs`` epochs: seed, build, nntune's ``fit``, the test rows through the
model, a save. This process imports TensorFlow, Keras and nntune first, as the warm runner's
server does, then runs the trial, alternated, in four ways:

- ``forked``: a child forked for the trial (the warm runner today);
- ``runtime``: a child forked ahead that starts TensorFlow's runtime (one op), waits
  ``--idle`` seconds, then runs the trial;
- ``warmed``: a child forked ahead that first trains a throwaway copy of the model for one
  epoch on 200 rows and saves it (``keras.backend.clear_session()`` after), waits, then
  runs the trial (the "spares" that were tried and not kept: benchmarks/README.md);
- ``persistent``: one child runs ``--trials`` trials in a row (``clear_session`` between),
  as a worker that keeps its runtime would; its first trial is left out of the median.

Prints each way's trial seconds, their medians, and whether the saved model and metrics
are byte-identical across the ways' first trials and all of the persistent child's trials
(same params, same seeds: a process that keeps its runtime must not change a result).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import yaml  # noqa: E402

from nntune.stage.quiet import import_keras_quietly  # noqa: E402

import_keras_quietly()
import keras  # noqa: E402

from nntune.config.params import parse_params  # noqa: E402
from nntune.stage import artifacts  # noqa: E402
from nntune.stage.data import digits_frame  # noqa: E402
from nntune.stage.model import build_model, model_for  # noqa: E402
from nntune.stage.outputs import raw_output  # noqa: E402
from nntune.stage.preprocess import prepare  # noqa: E402
from nntune.stage.training import fit, seed_everything  # noqa: E402

WAYS = ("forked", "runtime", "warmed", "persistent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=4.0, help="seconds a child waits ahead")
    args = parser.parse_args()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["max_epochs"] = args.epochs
    params = parse_params(raw, source="benchmark")
    data = prepare(digits_frame(), params.data)
    small = prepare(digits_frame().head(200), params.data)

    def trial(out: Path) -> None:
        keras.backend.clear_session()
        seed_everything(params.runtime)
        net = model_for(params, data)
        with tempfile.TemporaryDirectory() as live, contextlib.redirect_stdout(io.StringIO()):
            result = fit(net, data, params.train, live, seed=params.runtime.seed)
        raw_output(net, data.x("test"))
        artifacts.save_model(net, out)
        out.with_suffix(".json").write_text(json.dumps(result.metrics, default=str))

    def warm_up(way: str, tmp: Path) -> None:
        import tensorflow as tf

        tf.constant(1.0).numpy()  # the runtime: devices, thread pools
        if way == "warmed":
            net = build_model(
                params.model, params.train, len(small.features), small.task, len(small.classes)
            )
            train = parse_params({**raw, "train": {**raw["train"], "max_epochs": 1}}).train
            with tempfile.TemporaryDirectory() as live, contextlib.redirect_stdout(io.StringIO()):
                fit(net, small, train, live, seed=0)
            raw_output(net, small.x("test"))
            artifacts.save_model(net, tmp / "throwaway.keras")
            keras.backend.clear_session()

    def child(way: str, tmp: Path, index: int) -> list[float]:
        """Seconds of each trial the child runs, timed from its go."""
        go_r, go_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.close(out_r)
            if way in ("runtime", "warmed"):
                warm_up(way, tmp)
            os.read(go_r, 1)
            times = []
            for t in range(args.trials if way == "persistent" else 1):
                started = time.perf_counter()
                trial(tmp / f"{way}-{index}-{t}.keras")
                times.append(time.perf_counter() - started)
            os.write(out_w, json.dumps(times).encode())
            os._exit(0)
        os.close(go_r)
        os.close(out_w)
        if way in ("runtime", "warmed"):
            time.sleep(args.idle)  # the child waits ahead, as a spare would
        started = time.perf_counter()
        os.write(go_w, b"g")
        text = b""
        while chunk := os.read(out_r, 65536):
            text += chunk
        os.waitpid(pid, 0)
        times = json.loads(text)
        if way == "forked":  # include the fork itself
            times[0] = time.perf_counter() - started
        return times

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        seconds: dict[str, list[float]] = {way: [] for way in WAYS}
        for index in range(args.trials):
            for way in WAYS if index % 2 == 0 else WAYS[::-1]:
                if way == "persistent" and index > 0:
                    continue
                got = child(way, tmp, index)
                seconds[way] += got[1:] if way == "persistent" else got
        first = {way: tmp / f"{way}-0-0.keras" for way in WAYS}
        first |= {f"persistent-{t}": tmp / f"persistent-0-{t}.keras" for t in range(args.trials)}
        md5 = {w: hashlib.md5(p.read_bytes()).hexdigest() for w, p in first.items()}
        metrics = {w: p.with_suffix(".json").read_text() for w, p in first.items()}
    print(json.dumps({way: [round(s, 2) for s in v] for way, v in seconds.items()}))
    medians = {way: round(statistics.median(v), 2) for way, v in seconds.items()}
    print(json.dumps({"median_s": medians, "epochs": args.epochs, "trials": args.trials}))
    print(
        json.dumps(
            {
                "same_model_bytes": len(set(md5.values())) == 1,
                "same_metrics": len(set(metrics.values())) == 1,
            }
        )
    )


if __name__ == "__main__":
    main()

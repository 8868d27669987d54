"""GPU check for the warm runner's resident children (issue 21): what a stage pays once per
process on the device that runtime.device picks, forked fresh against kept.

    KERAS_BACKEND=jax python benchmarks/gpu_resident.py [--trials 5] [--epochs 3]
    python benchmarks/gpu_resident.py --device cpu     # the same on the CPU

Like benchmarks/gpu_check.py it needs neither DVC nor dvclive (Keras, a backend,
scikit-learn, pandas and PyYAML), so it runs on the lent GPU machine. This process imports
Keras and nntune's stage modules without starting the backend's runtime, as the warm
runner's server does, then runs one trial (seed, build the model of params.yaml, ``fit``
for ``--epochs`` epochs, predict the test rows) in two ways, alternated:

- ``forked``: a child forked for each trial (the runner's fresh child per stage), timed
  from the go, fork included: the device's runtime (for a GPU: its context, the backend's
  client) and the first compilations come with every trial;
- ``resident``: one child runs ``--trials`` trials in a row, ``clear_session`` between (a
  resident child); its first trial is left out.

Prints one JSON line: the device, each way's seconds and medians, and whether the
predictions are the same across all trials of both ways.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library, installed or not
sys.path.insert(0, str(ROOT / "benchmarks"))

import keras  # noqa: E402
from gpu_check import params_and_runtime, parser_for  # noqa: E402

from nntune.stage import device  # noqa: E402
from nntune.stage.data import digits_frame  # noqa: E402
from nntune.stage.model import model_for  # noqa: E402
from nntune.stage.preprocess import prepare  # noqa: E402


def main() -> None:
    parser = parser_for(__doc__, epochs=3)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    params, runtime = params_and_runtime(args)
    data = prepare(digits_frame(), params.data)  # pandas and scikit-learn: no runtime yet

    def trial() -> tuple[str, str]:
        used = device.configure(runtime)
        keras.backend.clear_session()
        keras.utils.set_random_seed(runtime.seed)
        x, y = data.xy("train")
        net = model_for(params, data)
        net.fit(x, y, epochs=args.epochs, batch_size=params.train.batch_size, verbose=0)
        out = net.predict(data.x("test"), batch_size=params.train.batch_size, verbose=0)
        return used.name, hashlib.md5(out.tobytes()).hexdigest()

    def child(trials: int) -> list[tuple[float, str, str]]:
        """Seconds, device and prediction digest of each trial a forked child runs."""
        go_r, go_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.close(out_r)
            os.read(go_r, 1)
            rows = []
            for _ in range(trials):
                started = time.perf_counter()
                name, digest = trial()
                rows.append((time.perf_counter() - started, name, digest))
            os.write(out_w, json.dumps(rows).encode())
            os._exit(0)
        os.close(go_r)
        os.close(out_w)
        started = time.perf_counter()
        os.write(go_w, b"g")
        text = b""
        while chunk := os.read(out_r, 65536):
            text += chunk
        os.waitpid(pid, 0)
        rows = [tuple(row) for row in json.loads(text)]
        if trials == 1:  # include the fork itself
            rows[0] = (time.perf_counter() - started, *rows[0][1:])
        return rows

    forked: list[tuple[float, str, str]] = []
    resident: list[tuple[float, str, str]] = []
    for index in range(args.trials):
        if index == 0:
            resident = child(args.trials + 1)[1:]  # its first trial pays what a fresh one does
        forked += child(1)
    seconds = {
        "forked": [round(s, 3) for s, _, _ in forked],
        "resident": [round(s, 3) for s, _, _ in resident],
    }
    digests = {d for _, _, d in forked + resident}
    print(
        json.dumps(
            {
                "backend": keras.backend.backend(),
                "device": sorted({n for _, n, _ in forked + resident}),
                "epochs": args.epochs,
                "seconds": seconds,
                "median_s": {way: round(statistics.median(v), 3) for way, v in seconds.items()},
                "same_predictions": len(digests) == 1,
            }
        )
    )


if __name__ == "__main__":
    main()

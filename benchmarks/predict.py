"""Benchmark: `nntune predict` on 1,000,000 rows x 50 columns, phase by phase, in rows/s.

    .venv/bin/python benchmarks/predict.py [--rows 1000000] [--sample 20000] [--repeats 3]

Set-up, not timed: a synthetic table (45 numeric columns, some heavy-tailed, 5 with 0.5%
gaps; 5 categorical columns of 3 to 20 categories, one with 1% gaps; a 4-class target)
becomes a project as `dvc repro` would leave it: params.yaml (data.missing: impute,
train.max_epochs: 1), the pandera schema `infer_schema` makes of the whole table (at
data.schema), the prepared splits of a `--sample`-row sample (`prepare`, `write_prepared`)
and the params' model (`build_model`) fitted for 1 epoch on them (`save_model`). The rows
to predict are the table's 50 feature columns (no target), written as Parquet and as CSV.

Then, `--repeats` times and for each file, in this process, the library calls of
`predict_table` and `nntune predict`, each timed alone: read (`read_table`), validate
(`validate_rows`), preprocess (`encode_rows`), load (`load_keras_model`), predict
(`model_output`), label (`predictions`, `with_kept`) and write (`write_predictions`, to the
input's format). Beside them, in pairs whose order alternates between repeats:
`read_rows` (read and validate, as `predict_table` calls them) against `read_table`, and
`model_output` against a bare `model.predict` of a freshly loaded model on the same encoded
rows with `model_output`'s batch size. Last, the whole command, `nntune predict FILE -o OUT`,
as a subprocess (its peak RSS read from /proc every 20 ms).

Prints progress on stderr and one JSON line: medians and rows/s per phase, and the two
ratios of issue 19 taken per repeat (then the median): predict speed over bare
`model.predict` (target >= 0.8; also over both formats' pairs together) and
read_rows / read_table (target <= 1.5). It reports, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from nntune.config.params import parse_params  # noqa: E402
from nntune.serving.predict import (  # noqa: E402
    TrainedModel,
    load_keras_model,
    model_output,
    predictions,
    read_rows,
    validate_rows,
    with_kept,
    workspace_model,
    write_predictions,
)
from nntune.serving.preprocessing import encode_rows  # noqa: E402
from nntune.stage import artifacts  # noqa: E402
from nntune.stage.data import read_table, write_prepared  # noqa: E402
from nntune.stage.preprocess import prepare  # noqa: E402
from nntune.stage.schema import infer_schema  # noqa: E402

T = TypeVar("T")
TARGET = "label"
CLASSES = ["alpha", "beta", "gamma", "delta"]
CATEGORY_COUNTS = (3, 5, 8, 12, 20)
SCHEMA = "data/table.schema.yaml"
FALLBACK_BATCH_SIZE = 1024  # model_output's today, should it stop calling net.predict
PHASES = ("read", "validate", "preprocess", "load", "predict", "label", "write")


def numeric_column(rng: np.random.Generator, i: int, rows: int) -> np.ndarray:
    """Normal, Student-t (3 degrees of freedom), log-normal or Cauchy-like (t with 1.5)
    values, shifted and scaled per column, to 4 decimals (as exact in CSV as in Parquet)."""
    kind = i % 4
    if kind == 0:
        values = rng.normal(size=rows)
    elif kind == 1:
        values = rng.standard_t(3, size=rows)
    elif kind == 2:
        values = rng.lognormal(0.0, 1.0, size=rows)
    else:
        values = rng.standard_t(1.5, size=rows)
    values = values * rng.uniform(0.5, 50.0) + rng.uniform(-100.0, 100.0)
    if i % 9 == 0:  # 5 of the 45 columns have gaps
        values[rng.random(rows) < 0.005] = np.nan
    rounded: np.ndarray = values.round(4)
    return rounded


def raw_table(rows: int) -> pd.DataFrame:
    """45 numeric columns, 5 categorical ones (Zipf-like frequencies) and the target."""
    rng = np.random.default_rng(0)
    columns: dict[str, Any] = {f"x{i}": numeric_column(rng, i, rows) for i in range(45)}
    codes = []
    for j, count in enumerate(CATEGORY_COUNTS):
        p = 1.0 / np.arange(1, count + 1)
        code = rng.choice(count, size=rows, p=p / p.sum())
        values = np.array([f"v{k:02d}" for k in range(count)], dtype=object)[code]
        if j == 2:
            values[rng.random(rows) < 0.01] = None
        columns[f"c{j}"] = values
        codes.append(code)
    # The class depends on 8 numbers (squashed: tails do not decide alone) and 2 categories.
    numbers = np.column_stack([np.tanh(np.nan_to_num(columns[f"x{i}"]) / 50) for i in range(8)])
    logits = numbers @ rng.normal(size=(8, 4)) * 3
    logits += rng.normal(size=(3, 4))[codes[0]] + rng.normal(size=(20, 4))[codes[4]]
    logits += rng.gumbel(size=(rows, 4))
    columns[TARGET] = np.array(CLASSES, dtype=object)[logits.argmax(axis=1)]
    return pd.DataFrame(columns)


def make_project(root: Path, table: pd.DataFrame, sample_rows: int) -> None:
    """params.yaml, the schema of the whole table, the sample's prepared splits and a model
    fitted 1 epoch on them: everything `nntune predict` reads from the workspace."""
    from nntune.stage.quiet import filter_tf_noise, import_keras_quietly

    import_keras_quietly()
    import keras

    from nntune.stage.model import build_model

    raw: dict[str, Any] = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update(
        source="data/sample.csv", schema=SCHEMA, target=TARGET, task="multiclass", missing="impute"
    )
    raw["train"]["max_epochs"] = 1
    artifacts.write_text(root / "params.yaml", yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw, source="benchmark params")
    sample = table.sample(n=min(sample_rows, len(table)), random_state=0)
    artifacts.write_csv(root / params.data.source, sample)
    artifacts.write_text(root / SCHEMA, infer_schema(table, params.data).to_yaml())
    prepared = prepare(sample, params.data)
    write_prepared(prepared, root / "data/prepared")
    with filter_tf_noise():
        keras.utils.set_random_seed(params.runtime.seed)
        net = build_model(
            params.model, params.train, len(prepared.features), "multiclass", len(CLASSES)
        )
        x, y = prepared.xy("train")
        net.fit(
            x, y, validation_data=prepared.xy("val"), epochs=1,
            batch_size=params.train.batch_size, verbose=0,
        )  # fmt: skip
        artifacts.save_model(net, root / "models/model.keras")


def timed(action: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def seconds(action: Callable[[], object]) -> float:
    """``timed`` for an action whose result goes (a frame must not outlive its timing)."""
    return timed(action)[1]


def predict_batch_size(model: TrainedModel) -> int:
    """The batch size model_output gives ``net.predict`` (noted on a 2-row call), so the bare
    run uses the same whatever model_output becomes."""
    net = load_keras_model(model.model_path)
    original, seen = net.predict, list[int | None]()

    def noted(x: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("batch_size", args[0] if args else None))
        return original(x, *args, **kwargs)

    net.predict = noted
    model_output(net, np.zeros((2, len(model.spec.features)), "float32"), model.label)
    return int(seen[0] or 32) if seen else FALLBACK_BATCH_SIZE  # Keras' default is 32


def bare_predict(model_path: Path, features: np.ndarray, batch_size: int) -> float:
    """Seconds of a plain ``model.predict`` on a freshly loaded model (its first call traces
    the predict function, as model_output's does)."""
    import keras

    net = keras.saving.load_model(model_path, compile=False)
    return seconds(lambda: net.predict(features, batch_size=batch_size, verbose=0))


def phases(
    path: Path, model: TrainedModel, out: Path, batch_size: int, flip: bool
) -> dict[str, float]:
    """predict_table's calls then write_predictions, each timed, with no --keep or --proba.
    Beside them: read_rows (read and validate as predict_table calls them: the figure the
    read_table is compared with), and the bare predict on the same encoded rows. ``flip``
    swaps which of each pair goes first."""
    keep: list[str] = []
    s: dict[str, float] = {}
    # The read_rows / read pair first, after an untimed read, each frame dropped after its
    # timing, so both find the same memory: the first 1M-row read of a repeat (or one while
    # another such frame is alive) takes fresh pages from the system, up to 2.5x the time of
    # one that reuses what Arrow's allocator kept; that biased the pair, whichever went first.
    read_table(path, model.data.delimiter)
    pair = {
        "read_rows": lambda: read_rows(path, model, keep),
        "read": lambda: read_table(path, model.data.delimiter),
    }
    for name in reversed(pair) if flip else pair:
        s[name] = seconds(pair[name])
    rows = read_table(path, model.data.delimiter)  # for the phases after it (untimed)
    s["validate"] = seconds(lambda: validate_rows(rows, path, model, keep))
    encoded, s["preprocess"] = timed(lambda: encode_rows(rows, model.spec, str(path)))
    if flip:
        s["bare"] = bare_predict(model.model_path, encoded.features, batch_size)
    net, s["load"] = timed(lambda: load_keras_model(model.model_path))
    output, s["predict"] = timed(lambda: model_output(net, encoded.features, model.label))
    if not flip:
        s["bare"] = bare_predict(model.model_path, encoded.features, batch_size)

    def label() -> pd.DataFrame:
        predicted = predictions(output, model.spec, proba=False)
        return with_kept(predicted, rows.loc[encoded.kept], keep)

    frame, s["label"] = timed(label)
    s["write"] = seconds(lambda: write_predictions(frame, out))
    return s


def command() -> list[str]:
    """The installed `nntune` beside this interpreter, else the same app through -c."""
    script = Path(sys.executable).parent / "nntune"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from nntune.cli import app; app()"]


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory so far (VmHWM, reset at exec: unlike getrusage of
    a child, it does not count the pages of the parent it was forked from)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # it has just ended
        return None
    lines = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return float(lines[0].split()[1]) / 1024 if lines else None  # none once it is a zombie


def whole_command(project: Path, path: Path, out: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MB; read every 20 ms, a peak in the last 20 ms is missed) of
    `nntune predict PATH -o OUT` run in the project."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    peak = 0.0
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(
            [*command(), "predict", str(path), "-o", str(out)],
            cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        while child.poll() is None:
            peak = max(peak, peak_rss_mb(child.pid) or 0.0)
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        if child.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"nntune predict failed:\n{stderr.read().decode()}")
    return seconds, peak


def paired(runs: list[dict[str, float]], ratio: Callable[[dict[str, float]], float]) -> Any:
    """The median of a ratio taken per repeat, and each one."""
    each = [ratio(r) for r in runs]
    return {"median": round(statistics.median(each), 3), "each": [round(v, 3) for v in each]}


def predict_over_bare(run: dict[str, float]) -> float:
    """Speed of model_output over a bare model.predict: > 1 is faster."""
    return run["bare"] / run["predict"]


def summary(rows: int, runs: list[dict[str, float]]) -> dict[str, Any]:
    """Medians, rows/s and the paired ratios of one input format's repeats."""
    timed_alone = (*PHASES, "read_rows", "bare", "whole")
    median = {k: statistics.median(r[k] for r in runs) for k in timed_alone}
    median["sum"] = statistics.median(sum(r[p] for p in PHASES) for r in runs)
    median["whole_minus_sum"] = statistics.median(
        r["whole"] - sum(r[p] for p in PHASES) for r in runs
    )
    return {
        "seconds": {k: round(v, 3) for k, v in median.items()},
        "rows_per_s": {k: round(rows / v) for k, v in median.items() if k != "whole_minus_sum"},
        "predict_speed_over_bare": paired(runs, predict_over_bare),
        "read_rows_over_read": paired(runs, lambda r: r["read_rows"] / r["read"]),
        "read_plus_validate_over_read": paired(runs, lambda r: 1 + r["validate"] / r["read"]),
        "whole_command_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=20_000, help="rows the project trains on")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nntune-bench-predict-") as tmp_name:
        tmp, project = Path(tmp_name), Path(tmp_name, "project")
        table = raw_table(args.rows)
        make_project(project, table, args.sample)
        inputs = {"parquet": tmp / "rows.parquet", "csv": tmp / "rows.csv"}
        features = table.drop(columns=TARGET)
        del table
        features.to_parquet(inputs["parquet"], index=False)
        features.to_csv(inputs["csv"], index=False)
        del features
        model = workspace_model(project, project / "params.yaml")
        batch_size = predict_batch_size(model)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in inputs}
        for repeat in range(args.repeats):
            for name, path in inputs.items():
                out = tmp / f"predicted.{name}"
                run = phases(path, model, out, batch_size, flip=repeat % 2 == 1)
                run["whole"], run["peak_rss_mb"] = whole_command(project, path, out)
                runs[name].append(run)
                shown = ", ".join(f"{k} {v:.2f}" for k, v in run.items())
                print(f"repeat {repeat + 1} {name}: {shown}", file=sys.stderr, flush=True)
        sizes = {name: round(path.stat().st_size / 1e6, 1) for name, path in inputs.items()}
    print(
        json.dumps(
            {
                "rows": args.rows,
                "columns": 50,
                "sample_rows": args.sample,
                "features": len(model.spec.features),
                "batch_size": batch_size,
                "file_mb": sizes,
                "repeats": args.repeats,
                **{name: summary(args.rows, r) for name, r in runs.items()},
                # the predict phase does not depend on the input's format: all pairs
                "predict_speed_over_bare": paired(
                    [r for each in runs.values() for r in each], predict_over_bare
                ),
                "benchmark_peak_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                ),
            }
        )
    )


if __name__ == "__main__":
    main()

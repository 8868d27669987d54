"""Benchmark: the study's baseline as a candidate of the default search (issue 17).

    KERAS_BACKEND=jax .venv/bin/python benchmarks/quality_baseline.py \\
        [--recorded benchmarks/results/quality-six-splits-2026-12-03.jsonl] [--tables ...]

For each table and split seed of a recorded ``quality.py`` run, runs nntune's baseline
(params.yaml as it is) through the same 3-fold CV as ``tabular-tpe-cv`` and prints one JSON
line: the baseline's CV loss, fold sd and test score beside the recorded search's, and
whether the CV chooses the baseline, as ``nntune search`` now does with its
``{study}-baseline`` experiment. The search's trials are not rerun: the baseline is outside
Optuna's sampling, so they are the ones recorded, and the benchmark is deterministic (the
baseline's test score is checked against the recorded ``nntune-baseline`` row).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recorded",
        default=str(quality.ROOT / "benchmarks/results/quality-six-splits-2026-12-03.jsonl"),
    )
    parser.add_argument("--tables", default=",".join(quality.TABLES))
    parser.add_argument("--cv", type=int, default=3)
    args = parser.parse_args()
    recorded = {}
    for line in Path(args.recorded).read_text().splitlines():
        row = json.loads(line)
        if "contender" in row:
            recorded[(row["table"], row["split_seed"], row["contender"])] = row
    pairs = sorted({(t, s) for t, s, c in recorded if c == "tabular-tpe-cv"})
    for table, seed in pairs:
        if table not in args.tables.split(","):
            continue
        frame, task = quality.load_table(table)
        base = quality.base_params(frame, task, 100)
        base["data"]["split_seed"] = seed
        started = time.perf_counter()
        mine = quality.Trials(frame, task, base).cross_validated({}, args.cv)
        search = recorded[(table, seed, "tabular-tpe-cv")]
        row = {
            "table": table,
            "split_seed": seed,
            "baseline_cv_val_loss": mine["val_loss"],
            "baseline_cv_sd": mine["cv_sd"],
            "baseline_test": quality.score(task, mine["test"]),
            "recorded_baseline_test": recorded[(table, seed, "nntune-baseline")]["test"],
            "search_cv_val_loss": search["val_loss"],
            "search_test": search["test"],
            "baseline_chosen": mine["val_loss"] < search["val_loss"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

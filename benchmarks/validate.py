"""Benchmark: the validate stage's work (read + pandera schema + nntune's column checks) on a
1,000,000-row x 50-column CSV, against a plain `pandas.read_csv` of the same file.

    .venv/bin/python benchmarks/validate.py [--rows 1000000] [--repeats 3]

Writes the table to a temp folder, infers its schema once (not timed), then times each side
`--repeats` times in this process and prints the medians and their ratio as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nntune.params import DataParams  # noqa: E402
from nntune.schema import check_data, infer_schema  # noqa: E402


def table(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    columns = {f"x{i}": rng.normal(size=rows).round(4) for i in range(45)}
    columns.update({f"c{i}": rng.choice(["a", "b", "c", "d"], size=rows) for i in range(4)})
    columns["label"] = rng.integers(0, 3, size=rows)
    return pd.DataFrame(columns)


def median_seconds(action: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "wide.csv"
        frame = table(args.rows)
        frame.to_csv(csv, index=False)
        data = DataParams(
            source=str(csv),
            schema=str(Path(tmp) / "wide.schema.yaml"),
            target="label",
            task="multiclass",
            test_fraction=0.2,
            val_fraction=0.2,
            split_seed=0,
        )
        Path(data.schema).write_text(infer_schema(frame, data).to_yaml())
        del frame
        read = median_seconds(lambda: pd.read_csv(csv), args.repeats)
        report = check_data(data)
        assert report.valid, report.failures
        validate = median_seconds(lambda: check_data(data), args.repeats)
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "columns": 50,
                    "csv_mb": round(csv.stat().st_size / 1e6, 1),
                    "read_csv_s": round(read, 2),
                    "validate_s": round(validate, 2),
                    "added_by_validation": f"{(validate - read) / read:.0%}",
                }
            )
        )


if __name__ == "__main__":
    main()

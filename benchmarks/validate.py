"""Benchmark: the validate stage's work (read + pandera schema + nntune's column checks) on a
1,000,000-row x 50-column CSV, against a plain `pandas.read_csv` of the same file.

    .venv/bin/python benchmarks/validate.py [--rows 1000000] [--repeats 7]

Writes the table to a temp folder and infers its schema once (not timed). Then, `--repeats`
times, it times a plain `pandas.read_csv` and right after it the stage's whole job
(`check_data`: the same read plus validation) and, on that frame, validation alone. Pairs
measured back to back keep the machine's drift out of the ratio; it prints medians as JSON.
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

from nntune.config.sections import DataParams  # noqa: E402
from nntune.stage.data import read_table  # noqa: E402
from nntune.stage.schema import check_data, infer_schema, load_schema, validate_table  # noqa: E402


def table(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    columns = {f"x{i}": rng.normal(size=rows).round(4) for i in range(45)}
    columns.update({f"c{i}": rng.choice(["a", "b", "c", "d"], size=rows) for i in range(4)})
    columns["label"] = rng.integers(0, 3, size=rows)
    return pd.DataFrame(columns)


def seconds(action: object) -> float:
    started = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
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
        assert check_data(data).valid
        schema = load_schema(data.schema)
        reads, stages, alone = [], [], []
        for _ in range(args.repeats):
            reads.append(seconds(lambda: pd.read_csv(csv)))
            stages.append(seconds(lambda: check_data(data)))
            table_read = read_table(csv)
            started = time.perf_counter()
            validate_table(table_read, schema, data, data.schema)
            alone.append(time.perf_counter() - started)
            del table_read
        added = [(stage - read) / read for read, stage in zip(reads, stages, strict=True)]
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "columns": 50,
                    "csv_mb": round(csv.stat().st_size / 1e6, 1),
                    "repeats": args.repeats,
                    "read_csv_s": round(statistics.median(reads), 2),
                    "check_data_s": round(statistics.median(stages), 2),
                    "validation_alone_s": round(statistics.median(alone), 2),
                    "added_by_validation_paired": f"{statistics.median(added):.0%}",
                    "validation_alone_over_read": (
                        f"{statistics.median(alone) / statistics.median(reads):.0%}"
                    ),
                }
            )
        )


if __name__ == "__main__":
    main()

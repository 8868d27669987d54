"""Benchmark: peak memory (RSS) of each stage of a trial, on digits and on a
1,000,000-row x 50-column table.

    .venv/bin/python benchmarks/memory.py [--rows 1000000]

For each table it makes a project with `nntune init`, sets ``train.max_epochs`` (digits: 50
with patience 5, as in benchmarks/grid.py; the big table: 1 epoch, which is enough for the
peak) and runs `dvc repro` with ``NNTUNE_PROFILE`` set: every stage process records its peak
resident memory (``getrusage``). Prints one JSON line per table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import BIN, ROOT, sh
from validate import table as wide_table


def profile_repro(tmp: Path, name: str, data: Path, target: str, epochs: int) -> dict[str, object]:
    sh(tmp, str(BIN / "nntune"), "init", name, "--data", str(data), "--target", target)
    project = tmp / name
    params = project / "params.yaml"
    text = re.sub(r"^(  max_epochs: )\d+", rf"\g<1>{epochs}", params.read_text(), flags=re.M)
    text = re.sub(r"^(    patience: )\d+", r"\g<1>5", text, flags=re.M)
    params.write_text(text)
    profile = tmp / f"{name}.jsonl"
    os.environ["NNTUNE_PROFILE"] = str(profile)
    try:
        started = time.perf_counter()
        sh(project, "dvc", "repro")
        wall = time.perf_counter() - started
    finally:
        os.environ.pop("NNTUNE_PROFILE")
    records = [json.loads(line) for line in profile.read_text().splitlines()]
    return {
        "table": name,
        "csv_mb": round(data.stat().st_size / 1e6, 1),
        "epochs": epochs,
        "repro_s": round(wall, 1),
        "peak_rss_mb": {r["stage"]: r["max_rss_mb"] for r in records},
        "seconds": {r["stage"]: round(r["main_end"] - r["process_start"], 1) for r in records},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print(json.dumps(profile_repro(tmp, "digits", ROOT / "data/digits.csv", "target", 50)))
        wide = tmp / "wide.csv"
        wide_table(args.rows).to_csv(wide, index=False)
        print(json.dumps(profile_repro(tmp, "wide", wide, "label", 1)), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: does one worker of nntune's executor grow over 100 trials?

    .venv/bin/python benchmarks/worker_memory.py [--trials 100]

Makes the project of benchmarks/grid.py (nntune init on digits) with one epoch per trial
(the worker's memory is DVC's and git's bookkeeping, not the fit, which runs in the
stages' own processes), queues TRIALS distinct trials (``model.units`` 20, 21, ...) and
runs them with ``nntune run -j 1`` and ``NNTUNE_WORKER_TRIALS=TRIALS``, so that one worker
runs them all, and with ``NNTUNE_WARM_RESIDENT_JOBS`` high enough that one resident child of
the warm runner runs every train stage (``--resident-jobs N``: a fresh child every N
stages, as the runner's default does). The train stage's peak RSS after each trial comes
from ``NNTUNE_PROFILE`` (that of the child that ran it).
Every trial's record (``.dvc/tmp/nntune/done/``) holds the worker's peak resident memory
after that trial (``getrusage``) and the trial's number in the worker's
life. Prints one JSON line: the peak after trials 1, 10, 25, 50, 75 and the last, the
ratio last / 10th (the issue's target: at most 1.10), and the wall time.
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
from grid import BIN, make_project, sh


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument(
        "--resident-jobs",
        type=int,
        help="stages per resident child of the warm runner (default: all, so one child runs "
        "every train stage)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nntune-worker-mem-") as tmp:
        project = make_project(Path(tmp))
        params = project / "params.yaml"
        text = re.sub(r"^(  max_epochs: )\d+", r"\g<1>1", params.read_text(), flags=re.M)
        params.write_text(text)
        sh(project, "dvc", "repro")
        sh(project, "git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
           "commit", "-qam", "one epoch")  # fmt: skip
        space = Path(tmp) / "units.yaml"
        space.write_text(f"model.units: {json.dumps(list(range(20, 20 + args.trials)))}\n")
        sh(project, str(BIN / "nntune"), "grid", "--space", str(space))
        os.environ["NNTUNE_WORKER_TRIALS"] = str(args.trials)
        # One resident child of the warm runner per server runs every stage it is handed.
        os.environ["NNTUNE_WARM_RESIDENT_JOBS"] = str(args.resident_jobs or 4 * args.trials)
        profile = Path(tmp) / "profile.jsonl"
        os.environ["NNTUNE_PROFILE"] = str(profile)
        started = time.perf_counter()
        sh(project, str(BIN / "nntune"), "run", "--jobs", "1")
        wall = time.perf_counter() - started
        records = [
            json.loads(p.read_text())
            for p in (project / ".dvc" / "tmp" / "nntune" / "done").glob("*.json")
        ]
        stages = [json.loads(line) for line in profile.read_text().splitlines()]
    children = {}  # the peak RSS of each resident child after its Nth train stage
    train = []  # the peak RSS of the child that ran the Nth trial's train stage, after it
    for stage in sorted(stages, key=lambda line: line["main_end"]):
        if stage["stage"] == "train" and stage["warm"]:
            children.setdefault(stage["pid"], []).append(stage["max_rss_mb"])
            train.append(stage["max_rss_mb"])
    ok = [r for r in records if r["ok"]]
    workers = {r["worker"] for r in records}
    peak = {r["worker_trial"]: r["worker_peak_rss_mb"] for r in records}
    last = max(peak)
    marks = sorted({1, 10, 25, 50, 75, last} & set(peak))
    print(json.dumps({
        "trials": len(records),
        "succeeded": len(ok),
        "workers": len(workers),
        "peak_rss_mb_after_trial": {str(n): peak[n] for n in marks},
        "ratio_last_to_10th": round(peak[last] / peak[10], 3) if 10 in peak else None,
        "train_children": len(children),
        "train_child_peak_rss_mb_after_trial": {
            str(n): train[n - 1] for n in sorted({1, 10, 25, 50, 75, len(train)}) if n <= len(train)
        },
        "train_child_ratio_last_to_10th": (
            round(train[-1] / train[9], 3) if len(train) >= 10 else None
        ),
        "wall_s": round(wall, 1),
        "per_trial_s": round(wall / max(1, len(records)), 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()

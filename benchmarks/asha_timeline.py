"""Benchmark aid: where one ASHA study's time goes, per worker (issue 21).

    .venv/bin/python benchmarks/asha_timeline.py DIR [SEED]

Runs benchmarks/asha.py's study (seed SEED, 16 trials, rungs 3 / 9 / 27 epochs, ``-j 2``) in
a project kept under DIR (made with grid.py's ``make_project`` on the first call), then reads
nntune's executor records (``.dvc/tmp/nntune/done``) and prints one line per experiment:
its worker, when it started and ended (seconds after the search started), the idle gap
before it on its worker, and the executor's split (``prepare``: the worktree checkout,
``reproduce``: the stages, ``commit``: the experiment commit).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import BIN, make_project, sh


def main() -> None:
    tmp = Path(sys.argv[1])
    tmp.mkdir(parents=True, exist_ok=True)
    project = tmp / "proj-tensorflow"
    if not project.exists():
        make_project(tmp)
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    study = f"asha_s{seed}"
    started = time.time()
    sh(project, str(BIN / "nntune"), "search", "--method", "asha", "--study", study,
       "-n", "16", "--min-epochs", "3", "--max-epochs", "27", "--eta", "3",
       "--seed", str(seed), "-j", "2", "--space", str(tmp / "space.yaml"))  # fmt: skip
    print(f"search wall {time.time() - started:.1f} s")
    found = []
    for path in (project / ".dvc/tmp/nntune/done").glob("*.json"):
        record = json.loads(path.read_text())
        if record["name"].startswith(study):
            end = path.stat().st_mtime - started
            found.append((record["worker"], end - record["seconds"]["total"], end, record))
    last: dict[int, float] = {}
    for worker, start, end, record in sorted(found, key=lambda f: (f[0], f[1])):
        gap = start - last.get(worker, 0.0)
        last[worker] = end
        split = " ".join(f"{k} {v:.2f}" for k, v in record["seconds"].items())
        print(
            f"w{worker} {record['name']:22s} start {start:6.1f} end {end:6.1f} "
            f"gap {gap:5.1f} {split}"
        )


if __name__ == "__main__":
    main()

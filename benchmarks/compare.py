"""Benchmark: `nntune compare` against `dvc exp show --json` on repos with 50 and 200
experiments.

    .venv/bin/python benchmarks/compare.py [--sizes 50 200] [--repeats 3]

Builds the project of benchmarks/grid.py, then records experiments without training them:
for each one it writes a distinct params point (learning rate, units) and metrics files of
the real pipeline's shape into the workspace and saves them with DVC's own `dvc exp save`
(the API call, one process), so every experiment is a real git ref with params and metrics,
exactly what both commands read. Times each command (fresh processes) `--repeats` times
per size, alternating, and prints the medians and their ratio as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import BIN, ROOT, make_project, sh

sys.path.insert(0, str(ROOT / "src"))


def record_experiments(project: Path, start: int, stop: int) -> None:
    import yaml

    from nntune.experiments import open_repo

    params_path = project / "params.yaml"
    original = params_path.read_text()
    rng = random.Random(start)
    train = json.loads((project / "metrics/train.json").read_text())
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    here = Path.cwd()
    os.chdir(project)  # DVC resolves the workspace's files from the working directory
    try:
        with open_repo(project) as repo:
            for i in range(start, stop):
                raw = yaml.safe_load(original)
                raw["train"]["learning_rate"] = round(10 ** rng.uniform(-4, -1), 6)
                raw["model"]["units"] = rng.choice([50, 64, 100, 128, 200])
                params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
                loss = rng.uniform(0.05, 0.5)
                (project / "metrics/train.json").write_text(
                    json.dumps({**train, "val_loss": loss, "val_accuracy": 1 - loss / 3})
                )
                accuracy = rng.uniform(0.85, 0.99)
                (project / "metrics/evaluate.json").write_text(
                    json.dumps({**evaluation, "test_accuracy": accuracy})
                )
                repo.experiments.save(name=f"rec-{i:03d}", force=True)
    finally:
        os.chdir(here)
        params_path.write_text(original)
        sh(project, "git", "checkout", "--", "metrics")


def seconds(project: Path, *cmd: str) -> float:
    started = time.perf_counter()
    sh(project, *cmd)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        project = make_project(Path(tmp_name))
        have = 0
        for size in sorted(args.sizes):
            started = time.perf_counter()
            record_experiments(project, have, size)
            recording = time.perf_counter() - started
            have = size
            listed = json.loads(sh(project, str(BIN / "nntune"), "compare", "--format", "json"))
            assert len(listed["experiments"]) == size, len(listed["experiments"])
            compare, show = [], []
            for _ in range(args.repeats):
                compare.append(seconds(project, str(BIN / "nntune"), "compare", "-f", "json"))
                show.append(seconds(project, "dvc", "exp", "show", "--json"))
            c, s = statistics.median(compare), statistics.median(show)
            print(
                json.dumps(
                    {
                        "experiments": size,
                        "recording_s": round(recording, 1),
                        "nntune_compare_s": round(c, 2),
                        "dvc_exp_show_json_s": round(s, 2),
                        "ratio": round(c / s, 2),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()

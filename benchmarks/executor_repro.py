"""Benchmark: the executor's DVC side per trial, DVC's own ``repro_fn`` against nntune's
``DeferredLockRepro`` (dvc.lock written once per trial, stage files listed once), paired.

    .venv/bin/python benchmarks/executor_repro.py [--trials 5] [--rounds 3]
        [--variants dvc deferred lean nntune]

Makes a project with `nntune init` on digits (one epoch per trial, baseline reproduced and
committed), then, for each round and each variant in turn, queues TRIALS trials
(``model.units`` 40, 41, ...) and runs them one by one in this process with the executor's
``run_entry`` in a worker worktree, as a worker does. Stages run as plain processes (no warm
runner): their time is measured around each stage process (``Popen.communicate``) and
subtracted, so what is left is DVC's side of a trial: checkout, reproduce's bookkeeping
(index builds, dvc.lock reads and writes, hashing, cache), the commit and the ref. ``dvc``
swaps in DVC's ``BaseExecutor._repro_and_track`` (one dvc.lock rewrite and one index
build per stage that runs); ``deferred`` is the executor without ``lean_bookkeeping``
(DVC's stage locks and a YAML parse per load, as before it); ``lean`` is the executor
without ``one_index`` (the checkout's index dropped before the reproduce); ``nntune`` is the
executor as it is. Prints one JSON line per (round, variant) with each trial's figures and
the median, then the medians of the medians and the paired ratios (the median over rounds
of each round's ratio).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import BIN, ROOT, sh

sys.path.insert(0, str(ROOT / "src"))
from nntune.executor import runner
from nntune.executor.worktrees import ensure_worktree
from nntune.experiments import dvc_internals
from nntune.experiments.repo import open_repo

STAGE_WAIT = [0.0]  # seconds inside stage processes during the current trial


def _timed_communicate() -> None:
    original = subprocess.Popen.communicate

    def communicate(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            STAGE_WAIT[0] += time.perf_counter() - started

    subprocess.Popen.communicate = communicate  # type: ignore[method-assign]


class DvcsReproFn:
    """DVC's own repro_fn, with the executor's flush interface (nothing is deferred)."""

    def __call__(self, stage: Any, **kwargs: Any) -> Any:
        from dvc.repo.experiments.executor.base import BaseExecutor

        return BaseExecutor._repro_and_track(stage, **kwargs)

    def flush(self) -> list[str]:
        return ["dvc.lock"]  # already written and staged per stage


def make_project(tmp: Path) -> Path:
    sh(tmp, str(BIN / "nntune"), "init", "proj", "--data", str(ROOT / "data/digits.csv"),
       "--target", "target")  # fmt: skip
    project = tmp / "proj"
    params = project / "params.yaml"
    params.write_text(re.sub(r"^(  max_epochs: )\d+", r"\g<1>1", params.read_text(), flags=re.M))
    sh(project, "dvc", "repro")
    sh(project, "git", "add", "-A")
    sh(project, "git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
       "commit", "-qm", "baseline")  # fmt: skip
    return project


def run_round(project: Path, variant: str, trials: int) -> dict[str, Any]:
    sh(project, "dvc", "queue", "remove", "--all")
    sh(project, "dvc", "exp", "remove", "--all-commits")
    shutil.rmtree(project / ".dvc" / "cache" / "runs", ignore_errors=True)
    for i in range(trials):
        sh(project, "dvc", "exp", "run", "--queue", "-S", f"model.units={40 + i}", "-n", f"t{i}")
    original = dvc_internals.DeferredLockRepro
    lean, one = dvc_internals.lean_bookkeeping, dvc_internals.one_index
    if variant == "dvc":
        dvc_internals.DeferredLockRepro = DvcsReproFn  # type: ignore[misc,assignment]
    if variant in ("dvc", "deferred"):
        dvc_internals.lean_bookkeeping = contextlib.nullcontext  # type: ignore[assignment]
    if variant in ("dvc", "deferred", "lean"):
        dvc_internals.one_index = lambda dvc: contextlib.nullcontext()  # type: ignore[assignment]
    figures = []
    try:
        with open_repo(project) as repo:
            worktree = ensure_worktree(project, 1, repo.cache.local_cache_dir)
            for entry in list(repo.experiments.celery_queue.iter_queued()):
                STAGE_WAIT[0] = 0.0
                started = time.perf_counter()
                outcome = runner.run_entry(worktree, "", entry)
                total = time.perf_counter() - started
                dvc_internals.take_off_queue(repo.experiments.celery_queue, entry)
                figures.append({
                    "total_s": round(total, 2),
                    "stages_s": round(STAGE_WAIT[0], 2),
                    "dvc_s": round(total - STAGE_WAIT[0], 2),
                    **{f"{k}_s": round(v, 2) for k, v in outcome.seconds.items()},
                })  # fmt: skip
    finally:
        dvc_internals.DeferredLockRepro = original  # type: ignore[misc]
        dvc_internals.lean_bookkeeping, dvc_internals.one_index = lean, one
    return {
        "variant": variant,
        "trials": figures,
        "dvc_s_median": round(statistics.median(f["dvc_s"] for f in figures), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["dvc", "nntune"],
        choices=["dvc", "deferred", "lean", "nntune"],
    )
    args = parser.parse_args()
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    _timed_communicate()
    medians: dict[str, list[float]] = {variant: [] for variant in args.variants}
    with tempfile.TemporaryDirectory(prefix="nntune-exec-repro-") as tmp:
        project = make_project(Path(tmp))
        os.chdir(project)
        for r in range(args.rounds):
            for variant in args.variants:
                row = {"round": r, **run_round(project, variant, args.trials)}
                medians[variant].append(row["dvc_s_median"])
                print(json.dumps(row), flush=True)
    summary = {v: round(statistics.median(m), 2) for v, m in medians.items()}
    ratios = {  # paired: each round's medians, then the median of the ratios
        f"{v}_over_{base}": round(
            statistics.median(a / b for a, b in zip(medians[v], medians[base], strict=True)), 2
        )
        for base in ("dvc", "deferred", "lean")
        for v in ("deferred", "lean", "nntune")
        if v in medians and base in medians
        if args.variants.index(v) > args.variants.index(base)
    }
    print(json.dumps({"dvc_side_s_median": summary, **ratios}))


if __name__ == "__main__":
    main()

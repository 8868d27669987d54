"""Benchmark: where a trial's time goes when nntune runs a grid as DVC experiments.

    .venv/bin/python benchmarks/overhead.py [--jobs 1] [--repeats 1] [--modes own dvc]

Builds the project of benchmarks/grid.py (nntune init on digits, 50 epochs, patience 5,
baseline reproduced, untimed), queues its 16 points and runs them with `nntune run -j JOBS`
side by side in each of the chosen modes, the queue, the experiments and DVC's run cache
emptied before each: ``own`` (nntune's executor, the default; stages forked from the warm
runner), ``dvc`` (``--executor dvc``: DVC's celery workers, warm runner), ``own-cold`` and
``dvc-cold`` (``--cold``: every stage a fresh Python), ``own-fresh`` (the warm runner
forks a fresh child for every stage: ``NNTUNE_WARM_RESIDENT_JOBS=1``, no resident
children). Each runs with
``NNTUNE_PROFILE`` set, so every stage process records when it started, when its
``main`` started (the difference is interpreter start plus imports) and when it ended. With
``-j 1`` trials run one after another, so the wall time per trial is total / 16, and what
no stage process accounts for is DVC's own work (temp workspace, checkout, git commit of the
experiment, queue). The train stage's pure ``fit`` time comes from each experiment's
``reports/train_run.json``. Model save and load are timed in this process on a model of the
same shape. Prints one JSON object of medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import BIN, ROOT, SPACE, make_project, sh


def run_profiled(project: Path, space: Path, jobs: int, profile: Path, mode: str) -> float:
    import os

    sh(project, "dvc", "queue", "remove", "--all")
    sh(project, "dvc", "exp", "remove", "--all-commits")
    shutil.rmtree(project / ".dvc" / "cache" / "runs", ignore_errors=True)
    shutil.rmtree(project / ".dvc" / "tmp" / "nntune" / "done", ignore_errors=True)
    sh(project, str(BIN / "nntune"), "grid", "--space", str(space))
    os.environ["NNTUNE_PROFILE"] = str(profile)  # workers inherit it, stages write to it
    executor, _, variant = mode.partition("-")
    cold = variant == "cold"
    flags = ["--executor", "nntune" if executor == "own" else "dvc", "--cold" if cold else "--warm"]
    if variant == "fresh":  # the warm runner forks a fresh child for every stage
        os.environ["NNTUNE_WARM_RESIDENT_JOBS"] = "1"
    try:
        started = time.perf_counter()
        sh(project, str(BIN / "nntune"), "run", "--jobs", str(jobs), *flags)
        return time.perf_counter() - started
    finally:
        os.environ.pop("NNTUNE_PROFILE")
        os.environ.pop("NNTUNE_WARM_RESIDENT_JOBS", None)


def save_load_seconds(project: Path, tmp: Path) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "src"))
    import keras

    from nntune.config.params import load_params
    from nntune.stage.data import read_prepared
    from nntune.stage.model import build_model

    params = load_params(project / "params.yaml")
    data = read_prepared(project / "data" / "prepared", splits=("train",))
    net = build_model(params.model, params.train, len(data.features), data.task, 10)
    x, y = data.xy("train")
    net.fit(x, y, epochs=1, verbose=0)
    saves, loads = [], []
    for i in range(5):
        path = tmp / f"m{i}.keras"
        started = time.perf_counter()
        net.save(path)
        saves.append(time.perf_counter() - started)
        started = time.perf_counter()
        keras.saving.load_model(path)
        loads.append(time.perf_counter() - started)
    return {"model_save_s": statistics.median(saves), "model_load_s": statistics.median(loads)}


def summarise(
    records: list[dict[str, Any]], fits: dict[str, float], wall: float, jobs: int, mode: str
) -> dict[str, Any]:
    """Medians per trial; ``fits`` maps each experiment's name to its `fit` seconds."""
    # The train stage's work beyond `fit`, paired within each trial (a difference of the
    # two medians mixes trials of different lengths).
    beyond_fit = [
        r["main_end"] - r["main_start"] - fits[r["trial"]]
        for r in records
        if r["stage"] == "train" and r.get("trial") in fits
    ]
    by_stage: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_trial_in_stages: dict[str, float] = defaultdict(float)
    for r in records:
        by_stage[r["stage"]]["start_and_imports_s"].append(r["main_start"] - r["process_start"])
        by_stage[r["stage"]]["main_s"].append(r["main_end"] - r["main_start"])
        per_trial_in_stages[r.get("trial") or r["workspace"]] += r["main_end"] - r["process_start"]
    trials = len(fits)
    per_trial = wall / trials
    in_stages = statistics.median(per_trial_in_stages.values())
    fit = statistics.median(fits.values())
    return {
        "mode": mode,
        "jobs": jobs,
        "trials": trials,
        "wall_s": round(wall, 1),
        "per_trial_wall_s": round(per_trial, 2),
        "fit_s_median": round(fit, 2),
        "overhead_per_trial_s": round(per_trial - fit, 2),
        "stages_per_trial_s": round(in_stages, 2),
        "dvc_and_queue_per_trial_s": round(per_trial - in_stages, 2),
        "train_main_beyond_fit_s": round(statistics.median(beyond_fit), 2) if beyond_fit else None,
        "forked_stages": sorted({r["stage"] for r in records if r.get("warm")}),
        "stages": {
            stage: {name: round(statistics.median(values), 2) for name, values in parts.items()}
            for stage, parts in by_stage.items()
        },
    }


def executor_split(project: Path) -> dict[str, float]:
    """Medians over the trials of nntune's executor's own timing of each: the worktree put
    at the snapshot (prepare), DVC's reproduce (stages included), the commit and ref."""
    records = [
        json.loads(p.read_text())["seconds"]
        for p in (project / ".dvc" / "tmp" / "nntune" / "done").glob("*.json")
    ]
    keys = sorted({key for r in records for key in r})
    split = {k: round(statistics.median(r[k] for r in records if k in r), 2) for k in keys}
    split["sum_total"] = round(sum(r.get("total", 0.0) for r in records), 2)  # all trials
    split["max_total"] = round(max((r.get("total", 0.0) for r in records), default=0.0), 2)
    return split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["own", "dvc"],
        choices=["own", "dvc", "own-cold", "dvc-cold", "own-fresh"],
    )
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        project = make_project(tmp)
        sys.path.insert(0, str(ROOT / "src"))
        from nntune.experiments import list_experiments

        for repeat in range(args.repeats):
            # Side by side: each repeat runs every mode, in the other order every other repeat
            # (the machine's speed drifts within minutes).
            for mode in args.modes if repeat % 2 == 0 else args.modes[::-1]:
                profile = tmp / f"profile-{mode}-{repeat}.jsonl"
                wall = run_profiled(project, tmp / "space.yaml", args.jobs, profile, mode)
                records = [json.loads(line) for line in profile.read_text().splitlines()]
                done = [e for e in list_experiments(project, list(SPACE)) if e.succeeded]
                fits = {e.name: float(e.metrics["train_seconds"]) for e in done}
                row = summarise(records, fits, wall, args.jobs, mode)
                row["repeat"] = repeat
                if mode.startswith("own"):
                    row["executor_split_s"] = split = executor_split(project)
                    # What no trial accounts for: `nntune run`'s start (its warm runner's
                    # imports overlap the first trial) and end, and the queue between trials.
                    row["outside_trials_s"] = round(wall - split["sum_total"] / args.jobs, 2)
                print(json.dumps(row), flush=True)
                runs[mode].append(row)
        extra = save_load_seconds(project, tmp)
    keys = ("per_trial_wall_s", "fit_s_median", "overhead_per_trial_s", "dvc_and_queue_per_trial_s")
    summary: dict[str, Any] = {
        mode: {key: statistics.median(r[key] for r in rows) for key in keys}
        for mode, rows in runs.items()
    }
    for mode in runs:
        if mode != "dvc" and "dvc" in runs:
            ratios = [
                w["overhead_per_trial_s"] / c["overhead_per_trial_s"]
                for w, c in zip(runs[mode], runs["dvc"], strict=True)
            ]
            summary[f"{mode}_over_dvc_overhead"] = round(statistics.median(ratios), 3)
    summary.update({k: round(v, 3) for k, v in extra.items()})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

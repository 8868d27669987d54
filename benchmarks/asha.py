"""Benchmark: successive halving (`nntune search --method asha`) against the full grid over
the same space, on digits, every trial a DVC experiment in both.

    .venv/bin/python benchmarks/asha.py [--seeds 0 1 2] [--trials 16] [--jobs 2]
                                        [--backend jax] [--table counts4 --rows 20000]

The space is benchmarks/grid.py's 16 points: hidden_layers {1, 2} x units {64, 128} x
learning_rate {0.001, 0.01} x batch_size {32, 64}, Adam. A temp project is made with
`nntune init` on data/digits.csv and its baseline reproduced (not timed); with
``--backend jax`` its params.yaml says ``runtime.backend: jax`` (grid.py's JAX project).
``--table counts4`` uses quality.py's generated 4-class table of heavy-tailed counts
(``--rows`` rows, missing values imputed, its id column excluded by `nntune init`) instead,
where an epoch costs more.

- grid: `nntune grid` + `nntune run -j JOBS`, each point trained up to 50 epochs with early
  stopping (patience 5, restore-best), the issue-7 budget. Run once: it has no sampler.
- asha: per seed, `nntune search --method asha -n TRIALS --min-epochs 3 --max-epochs 27
  --eta 3 --seed SEED -j JOBS` (rungs 3, 9, 27 epochs; promoted trials continue their model),
  DVC's run cache cleared first so no rung is restored instead of trained.

Epochs spent are the epochs each experiment trained (``epochs_run``: a promoted experiment
counts only its own). The best trial of each is the lowest val_loss (asha: among trials that
reached the last rung); its val and test accuracy are reported. One JSON line per run, then
the medians over seeds and the ratios asha / grid.

Last, the two runs' costs are split with a linear model, core-seconds = jobs x wall =
experiments x o + epochs x e, solved for o (what an experiment costs beyond its epochs: a
new model's tracing or compilation, the stages' starts, DVC) and e (an epoch, its
validation included). ASHA's wall time is at most 0.5x the grid's exactly when
o <= e x (grid epochs / 2 - asha epochs) / (asha experiments - grid experiments / 2).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import BIN, JAX_CACHE, ROOT, SPACE, make_project, sh

TABLES = ("digits", "counts4")


def rows(project: Path, prefix: str | None) -> list[Any]:
    sys.path.insert(0, str(ROOT / "src"))
    from nntune.experiments import list_experiments

    found = [e for e in list_experiments(project, list(SPACE)) if e.succeeded]
    if prefix is None:
        return [e for e in found if "-t" not in e.name]
    return [e for e in found if e.name.startswith(f"{prefix}-t")]


def summary(kind: str, seconds: float, found: list[Any], best_pool: list[Any]) -> dict[str, Any]:
    best = min(best_pool, key=lambda e: float(e.metrics["val_loss"]))
    epochs = sum(int(e.metrics.get("epochs_run", e.metrics["epochs_trained"])) for e in found)
    return {
        "contender": kind,
        "seconds": round(seconds, 1),
        "experiments": len(found),
        "epochs": epochs,
        "best": best.name,
        "best_val_accuracy": round(float(best.metrics["val_accuracy"]), 4),
        "best_test_accuracy": round(float(best.metrics["test_accuracy"]), 4),
    }


def run_grid(project: Path, space: Path, jobs: int) -> dict[str, Any]:
    shutil.rmtree(project / ".dvc" / "cache" / "runs", ignore_errors=True)
    started = time.perf_counter()
    sh(project, str(BIN / "nntune"), "grid", "--space", str(space))
    sh(project, str(BIN / "nntune"), "run", "--jobs", str(jobs))
    found = rows(project, None)
    return summary("grid", time.perf_counter() - started, found, found)


def run_asha(project: Path, space: Path, jobs: int, seed: int, trials: int) -> dict[str, Any]:
    shutil.rmtree(project / ".dvc" / "cache" / "runs", ignore_errors=True)
    study = f"asha_s{seed}"
    started = time.perf_counter()
    sh(project, str(BIN / "nntune"), "search", "--method", "asha", "--study", study,
       "-n", str(trials), "--min-epochs", "3", "--max-epochs", "27", "--eta", "3",
       "--seed", str(seed), "-j", str(jobs), "--space", str(space))  # fmt: skip
    seconds = time.perf_counter() - started
    found = rows(project, study)
    top = [e for e in found if e.name.endswith("-e27")]
    result = summary("asha", seconds, found, top)
    result["seed"] = seed
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--backend", choices=["tensorflow", "jax"], default="tensorflow")
    parser.add_argument("--table", choices=TABLES, default="digits")
    parser.add_argument("--rows", type=int, default=20000, help="rows of --table counts4")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nntune-asha-") as name:
        tmp = Path(name)
        project = make_project(tmp, args.backend, table(args.table, args.rows, tmp))
        # On JAX, each run starts with an empty compilation cache of its own: none reuses
        # what another compiled.
        JAX_CACHE["JAX_COMPILATION_CACHE_DIR"] = str(tmp / "jax-cache-grid")
        grid = run_grid(project, tmp / "space.yaml", args.jobs)
        print(json.dumps(grid), flush=True)
        ashas = []
        for seed in args.seeds:
            JAX_CACHE["JAX_COMPILATION_CACHE_DIR"] = str(tmp / f"jax-cache-asha-{seed}")
            ashas.append(run_asha(project, tmp / "space.yaml", args.jobs, seed, args.trials))
            print(json.dumps(ashas[-1]), flush=True)
    medians = {
        key: statistics.median(a[key] for a in ashas)
        for key in ("seconds", "epochs", "best_val_accuracy", "best_test_accuracy")
    }
    split = cost_split(grid, ashas, args.jobs)
    print(json.dumps({"asha_median": medians, "grid": grid, "cost_split": split}))
    print(
        f"epochs asha/grid {medians['epochs'] / grid['epochs']:.3f}, "
        f"wall {medians['seconds'] / grid['seconds']:.3f}, "
        f"best test accuracy asha {medians['best_test_accuracy']:.4f} "
        f"vs grid {grid['best_test_accuracy']:.4f} "
        f"({100 * (medians['best_test_accuracy'] - grid['best_test_accuracy']):+.2f} points)"
    )
    print(
        f"per experiment o = {split['experiment_core_s']:.2f} core-s, per epoch "
        f"e = {split['epoch_core_s']:.3f} core-s: "
        + (
            f"0.5x needs o <= {split['o_for_half']:.2f} core-s "
            f"({split['o_for_half_in_epochs']:.1f} epochs)"
            if split["o_for_half"] > 0
            else "0.5x is out of reach at any o (ASHA trains over half the grid's epochs)"
        )
    )


def table(kind: str, rows: int, tmp: Path) -> Path | None:
    """The table's file: None for digits (the project's own), else counts4 as Parquet."""
    if kind == "digits":
        return None
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import counts4

    path = tmp / f"counts4-{rows}.parquet"
    counts4(rows=rows).to_parquet(path, index=False)
    return path


def cost_split(grid: dict[str, Any], ashas: list[dict[str, Any]], jobs: int) -> dict[str, float]:
    """o and e of the module's docstring: the grid and the median ASHA run's core-seconds
    (jobs x wall) as experiments x o + epochs x e, two equations in two unknowns."""
    asha = sorted(ashas, key=lambda a: a["seconds"])[len(ashas) // 2]
    (n1, k1, c1), (n2, k2, c2) = (
        (run["experiments"], run["epochs"], jobs * run["seconds"]) for run in (grid, asha)
    )
    determinant = n1 * k2 - n2 * k1
    o = (c1 * k2 - c2 * k1) / determinant
    e = (n1 * c2 - n2 * c1) / determinant
    half = e * (k1 / 2 - k2) / (n2 - n1 / 2)
    return {
        "experiment_core_s": round(o, 3),
        "epoch_core_s": round(e, 4),
        "o_for_half": round(half, 3),
        "o_for_half_in_epochs": round(half / e, 2),
    }


if __name__ == "__main__":
    main()

"""Benchmark: the same trials on a 2-node Ray cluster (one machine, 1 CPU per node, inside
a loopback-only network namespace) against `nntune run -j 2` on DVC's local queue.

    .venv/bin/python benchmarks/scaleout.py [--repeats 3]     (as root: it uses unshare)

A temp project is made with `nntune init` on data/digits.csv (50 epochs, patience 5), its
baseline reproduced, committed and pushed to a bare git remote and a local-folder DVC remote
(not timed). The trials: hidden_layers {1, 2} x units {64, 128} x batch_size {32, 64},
learning rate 0.01 (8 points). Each repeat, for each backend, starts from no experiments,
an empty DVC run cache (local and on the Ray nodes) and, for Ray, a git remote without
experiment refs and a new clone cache, so nothing is restored instead of trained.

- local: `nntune grid` + `nntune run -j 2` wall time.
- ray: `nntune grid` + `nntune run --backend ray` wall time (the cluster's start, about
  6 s, is reported apart), with the per-trial phases the driver prints (clone, dvc pull,
  dvc exp run, dvc exp push, medians). Each Ray worker keeps a warm runner for its trials'
  stages.
- ray-cold: the same with `--cold`: every stage of every trial starts a fresh Python.

`--only` picks contenders (default all three); each repeat runs them in turn.

Per-trial overhead = wall x 2 workers / trials - median `train_seconds` (the pure fit).
"""

from __future__ import annotations

import argparse
import json
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
from grid import BIN, ROOT, env, make_project, sh

SPACE = {
    "model.hidden_layers": [1, 2],
    "model.units": [64, 128],
    "train.batch_size": [32, 64],
    "train.learning_rate": [0.01],
}
SCENARIO = ROOT / "tests" / "ray_cluster.py"
CONTENDERS = ("local", "ray", "ray-cold")


def share(tmp: Path, project: Path) -> Path:
    remote = tmp / "remote.git"
    sh(tmp, "git", "init", "--quiet", "--bare", "-b", "main", str(remote))
    sh(project, str(BIN / "nntune"), "remote", "setup", str(remote), str(tmp / "dvc-store"))
    sh(project, "git", "add", "-A")
    sh(project, "git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
       "commit", "-qm", "remotes")  # fmt: skip
    sh(project, "git", "push", "--quiet", "-u", "origin", "HEAD")
    sh(project, "dvc", "push", "--quiet")
    return remote


def reset(project: Path, remote: Path) -> None:
    sh(project, "dvc", "queue", "remove", "--all")
    sh(project, "dvc", "exp", "remove", "--all-commits")
    shutil.rmtree(project / ".dvc" / "cache" / "runs", ignore_errors=True)
    refs = sh(remote, "git", "for-each-ref", "--format=delete %(refname)", "refs/exps")
    subprocess.run(["git", "update-ref", "--stdin"], cwd=remote, input=refs, text=True, check=True)


def fit_seconds(project: Path) -> tuple[int, float]:
    sys.path.insert(0, str(ROOT / "src"))
    from nntune.experiments import list_experiments

    rows = [e for e in list_experiments(project, list(SPACE)) if e.succeeded]
    return len(rows), statistics.median(float(e.metrics["train_seconds"]) for e in rows)


def local(project: Path, space: Path) -> dict[str, Any]:
    started = time.perf_counter()
    sh(project, str(BIN / "nntune"), "grid", "--space", str(space))
    sh(project, str(BIN / "nntune"), "run", "--jobs", "2")
    return summary("local -j 2", time.perf_counter() - started, project)


def ray(project: Path, space: Path, cache: Path, cold: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    sh(project, str(BIN / "nntune"), "grid", "--space", str(space))
    queued = time.perf_counter() - started
    report = cache.parent / "ray.json"
    subprocess.run(
        ["unshare", "-n", "-p", "-f", "--mount-proc", sys.executable, str(SCENARIO),
         str(project), str(cache), str(report), "--", "run", *(["--cold"] if cold else [])],
        env=env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(report.read_text())
    if result["returncode"] != 0:
        raise SystemExit(result["stdout"] + result["stderr"])
    kind = "ray, 2 nodes" + (", cold stages" if cold else "")
    row = summary(kind, queued + result["run_s"], project)
    row["cluster_start_s"] = result["cluster_up_s"]
    found = re.search(r"per trial on Ray, median seconds: (.*)", result["stdout"])
    row["trial_phases_s"] = found.group(1).strip() if found else None
    return row


def summary(kind: str, seconds: float, project: Path) -> dict[str, Any]:
    trials, fit = fit_seconds(project)
    return {
        "backend": kind,
        "seconds": round(seconds, 1),
        "trials": trials,
        "per_trial_s": round(seconds * 2 / trials, 2),
        "fit_s": round(fit, 2),
        "overhead_s": round(seconds * 2 / trials - fit, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nntune-scaleout-"))
    project = make_project(tmp)
    remote = share(tmp, project)
    space = tmp / "scaleout.yaml"
    space.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in SPACE.items()))
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in args.only}
    for repeat in range(args.repeats):
        for kind in args.only:
            reset(project, remote)
            if kind == "local":
                results[kind].append(local(project, space))
            else:
                cache = tmp / f"cache-{kind}-{repeat}"
                results[kind].append(ray(project, space, cache, cold=kind == "ray-cold"))
            print(json.dumps(results[kind][-1]), flush=True)
    medians: dict[str, dict[str, float]] = {
        kind: {k: statistics.median(r[k] for r in rows) for k in ("seconds", "overhead_s")}
        for kind, rows in results.items()
    }
    for top, bottom in (("ray", "local"), ("ray", "ray-cold"), ("ray-cold", "local")):
        if top in medians and bottom in medians:
            ratio = medians[top]["seconds"] / medians[bottom]["seconds"]
            medians[f"{top} / {bottom}"] = {"seconds": round(ratio, 3)}
    print(json.dumps({"medians": medians}))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

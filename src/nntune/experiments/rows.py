"""Reading experiments back as rows (``dvc.api.exp_show``): params, metrics and state, with
failed experiments told apart from the baseline whose metrics DVC copies into them."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nntune.config.mapping import flatten
from nntune.experiments.folds import with_folds
from nntune.experiments.repo import DvcRepo, ExperimentError


@dataclass(frozen=True)
class Experiment:
    """One row of ``dvc exp show``: an experiment and what it recorded."""

    name: str
    rev: str
    state: str  # Success, Failed, Queued, Running
    params: dict[str, Any]  # flattened params.yaml keys
    metrics: dict[str, Any]  # flattened metrics (only meaningful when state is Success)
    created: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.state == "Success"

    @property
    def diverged(self) -> bool:
        # exp_show returns booleans of metrics files as "True" / "False" strings.
        return str(self.metrics.get("diverged")).lower() == "true"


def workspace_metrics(root: str | Path = ".") -> dict[str, Any]:
    """Every metrics file dvc.yaml declares, merged into one mapping (names are distinct:
    val_* from train, test_* from evaluate, timings from the run report, fold_N_* from the
    folds), with the folds' means in place of val_* (``with_folds``)."""
    import dvc.api

    return with_folds(dvc.api.metrics_show(repo=str(root)))


def list_experiments(
    root: str | Path, param_keys: Iterable[str], all_commits: bool = False
) -> list[Experiment]:
    """Experiments of HEAD (or of every commit on the branch) as ``Experiment`` rows."""
    import dvc.api
    from dvc.exceptions import NotDvcRepoError

    keys = set(param_keys)
    if not Path(root, ".dvc").is_dir():  # exp_show would try to clone it as a URL
        raise ExperimentError(
            f"{Path(root).resolve()}: not a DVC project; run nntune in the project's root "
            "(the folder with .dvc/), or set one up: `nntune init` or `make setup`"
        )
    try:
        rows = dvc.api.exp_show(repo=str(root), num=-1 if all_commits else 1)
    except NotDvcRepoError:
        raise ExperimentError(
            f"{Path(root).resolve()}: not a DVC project; run `make setup` or `dvc init`"
        ) from None
    experiments = []
    baselines = set()
    for row in rows:
        name = row.get("Experiment")
        if row.get("typ") == "baseline" and row.get("rev") != "workspace":
            baselines.add(str(row.get("rev")))  # a branch name, or a short commit id
        if not name or row.get("typ") == "baseline":
            continue
        experiments.append(
            Experiment(
                name=str(name),
                rev=str(row.get("rev")),
                state=_state(row),
                params={k: v for k, v in row.items() if k in keys},
                metrics=with_folds(
                    {k: v for k, v in row.items() if k not in keys and not _meta(k)}
                ),
                created=row.get("Created"),
            )
        )
    shown = {e.name for e in experiments}
    experiments += [e for e in executor_failures(root, keys, baselines) if e.name not in shown]
    return experiments


def executor_failures(root: str | Path, keys: set[str], baselines: set[str]) -> list[Experiment]:
    """The trials nntune's executor failed (it takes them off DVC's queue, so ``exp_show``
    has no row for them), queued on one of ``baselines``, with the params of their queued
    snapshot."""
    from nntune.executor.records import read_records

    records = [r for r in read_records(root) if not r.ok]
    if not records or not baselines:
        return []
    out = subprocess.run(
        ["git", "rev-parse", *sorted(baselines)], cwd=root, capture_output=True, text=True
    )
    commits = set(out.stdout.split())
    failed = []
    for record in records:
        if record.baseline_rev not in commits:
            continue
        try:
            raw = _params_file(root, record.stash_rev)
        except ExperimentError:
            continue  # its snapshot is gone (git gc after the failure's ref was removed)
        params = {k: _as_exp_show(v) for k, v in flatten(raw).items() if k in keys}
        failed.append(Experiment(record.name, record.stash_rev, "Failed", params, {}))
    return failed


def _as_exp_show(value: Any) -> Any:
    """A param as ``exp_show`` gives it: numbers as floats, booleans and lists as text."""
    if isinstance(value, bool | list | tuple | dict):
        return str(list(value) if isinstance(value, tuple) else value)
    if isinstance(value, int):
        return float(value)
    return value


def _params_file(root: str | Path, rev: str) -> dict[str, Any]:
    from nntune.experiments.refs import read_files

    text = read_files(root, [(rev, "params.yaml")])[(rev, "params.yaml")]
    if text is None:
        raise ExperimentError(f"{rev[:7]} has no params.yaml")
    return dict(yaml.safe_load(text) or {})


def _state(row: dict[str, Any]) -> str:
    """DVC knows Queued / Running / Success / Failed only for experiments its queue ran
    here. One pulled from a remote (``dvc exp pull``, a Ray or Slurm trial) comes back with
    no State; it is an experiment commit, and DVC commits only experiments that finished."""
    state = row.get("State")
    if state is None and row.get("typ") in ("branch_commit", "branch_base"):
        return "Success"
    return str(state)


def _meta(column: str) -> bool:
    # exp_show mixes bookkeeping columns and dependency hashes (paths) into each row.
    bookkeeping = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}
    return column in bookkeeping or "/" in column


def same_params(recorded: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether an experiment's recorded params equal ``wanted`` (flattened). exp_show
    turns ints into floats and booleans and lists into strings, so compare loosely by type."""
    return all(_same(recorded.get(key), value) for key, value in wanted.items())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, list | tuple):
        a = yaml.safe_load(a)  # exp_show gives lists as text: "[]", "[64, 32]"
    if isinstance(b, bool) or isinstance(a, bool):
        return str(a).lower() == str(b).lower()
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def experiment_metrics(repo: DvcRepo, name: str) -> dict[str, Any]:
    """The metrics an experiment recorded, read from its git commit."""
    from dvc.repo.experiments.utils import resolve_name

    ref = resolve_name(repo.scm, name).get(name)
    if ref is None:
        return {}
    rev = repo.scm.get_ref(str(ref))
    shown = repo.metrics.show(revs=[rev])
    merged: dict[str, Any] = {}
    for files in shown.get(rev, {}).get("data", {}).values():
        merged.update(flatten(files.get("data", {})))
    return with_folds(merged)

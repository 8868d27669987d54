"""Ensemble experiments: the lineage of their members (the md5s each member's dvc.lock
recorded) and running one as its own DVC experiment (``dvc exp run --temp``). The whole
pipeline is reproduced, so that the experiment is complete (``dvc exp apply`` checks out
every output, ``dvc status`` is clean); its train and evaluate stages are the baseline's,
restored from DVC's run-cache when the baseline ran before."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from nntune.experiments.refs import experiment_commits, output_md5, read_outputs
from nntune.experiments.repo import ExperimentError, baseline_rev, open_repo, use_this_python

MODEL = ("train", "models/model.keras")
PREPARED = ("prepare", "data/prepared")


def ensemble_members(root: str | Path, names: Sequence[str]) -> list[dict[str, str]]:
    """``ensemble.members`` for the experiments ``names`` of HEAD: each one's name and the
    md5s its dvc.lock records for its model and its prepared data."""
    members = []
    with open_repo(root) as repo:
        commits = experiment_commits(repo, baseline_rev(repo))
        for name in names:
            rev = commits.get(name)
            if rev is None:
                raise ExperimentError(
                    f"experiment {name}: no finished experiment of HEAD has that name; "
                    "`nntune compare` lists them"
                )
            members.append(
                {
                    "experiment": name,
                    "model": output_md5(repo, rev, *MODEL),
                    "prepared": output_md5(repo, rev, *PREPARED),
                }
            )
    return members


def out_of_fold_files(root: str | Path, name: str, folds: int) -> list[bytes]:
    """The bytes of experiment ``name``'s out-of-fold predictions, one Parquet file per fold
    (``reports/folds/N.parquet``, written by its fold stages), from DVC's cache."""
    paths = [f"reports/folds/{fold}.parquet" for fold in range(folds)]
    try:
        found = read_outputs(root, name, paths)
    except ExperimentError as exc:
        raise ExperimentError(
            f"{exc} (experiments cross-validated before nntune kept out-of-fold predictions "
            "have none: run them again)"
        ) from None
    return [found[path] for path in paths]


def members_override(members: Sequence[dict[str, str]]) -> str:
    """The ``-S`` argument that sets ``ensemble.members`` (Hydra's list-of-dicts syntax,
    every value quoted)."""
    items = [
        "{" + ",".join(f"{key}:{_quoted(value)}" for key, value in member.items()) + "}"
        for member in members
    ]
    return "ensemble.members=[" + ",".join(items) + "]"


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_ensemble(root: str | Path, name: str, members: Sequence[dict[str, str]]) -> None:
    """``dvc exp run --temp -n NAME -S ensemble.members=[...]``: a new experiment
    of HEAD whose params list the members and whose ensemble stage averaged them. DVC's own
    output is shown; a failure raises with its exit status."""
    use_this_python()
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name]
    command += ["-S", members_override(members)]
    done = subprocess.run(command, cwd=root, check=False)
    if done.returncode != 0:
        raise ExperimentError(
            f"the ensemble experiment {name} failed (dvc exp run exited {done.returncode}); "
            "its error is above"
        )

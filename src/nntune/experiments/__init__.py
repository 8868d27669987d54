"""The one place that talks to DVC from Python: queueing trials, watching DVC's queue,
reading experiments back (``dvc.api.exp_show``), refs and ``dvc.lock``, remotes, promotion
and garbage collection. The rest of nntune imports the names below from this package.

Everything here goes through DVC's own machinery (``dvc exp run --queue``, its celery
queue, ``exp apply`` / ``exp branch``); nntune adds names, checks and views on top. The
private DVC APIs it needs are behind :mod:`nntune.experiments.dvc_internals`.
"""

from __future__ import annotations

from nntune.experiments.ensembles import ensemble_members, out_of_fold_files, run_ensemble
from nntune.experiments.housekeeping import (
    collect_garbage,
    promote,
    protected_experiments,
    remove_experiments,
    shared_cache,
)
from nntune.experiments.queue import (
    QueueState,
    live_workers,
    queue_experiment,
    queue_state,
    queue_trials,
    queued_trials,
    remove_queued,
    revive_queue,
    settle_orphans,
    start_workers,
    stop_workers,
)
from nntune.experiments.refs import experiment_commits, output_md5, read_files, read_outputs
from nntune.experiments.remotes import (
    check_pushed,
    default_dvc_remote,
    git_remote_url,
    pull_experiments,
    setup_remotes,
    sync_remote,
)
from nntune.experiments.repo import (
    DvcRepo,
    ExperimentError,
    baseline_rev,
    open_repo,
    use_this_python,
)
from nntune.experiments.rows import (
    Experiment,
    experiment_metrics,
    list_experiments,
    same_params,
    workspace_metrics,
)

__all__ = [
    "DvcRepo",
    "Experiment",
    "ExperimentError",
    "QueueState",
    "baseline_rev",
    "check_pushed",
    "collect_garbage",
    "default_dvc_remote",
    "ensemble_members",
    "experiment_commits",
    "experiment_metrics",
    "git_remote_url",
    "list_experiments",
    "live_workers",
    "open_repo",
    "out_of_fold_files",
    "output_md5",
    "promote",
    "protected_experiments",
    "pull_experiments",
    "queue_experiment",
    "queue_state",
    "queue_trials",
    "queued_trials",
    "read_files",
    "read_outputs",
    "remove_experiments",
    "remove_queued",
    "revive_queue",
    "run_ensemble",
    "same_params",
    "settle_orphans",
    "setup_remotes",
    "shared_cache",
    "start_workers",
    "stop_workers",
    "sync_remote",
    "use_this_python",
    "workspace_metrics",
]

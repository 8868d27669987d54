"""``nntune slurm-script``: the queued trials as a Slurm job array.

Element i of the array runs trial i through the same per-trial entry point as the Ray
backend (``nntune trial``: clone, ``dvc pull``, ``dvc exp run``, ``dvc exp push``, verify),
so a re-submitted or requeued element skips what already reached the remote.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from nntune.backends.trial import TrialSpec
from nntune.errors import NntuneError

_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")  # Slurm's D-HH:MM:SS family


@dataclass(frozen=True)
class SlurmOptions:
    cpus: int = 1  # --cpus-per-task
    gpus: int = 0  # --gres=gpu:N
    time_limit: str = "01:00:00"  # --time, per element
    partition: str | None = None
    max_parallel: int | None = None  # the %N of --array: elements running at once
    job_name: str = "nntune"
    cache_dir: str | None = None  # clones and DVC cache on the nodes; None: ~/.cache/nntune

    def check(self) -> None:
        if self.cpus < 1 or self.gpus < 0:
            raise NntuneError("--cpus must be >= 1 and --gpus >= 0")
        if not _TIME.match(self.time_limit):
            raise NntuneError(
                f"--time must look like 30, 02:00:00 or 1-00:00:00, got {self.time_limit!r}"
            )
        if self.max_parallel is not None and self.max_parallel < 1:
            raise NntuneError("--max-parallel must be >= 1")


def slurm_script(specs: Sequence[TrialSpec], options: SlurmOptions) -> str:
    """A bash script for ``sbatch``: one array element per trial, in queue order."""
    if not specs:
        raise NntuneError("the queue is empty: queue trials with `nntune grid` first")
    options.check()
    last = len(specs) - 1
    array = f"0-{last}" + (f"%{options.max_parallel}" if options.max_parallel else "")
    header = [
        "#!/bin/bash",
        f"# Written by `nntune slurm-script`: {len(specs)} trial(s) of {specs[0].git_url}",
        f"# at commit {specs[0].rev}. Element i runs trial i with `nntune trial`, which",
        "# clones the commit, pulls the DVC remote, runs `dvc exp run` and pushes the",
        "# experiment back (skipped if the remote has it already, so requeues are safe).",
        "# Submit: sbatch THIS_FILE   Collect: nntune compare --remote origin",
        f"#SBATCH --job-name={options.job_name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --cpus-per-task={options.cpus}",
        f"#SBATCH --time={options.time_limit}",
        f"#SBATCH --output={options.job_name}-%A_%a.out",
    ]
    if options.gpus:
        header.append(f"#SBATCH --gres=gpu:{options.gpus}")
    if options.partition:
        header.append(f"#SBATCH --partition={options.partition}")
    cache = ["--cache-dir", options.cache_dir] if options.cache_dir else []
    cases = [
        f'  {i}) exec "$NNTUNE" {shlex.join([*spec.command()[1:], *cache])} ;;'
        for i, spec in enumerate(specs)
    ]
    body = [
        "set -euo pipefail",
        "# The nntune of the environment the job runs in (override: NNTUNE=/path/to/nntune).",
        'NNTUNE="${NNTUNE:-nntune}"',
        "export TF_CPP_MIN_LOG_LEVEL=2 DVC_NO_ANALYTICS=1",
        'case "${SLURM_ARRAY_TASK_ID:?submit this script with sbatch: it is a job array}" in',
        *cases,
        f'  *) echo "no trial ${{SLURM_ARRAY_TASK_ID}} in this array (0-{last})" >&2; exit 2 ;;',
        "esac",
    ]
    return "\n".join([*header, "", *body]) + "\n"

"""Commands for running past one machine: ``trial`` (one experiment in its own clone, as Ray
and Slurm run it), ``slurm-script`` and ``remote setup``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nntune.cli.app import app, remote_app


@app.command()
def trial(
    git_url: Annotated[str, typer.Argument(help="the project's git remote (URL or path)")],
    rev: Annotated[str, typer.Option(help="baseline commit, all 40 hex digits")],
    name: Annotated[str, typer.Option(help="experiment name")],
    set_param: Annotated[
        list[str] | None,
        typer.Option("--set-param", "-S", help="KEY=VALUE override, as dvc exp run -S"),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="clones and DVC cache on this machine (~/.cache/nntune)"),
    ] = None,
) -> None:
    """Run one trial anywhere: clone the commit, dvc pull, dvc exp run, dvc exp push, and
    check the experiment reached the remote. Skipped if the remote already has it. What
    Ray tasks and Slurm array elements call; prints one JSON line for them."""
    from nntune.backends.trial import TrialSpec, parse_overrides, run_trial, watch_parent

    watch_parent()
    spec = TrialSpec(git_url, rev, name, parse_overrides(set_param or []))
    result = run_trial(spec, cache_dir)
    typer.echo(f"{name}: {result.status} {result.commit[:7]} on {result.host}", err=True)
    typer.echo(result.to_json())


@app.command("slurm-script")
def slurm_script(
    output: Annotated[Path, typer.Option("--output", "-o", help="script to write")] = Path(
        "nntune-trials.sbatch"
    ),
    cpus: Annotated[int, typer.Option(help="--cpus-per-task of each element")] = 1,
    gpus: Annotated[int, typer.Option(help="GPUs per element (--gres=gpu:N)")] = 0,
    time_limit: Annotated[str, typer.Option("--time", help="--time of each element")] = "01:00:00",
    partition: Annotated[str | None, typer.Option(help="Slurm partition")] = None,
    max_parallel: Annotated[
        int | None, typer.Option(help="elements running at once (the %N of --array)")
    ] = None,
    remote: Annotated[str, typer.Option(help="git remote the elements clone and push to")] = (
        "origin"
    ),
    cache_dir: Annotated[
        str | None, typer.Option(help="clone and DVC cache folder on the nodes")
    ] = None,
) -> None:
    """Write the queued trials as an sbatch --array script: element i runs trial i with
    `nntune trial`. Submit it with sbatch; collect with `nntune compare --remote origin`."""
    from nntune.backends.ray import trial_specs
    from nntune.backends.slurm import SlurmOptions
    from nntune.backends.slurm import slurm_script as write_script
    from nntune.stage import artifacts

    options = SlurmOptions(cpus, gpus, time_limit, partition, max_parallel, "nntune", cache_dir)
    specs = trial_specs(".", remote)
    text = write_script(specs, options)
    artifacts.write_text(output, text)
    output.chmod(0o755)
    typer.echo(
        f"wrote {output}: {len(specs)} trial(s) as a job array; submit it with `sbatch {output}`"
        ", then collect with `nntune compare --remote origin`"
    )


@remote_app.command("setup")
def remote_setup(
    git_url: Annotated[str, typer.Argument(help="git remote for code and experiment refs")],
    dvc_url: Annotated[str, typer.Argument(help="DVC remote for data and models")],
    git_remote: Annotated[str, typer.Option(help="name of the git remote")] = "origin",
    dvc_remote: Annotated[str, typer.Option(help="name of the DVC remote")] = "storage",
) -> None:
    """Point the project at a shared git remote and DVC remote (the DVC remote becomes the
    default in .dvc/config). Commit .dvc/config and push so every machine sees both."""
    from nntune.experiments import setup_remotes

    changed = setup_remotes(".", git_remote, git_url, dvc_remote, dvc_url)
    typer.echo(f"git remote {git_remote} -> {git_url}; DVC remote {dvc_remote} -> {dvc_url}")
    if changed:
        typer.echo(
            "next: git add .dvc/config && git commit -m 'nntune: shared remotes' && "
            f"git push -u {git_remote} HEAD && dvc push"
        )

"""Commands that tune: ``grid`` queues a grid, ``run`` runs the queue (locally or on Ray),
``search`` drives an Optuna study, ``lr-find`` runs the learning-rate range test."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from nntune.cli.app import app
from nntune.cli.options import (
    DEFAULT_SPACE,
    AddressOption,
    BackendOption,
    BaselineOption,
    CacheDirOption,
    ExecutorOption,
    NumCpusOption,
    NumGpusOption,
    ParamsOption,
    RemoteOption,
    RetriesOption,
    WarmOption,
    backend_options,
    gpu_list,
    load_checked,
    load_for_trials,
    wide_console,
)
from nntune.errors import NntuneError

if TYPE_CHECKING:
    from nntune.backends.ray import RayExecutor
    from nntune.config.mapping import Point
    from nntune.experiments import Experiment
    from nntune.tuning.grid import Trial


@app.command()
def grid(
    space: Annotated[
        Path | None, typer.Option("--space", "-s", help="search-space YAML (default grid.yaml)")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="KEY=V1,V2 dimension; adds to or replaces --space"),
    ] = None,
    random_points: Annotated[
        int | None, typer.Option("--random", help="queue N distinct random points, not all")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of --random")] = 0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the points, queue nothing")
    ] = False,
    force: Annotated[bool, typer.Option(help="re-queue points that already ran")] = False,
    lr_around: Annotated[float | None, typer.Option(help="learning rates X/3, X, 3X")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Queue the grid's points as DVC experiments (dvc exp run --queue), one named
    experiment per point; points that already ran with the same params are skipped."""
    from nntune import experiments
    from nntune.config.mapping import flatten
    from nntune.tuning.grid import expand, load_space, parse_assignments, rates_around_dimension

    _, base = load_for_trials(params)  # the base must be valid before any point is
    dimensions: dict[str, list[Any]] = {}
    space_file = space or Path(DEFAULT_SPACE)
    if space is not None or (space_file.is_file() and not param):
        dimensions.update(load_space(space_file))
    assigned = parse_assignments(param) if param else {}
    dimensions.update(assigned)
    dimensions.update(rates_around_dimension(lr_around, assigned))
    if not dimensions:
        raise NntuneError(f"no search space: create {DEFAULT_SPACE} or pass -p KEY=V1,V2")
    trials, dropped = expand(dimensions, base, random_points, seed)
    existing = _existing(base)
    keys = list(dimensions)
    to_queue, skipped, clashes = [], [], []
    for trial in trials:
        wanted = flatten(trial.raw)
        same = [e for e in existing if experiments.same_params(e.params, wanted)]
        named = [e for e in existing if e.name == trial.name]
        if same and not force:
            skipped.append((trial, same[0]))
        elif named and not same and not force:
            clashes.append(trial.name)
        else:
            to_queue.append(trial)
    _print_points(to_queue, skipped, dropped, keys, dry_run)
    if clashes:
        raise NntuneError(
            f"experiments named {', '.join(clashes)} already exist with other params "
            "(params.yaml changed since?); commit the change to start a new baseline, "
            "or pass --force to replace them"
        )
    if dry_run or not to_queue:
        return
    if force:
        names = {t.name for t in to_queue}
        experiments.remove_experiments(".", [e.name for e in existing if e.name in names])
    queued = experiments.queue_trials(".", to_queue)
    typer.echo(f"queued {len(queued)} experiment(s); run them with: nntune run -j 2")


def _existing(base: dict[str, Any]) -> list[Experiment]:
    from nntune.config.mapping import flatten
    from nntune.experiments import list_experiments

    return [e for e in list_experiments(".", flatten(base)) if e.state != "Failed"]


def _print_points(
    to_queue: list[Trial],
    skipped: list[tuple[Trial, Experiment]],
    dropped: list[tuple[Point, str]],
    keys: list[str],
    dry_run: bool,
) -> None:
    from rich.table import Table

    from nntune.tuning.ranking import format_value

    console = wide_console()
    title = "points (dry run: nothing queued)" if dry_run else "points to queue"
    table = Table(title=f"{len(to_queue)} {title}", title_justify="left")
    table.add_column("experiment")
    for key in keys:
        table.add_column(key, justify="right")
    for trial in to_queue:
        table.add_row(trial.name, *(format_value(trial.overrides[k]) for k in keys))
    console.print(table)
    for trial, exp in skipped[:5]:
        console.print(f"skipped {trial.name}: already run as {exp.name} ({exp.state})")
    if len(skipped) > 5:
        console.print(f"... and {len(skipped) - 5} more point(s) already run")
    if skipped:
        console.print(f"{len(skipped)} point(s) skipped; --force runs them again")
    if dropped:
        console.print(f"{len(dropped)} point(s) give the same params as another and are run once")


@app.command()
def run(
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="parallel DVC queue workers")
    ] = 1,
    gpus: Annotated[
        str | None,
        typer.Option("--gpus", help="one worker per GPU: a list like 0,1,3 or 'all'; overrides -j"),
    ] = None,
    backend: BackendOption = "local",
    address: AddressOption = None,
    num_cpus: NumCpusOption = 1.0,
    num_gpus: NumGpusOption = 0.0,
    retries: RetriesOption = 3,
    remote: RemoteOption = "origin",
    cache_dir: CacheDirOption = None,
    warm: WarmOption = True,
    executor: ExecutorOption = "nntune",
    retry_failed: Annotated[
        bool,
        typer.Option("--retry-failed", help="queue the failed trials again first, same params"),
    ] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Run DVC's experiment queue with a live view until it drains: on this machine (nntune's
    own workers, or DVC's with --executor dvc), or with --backend ray as Ray tasks on a
    cluster, each experiment pushed to the git and DVC remotes and pulled back here."""
    from rich.console import Console

    from nntune.backends.view import median_phases
    from nntune.cli.trials import requeue_failed
    from nntune.executor.retry import log_text

    objective = load_checked(params).evaluate.objective
    console = Console()
    chosen = backend_options(
        backend, address, num_cpus, num_gpus, retries, remote, cache_dir, warm, executor
    )
    if retry_failed:
        requeue_failed(console)
    if chosen.backend == "ray":
        from nntune.backends.ray import run_on_ray

        outcome = run_on_ray(".", chosen.ray, objective, console)
    else:
        from nntune.backends.local import run_queue

        pinned = gpu_list(gpus) if gpus else None
        if pinned:
            console.print(f"one worker per GPU: CUDA_VISIBLE_DEVICES = {', '.join(pinned)}")
        workers = len(pinned) if pinned else jobs
        outcome = run_queue(
            ".", workers, objective, console, pinned, warm=chosen.warm, executor=chosen.executor
        )
    if outcome.total == 0:
        console.print("the queue is empty: queue trials with `nntune grid` first")
        return
    if outcome.interrupted:
        resume = chosen.resume("nntune run")
        console.print(
            f"[yellow]interrupted[/yellow]: {outcome.still_queued} trial(s) stay queued; resume "
            f"with `{resume}`"
        )
        raise typer.Exit(130)
    best = outcome.best(objective)
    if best:
        console.print(f"best: [bold]{best.name}[/bold] {objective.metric} = {best.objective:.4f}")
    if outcome.timings:
        console.print(f"per trial on Ray, median seconds: {median_phases(outcome.timings)}")
    for name in outcome.failed:
        if name in outcome.errors:
            console.print(f"[red]failed[/red]: {name} (it stays queued):")
            console.print(outcome.errors[name], markup=False, highlight=False)
        else:
            console.print(f"[red]failed[/red]: {name}; last lines of `nntune logs {name}`:")
            tail = "\n".join(log_text(".", name).strip().splitlines()[-12:])
            console.print(tail, markup=False, highlight=False)
    if outcome.failed:
        typer.echo(f"{len(outcome.failed)} trial(s) failed: {', '.join(outcome.failed)}", err=True)
        raise typer.Exit(1)


@app.command("search")
def search_command(
    method: Annotated[
        Literal["tpe", "asha", "hyperband"],
        typer.Option("--method", help="TPE, or successive halving (ASHA, Hyperband)"),
    ] = "tpe",
    trials: Annotated[
        int, typer.Option("--trials", "-n", min=1, help="configurations to sample")
    ] = 20,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="parallel experiments")] = 1,
    space: Annotated[
        Path | None,
        typer.Option(
            "--space",
            "-s",
            help="search space YAML, or a preset: seed (the default) or tabular (published "
            "practice for MLPs on tables)",
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="study name (default: the method)")
    ] = None,
    min_epochs: Annotated[
        int, typer.Option("--min-epochs", min=1, help="first rung's epochs (asha, hyperband)")
    ] = 3,
    max_epochs: Annotated[
        int | None,
        typer.Option(
            "--max-epochs", min=1, help="last rung's epochs (default 27; tpe: params.yaml's)"
        ),
    ] = None,
    eta: Annotated[int, typer.Option("--eta", min=2, help="promote the best 1/eta")] = 3,
    seed: Annotated[int, typer.Option(help="sampler seed")] = 0,
    backend: BackendOption = "local",
    address: AddressOption = None,
    num_cpus: NumCpusOption = 1.0,
    num_gpus: NumGpusOption = 0.0,
    retries: RetriesOption = 3,
    remote: RemoteOption = "origin",
    cache_dir: CacheDirOption = None,
    warm: WarmOption = True,
    executor: ExecutorOption = "nntune",
    with_baseline: BaselineOption = True,
    ensemble_top: Annotated[
        int,
        typer.Option(
            "--ensemble",
            min=0,
            help="with data.cv_folds: end by averaging the best K experiments when that beats "
            "the best one on the folds' held-out rows (nntune ensemble --if-better); 0: never",
        ),
    ] = 5,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Adaptive search: TPE, or successive halving (ASHA / Hyperband) with promoted trials
    continuing their own model; every trial is a DVC experiment, run by DVC's local queue
    or, with --backend ray, on a Ray cluster. Killed or interrupted, the same command
    continues the study. Cross-validated (data.cv_folds), it ends with the average of the
    best K as its own experiment where that scores better out of fold."""
    import re

    from rich.console import Console
    from rich.live import Live

    from nntune import experiments
    from nntune.backends.local import announced_warm_runner, local_executor
    from nntune.backends.view import search_view
    from nntune.cli.search_end import ensemble_if_better, print_search_summary
    from nntune.tuning import search_space
    from nntune.tuning.driver import Driver, Executor
    from nntune.tuning.study import Settings, open_study, study_lock

    loaded, base = load_for_trials(params)
    objective = loaded.evaluate.objective
    console = Console()
    chosen_backend = backend_options(
        backend, address, num_cpus, num_gpus, retries, remote, cache_dir, warm, executor
    )
    on_ray: RayExecutor | None = None
    try:
        name = study or method
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise NntuneError(f"--study {name!r}: use letters, digits and _ (it prefixes names)")
        if method != "tpe" and loaded.data.cv_folds:
            raise NntuneError(
                f"--method {method} promotes trials by continuing their model, and data.cv_folds "
                "trains every fold from scratch: use --method tpe, or set data.cv_folds: []"
            )
        chosen = search_space.chosen_space(space, loaded.data)
        search_space.check_against(chosen, base)
        top = max_epochs or (loaded.train.max_epochs if method == "tpe" else 27)
        search_space.brackets(method, min_epochs, top, eta)  # checks the budgets
        settings = Settings(
            study=name,
            method=method,
            trials=trials,
            min_epochs=min_epochs if method != "tpe" else top,
            max_epochs=top,
            eta=eta,
            seed=seed,
            space=search_space.describe_space(chosen),
        )
        root = Path()
        with study_lock(root, name), experiments.open_repo(root) as repo:
            experiments.use_this_python()
            baseline = experiments.baseline_rev(repo)
            the_study = open_study(root, settings, objective, baseline, chosen)
            workers: Executor = local_executor(root, chosen_backend.executor, jobs)
            if chosen_backend.backend == "ray":
                from nntune.backends.ray import RayExecutor

                workers = on_ray = RayExecutor.connect(root, chosen_backend.ray)
            driver = Driver(settings, chosen, base, objective, jobs, workers, with_baseline)
            with (
                announced_warm_runner(chosen_backend.uses_warm_runner, console, root),
                Live(console=console, refresh_per_second=2) as live,
            ):
                result = driver.run(
                    repo,
                    the_study,
                    lambda snap: live.update(search_view(snap, trials, objective, method)),
                )
            console.print()  # the live view leaves the cursor at the end of its last line
            if on_ray is not None:
                from nntune.backends.ray import fetch_models

                fetch_models(on_ray, repo, console)
    except KeyboardInterrupt:
        if on_ray is not None:
            on_ray.cancel()
        where = "are stopped" if on_ray else "finish in the workers"
        console.print(
            f"[yellow]interrupted[/yellow]: running experiments {where}; "
            "run the same command again to continue the study"
        )
        raise typer.Exit(130) from None
    finally:
        if on_ray is not None:
            on_ray.close()
    failed = print_search_summary(console, result, settings, chosen, objective)
    if on_ray is not None and on_ray.failed:
        for name, error in on_ray.failed.items():
            console.print(f"[red]failed on Ray[/red]: {name} (it stays queued):")
            console.print(error, markup=False, highlight=False)
    if loaded.data.cv_folds and ensemble_top >= 2 and result.best:
        ensemble_if_better(console, params, ensemble_top)
    if failed:
        typer.echo(f"{len(failed)} experiment(s) failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)

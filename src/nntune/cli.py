"""The ``nntune`` command line. Commands are small typed functions; rich and DVC are
imported inside them so that ``nntune --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from nntune.error_boundary import ErrorBoundary
from nntune.errors import NntuneError
from nntune.params import Params, parse_params, read_params_mapping

app = typer.Typer(
    help="Declarative, reproducible neural-network tuning as a DVC pipeline.",
    no_args_is_help=True,
    add_completion=False,
    cls=ErrorBoundary,  # the one place errors become messages (nntune.error_boundary)
)


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="show tracebacks instead of one-line errors (or NNTUNE_DEBUG=1)"
        ),
    ] = False,
) -> None:
    """Declarative, reproducible neural-network tuning as a DVC pipeline."""
    ctx.meta["nntune.debug"] = debug


DEFAULT_SPACE = "grid.yaml"

ParamsOption = Annotated[
    Path, typer.Option("--params", "-P", help="params file of the project", show_default=True)
]


def _load(path: Path) -> Params:
    return _load_with_mapping(path)[0]


def _load_with_mapping(path: Path) -> tuple[Params, dict[str, Any]]:
    """The checked params and the plain mapping they came from, from one read of the file."""
    raw = read_params_mapping(path)
    return parse_params(raw, source=str(path)), raw


@app.command()
def check(
    params: Annotated[Path, typer.Argument(help="params file")] = Path("params.yaml"),
) -> None:
    """Validate a params file without training anything; print the resolved settings."""
    p = _load(params)
    from rich.console import Console

    layers = " x ".join(map(str, p.model.units)) or "none (linear model)"
    Console().print(
        f"[green]ok[/green]: {params}\n"
        f"  data      {p.data.source} -> {p.data.target} ({p.data.task})\n"
        f"  model     hidden layers: {layers}, {p.model.activation}, dropout {p.model.dropout}\n"
        f"  train     {p.train.optimizer}, learning rate {p.train.effective_learning_rate:g}"
        f" (lr_scaling {p.train.lr_scaling.rule}), batch {p.train.batch_size},"
        f" up to {p.train.max_epochs} epochs, early stopping on {p.train.early_stopping.monitor}\n"
        f"  objective {p.evaluate.objective.direction} {p.evaluate.objective.metric}"
    )


@app.command()
def summary(params: ParamsOption = Path("params.yaml")) -> None:
    """Show the workspace's results: the objective, the test metrics and how training went."""
    p = _load(params)
    from rich.console import Console
    from rich.table import Table

    from nntune.experiments import workspace_metrics
    from nntune.metrics import holdout_metric_names, validation_metric_names

    metrics = workspace_metrics()
    if not metrics:
        typer.echo("no results yet: run `dvc repro` (or `make run`) first", err=True)
        raise typer.Exit(1)
    objective = p.evaluate.objective
    table = Table(title="nntune: workspace results", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row(
        f"objective: {objective.metric} ({objective.direction})",
        _fmt(metrics.get(objective.metric)),
        style="bold",
    )
    others = [m for m in validation_metric_names(p.data.task) if m != objective.metric]
    for name in [*others, *holdout_metric_names(p.data.task)]:
        table.add_row(name, _fmt(metrics.get(name)))
    for name in ("epochs_trained", "best_epoch", "diverged", "train_seconds"):
        table.add_row(name, _fmt(metrics.get(name)))
    Console().print(table)
    if metrics.get("diverged"):
        typer.echo("warning: training diverged (NaN/inf loss); lower train.learning_rate", err=True)


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
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Queue the grid's points as DVC experiments (dvc exp run --queue), one named
    experiment per point; points that already ran with the same params are skipped."""
    from nntune import experiments
    from nntune.grid import expand, flatten, load_space, parse_assignments

    _, base = _load_with_mapping(params)  # the base must be valid before any point is
    dimensions: dict[str, list[Any]] = {}
    space_file = space or Path(DEFAULT_SPACE)
    if space is not None or (space_file.is_file() and not param):
        dimensions.update(load_space(space_file))
    if param:
        dimensions.update(parse_assignments(param))
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


def _existing(base: dict[str, Any]) -> list[Any]:
    from nntune.experiments import list_experiments
    from nntune.grid import flatten

    return [e for e in list_experiments(".", flatten(base)) if e.state != "Failed"]


def _print_points(
    to_queue: list[Any], skipped: list[Any], dropped: list[Any], keys: list[str], dry_run: bool
) -> None:
    from rich.table import Table

    from nntune.ranking import format_value

    console = _wide_console()
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


# Where trials run: `nntune run` and `nntune search` take the same options.
Backend = Literal["local", "ray"]
BackendOption = Annotated[
    Backend, typer.Option(help="local (DVC's queue on this machine) or ray (a Ray cluster)")
]
AddressOption = Annotated[
    str | None,
    typer.Option(help="Ray cluster address (ray backend; default: RAY_ADDRESS or a local Ray)"),
]
NumCpusOption = Annotated[
    float, typer.Option("--num-cpus", min=0, help="CPUs each trial reserves on Ray")
]
NumGpusOption = Annotated[
    float, typer.Option("--num-gpus", min=0, help="GPUs each trial reserves on Ray")
]
RetriesOption = Annotated[
    int, typer.Option(min=0, help="re-runs of a Ray trial whose node or worker was lost")
]
RemoteOption = Annotated[
    str, typer.Option(help="git remote trials clone from and push to (ray backend)")
]
CacheDirOption = Annotated[
    str | None,
    typer.Option(help="clone and DVC cache folder on each Ray node (~/.cache/nntune)"),
]

WarmOption = Annotated[
    bool,
    typer.Option(
        "--warm/--cold",
        help="local backend: fork each trial's stages from one process that imported "
        "TensorFlow once (--cold: every stage starts a fresh Python)",
    ),
]


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
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Run DVC's experiment queue with a live view until it drains: on this machine's DVC
    queue workers, or with --backend ray as Ray tasks on a cluster, each experiment pushed
    to the git and DVC remotes and pulled back here."""
    from rich.console import Console

    from nntune.experiments import queue_log_tail

    objective = _load(params).evaluate.objective
    console = Console()
    if backend == "ray":
        from nntune.cluster import RayOptions, run_on_ray

        options = RayOptions(address, num_cpus, num_gpus, retries, cache_dir, remote)
        outcome = run_on_ray(".", options, objective, console)
    else:
        from nntune.monitor import run_queue

        pinned = _gpu_list(gpus) if gpus else None
        if pinned:
            console.print(f"one worker per GPU: CUDA_VISIBLE_DEVICES = {', '.join(pinned)}")
        workers = len(pinned) if pinned else jobs
        outcome = run_queue(".", workers, objective, console, pinned, warm=warm)
    if outcome.total == 0:
        console.print("the queue is empty: queue trials with `nntune grid` first")
        return
    if outcome.interrupted:
        resume = "nntune run" + (" --backend ray" if backend == "ray" else "")
        console.print(
            f"[yellow]interrupted[/yellow]: {outcome.still_queued} trial(s) stay queued; resume "
            f"with `{resume}`"
        )
        raise typer.Exit(130)
    best = outcome.best(objective)
    if best:
        console.print(f"best: [bold]{best.name}[/bold] {objective.metric} = {best.objective:.4f}")
    if outcome.timings:
        console.print(f"per trial on Ray, median seconds: {_median_phases(outcome.timings)}")
    for name in outcome.failed:
        if name in outcome.errors:
            console.print(f"[red]failed[/red]: {name} (it stays queued):")
            console.print(outcome.errors[name], markup=False, highlight=False)
        else:
            console.print(f"[red]failed[/red]: {name}; last lines of `dvc queue logs {name}`:")
            console.print(queue_log_tail(".", name), markup=False, highlight=False)
    if outcome.failed:
        typer.echo(f"{len(outcome.failed)} trial(s) failed: {', '.join(outcome.failed)}", err=True)
        raise typer.Exit(1)


def _median_phases(timings: dict[str, dict[str, float]]) -> str:
    """``clone 0.1, pull 2.2, run 22.2, push 1.3`` over the trials that ran (not skipped)."""
    from statistics import median

    ran = [t for t in timings.values() if t]
    phases = ("clone", "pull", "run", "push")
    return ", ".join(f"{p} {median(t[p] for t in ran):.1f}" for p in phases if ran) or "-"


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
    from nntune.remote import TrialSpec, parse_overrides, run_trial, watch_parent

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
    from nntune import artifacts
    from nntune.cluster import trial_specs
    from nntune.slurm import SlurmOptions
    from nntune.slurm import slurm_script as write_script

    options = SlurmOptions(cpus, gpus, time_limit, partition, max_parallel, "nntune", cache_dir)
    specs = trial_specs(".", remote)
    text = write_script(specs, options)
    artifacts.write_text(output, text)
    output.chmod(0o755)
    typer.echo(
        f"wrote {output}: {len(specs)} trial(s) as a job array; submit it with `sbatch {output}`"
        ", then collect with `nntune compare --remote origin`"
    )


remote_app = typer.Typer(help="Share experiments through a git remote and a DVC remote.")
app.add_typer(remote_app, name="remote")


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
        typer.Option("--space", "-s", help="search space YAML (default: the seed's space)"),
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
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Adaptive search: TPE, or successive halving (ASHA / Hyperband) with promoted trials
    continuing their own model; every trial is a DVC experiment, run by DVC's local queue
    or, with --backend ray, on a Ray cluster. Killed or interrupted, the same command
    continues the study."""
    import re

    from rich.console import Console
    from rich.live import Live

    from nntune import experiments, search
    from nntune.monitor import announced_warm_runner, search_view
    from nntune.study import Driver, Settings, open_study, study_lock

    loaded, base = _load_with_mapping(params)
    objective = loaded.evaluate.objective
    console = Console()
    executor = None
    try:
        name = study or method
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise NntuneError(f"--study {name!r}: use letters, digits and _ (it prefixes names)")
        chosen = search.load_search_space(space) if space else dict(search.DEFAULT_SPACE)
        search.check_against(chosen, base)
        top = max_epochs or (loaded.train.max_epochs if method == "tpe" else 27)
        search.brackets(method, min_epochs, top, eta)  # checks the budgets
        settings = Settings(
            study=name,
            method=method,
            trials=trials,
            min_epochs=min_epochs if method != "tpe" else top,
            max_epochs=top,
            eta=eta,
            seed=seed,
            space=search.describe_space(chosen),
        )
        root = Path()
        with study_lock(root, name), experiments.open_repo(root) as repo:
            experiments.use_this_python()
            baseline = experiments.baseline_rev(repo)
            the_study = open_study(root, settings, objective, baseline, chosen)
            if backend == "ray":
                from nntune.cluster import RayExecutor, RayOptions

                options = RayOptions(address, num_cpus, num_gpus, retries, cache_dir, remote)
                executor = RayExecutor.connect(root, options)
            driver = Driver(settings, chosen, base, objective, jobs, executor)
            with (
                announced_warm_runner(warm and executor is None, console),
                Live(console=console, refresh_per_second=2) as live,
            ):
                result = driver.run(
                    repo,
                    the_study,
                    lambda snap: live.update(search_view(snap, trials, objective, method)),
                )
            console.print()  # the live view leaves the cursor at the end of its last line
            if executor is not None:
                from nntune.cluster import fetch_models

                fetch_models(executor, repo, console)
    except KeyboardInterrupt:
        if executor is not None:
            executor.cancel()
        where = "are stopped" if executor else "keep running in DVC's workers"
        console.print(
            f"[yellow]interrupted[/yellow]: running experiments {where}; "
            "run the same command again to continue the study"
        )
        raise typer.Exit(130) from None
    finally:
        if executor is not None:
            executor.close()
    _print_search_summary(console, result, settings, chosen, objective)
    if executor is not None and executor.failed:
        for name, error in executor.failed.items():
            console.print(f"[red]failed on Ray[/red]: {name} (it stays queued):")
            console.print(error, markup=False, highlight=False)


def _print_search_summary(
    console: Any, result: Any, settings: Any, space: Any, objective: Any
) -> None:
    from nntune import search

    failed = [job.name for job in result.jobs if job.state == "failed"]
    if result.best:
        console.print(
            f"best: [bold]{result.best[0]}[/bold] {objective.metric} = {result.best[1]:.4f}"
        )
    else:
        console.print("[red]no trial finished its last rung[/red]")
    full = settings.trials * settings.max_epochs
    line = (
        f"epochs spent: {result.epochs_spent}, against {full} to train all {settings.trials} "
        f"sampled configurations for {settings.max_epochs} epochs"
    )
    size = search.grid_size(space)
    if size is not None:
        line += f" and {size * settings.max_epochs} for the full grid of {size} points"
    console.print(line)
    if failed:
        typer.echo(f"{len(failed)} experiment(s) failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


@app.command()
def gc(
    keep: Annotated[int, typer.Option("--keep", "-k", min=1, help="best experiments to keep")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list what would go, remove nothing")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    project: Annotated[
        list[Path] | None,
        typer.Option(
            "--project",
            help="another project that shares this DVC cache: its objects are kept "
            "(dvc gc --projects); repeat for each",
        ),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Remove the losing experiments of HEAD (dvc exp remove) and the cache entries only
    they used (dvc gc). Never the best K, one on a branch or applied to the workspace, the
    warm-start parent of a kept one, or one an unfinished study still needs."""
    from rich.table import Table

    from nntune import experiments, ranking
    from nntune.grid import flatten
    from nntune.study import needed_by_unfinished_studies

    loaded, base = _load_with_mapping(params)
    rows = experiments.list_experiments(".", flatten(base))
    comparison = ranking.compare(rows, loaded.evaluate.objective, loaded.data.task)
    if comparison.pending:
        names = ", ".join(e.name for e in comparison.pending)
        raise NntuneError(f"experiments are queued or running ({names}); gc after they end")
    with experiments.open_repo(".") as repo:
        protected = experiments.protected_experiments(repo, rows, flatten(base))
        cache = experiments.shared_cache(repo)
    protected.update(needed_by_unfinished_studies(Path(), [e.name for e in rows]))
    cleanup = ranking.select_garbage(comparison, keep, protected)
    console = _wide_console()
    table = Table(title="experiments kept", title_justify="left")
    table.add_column("experiment")
    table.add_column("why")
    for name, why in cleanup.keep.items():
        table.add_row(name, why)
    console.print(table)
    if not cleanup.remove:
        console.print("nothing to remove")
        return
    verb = "would remove" if dry_run else "removing"
    console.print(f"{verb} {len(cleanup.remove)}: {', '.join(cleanup.remove)}")
    if dry_run:
        return
    if cache and not project:
        # --yes does not answer this one: a wrong answer deletes other projects' data.
        console.print(
            f"[yellow]the DVC cache {cache} lies outside this project[/yellow]: other projects "
            "may use it, and dvc gc would delete the objects only they use. Name each with "
            "--project PATH to keep theirs."
        )
        if not typer.confirm("run dvc gc on this shared cache anyway?", default=False):
            console.print("nothing removed")
            raise typer.Exit(1)
    elif not yes and not typer.confirm(f"remove {len(cleanup.remove)} experiment(s)?"):
        raise typer.Exit(1)
    experiments.remove_experiments(".", cleanup.remove)
    with experiments.open_repo(".") as repo:
        experiments.collect_garbage(repo, [str(p) for p in project or []])
    console.print(
        f"removed {len(cleanup.remove)} experiment(s) and the cache entries only they used"
    )


def _gpu_list(text: str) -> list[str]:
    """``0,1,3`` -> ["0", "1", "3"]; ``all`` -> every GPU the backend sees."""
    if text.strip() == "all":
        from nntune.device import list_gpus

        found = [str(i) for i in range(len(list_gpus()))]
        if not found:
            raise NntuneError("--gpus all: no GPU is visible; use -j N to run on the CPU")
        return found
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids or not all(part.isdigit() for part in ids) or len(set(ids)) != len(ids):
        raise NntuneError(f"--gpus must be 'all' or distinct GPU numbers like 0,1,3, got {text!r}")
    return ids


Format = Annotated[
    Literal["table", "csv", "json", "md"], typer.Option("--format", "-f", show_default=True)
]


@app.command()
def compare(
    metric: Annotated[
        str | None, typer.Option("--metric", "-m", help="rank by this validation metric")
    ] = None,
    top: Annotated[int | None, typer.Option("--top", "-k", min=1, help="show the best K")] = None,
    all_commits: Annotated[
        bool, typer.Option("--all", help="experiments of every commit, not only HEAD's")
    ] = False,
    fmt: Format = "table",
    remote: Annotated[
        str | None,
        typer.Option(help="pull HEAD's experiments from this git remote first (e.g. origin)"),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Rank experiments by the objective; failed and diverged ones are listed apart."""
    from nntune import ranking

    if remote:
        _pull_remote(remote, quiet=fmt != "table")
    comparison = _comparison(params, metric, all_commits)
    rows = ranking.records(comparison, top)
    if fmt == "csv":
        typer.echo(ranking.to_csv(rows), nl=False)
    elif fmt == "json":
        typer.echo(ranking.to_json(comparison, rows))
    elif fmt == "md":
        typer.echo(ranking.to_markdown(rows), nl=False)
    else:
        _print_comparison(comparison, rows)


@app.command()
def best(
    apply: Annotated[bool, typer.Option("--apply", help="dvc exp apply the winner")] = False,
    branch: Annotated[
        str | None, typer.Option("--branch", help="dvc exp branch the winner to BRANCH")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Print the best experiment and optionally promote it (apply it or make a branch)."""
    from nntune.experiments import promote
    from nntune.ranking import format_value, plain

    if apply and branch:
        raise NntuneError("use --apply or --branch, not both")
    comparison = _comparison(params, None, False)
    winner = comparison.best
    if winner is None:
        typer.echo(
            "no successful experiment to pick from: run `nntune grid` and `nntune run`", err=True
        )
        raise typer.Exit(1)
    metric = comparison.objective.metric
    typer.echo(f"best: {winner.name} {metric} = {winner.metrics[metric]:.4f}")
    for key in comparison.varying:
        typer.echo(f"  {key} = {format_value(plain(winner.params.get(key)))}")
    if apply or branch:
        promote(".", winner.name, branch)
        typer.echo(f"created branch {branch}" if branch else "applied to the workspace")


@app.command()
def plots(
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="experiments to plot")] = 5,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write")] = Path(
        "plots/experiments.html"
    ),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write one offline HTML page: learning curves of the top K experiments (from
    `dvc plots diff`) and the objective against each varied parameter."""
    from nntune import report
    from nntune.ranking import records

    comparison = _comparison(params, None, False)
    shown = comparison.ranked[:top]
    if not shown:
        typer.echo("no successful experiment to plot: run `nntune grid` and `nntune run`", err=True)
        raise typer.Exit(1)
    rows = [r for r in records(comparison, top) if r["status"] == "ok"]
    curves = report.learning_curves(".", [e.name for e in shown])
    if curves.missing and not curves.specs:
        raise NntuneError(
            "no learning curve could be drawn: " + "; ".join(curves.missing) + report.CURVES_HINT
        )
    for problem in curves.missing:
        typer.echo(f"warning: left out of the page: {problem}", err=True)
    specs = curves.specs + report.objective_specs(comparison, comparison.ranked)
    report.write_page(out, comparison, rows, specs)
    typer.echo(f"wrote {out} ({len(specs)} charts, {len(shown)} experiments)")


def _pull_remote(remote: str, quiet: bool) -> None:
    from nntune.experiments import sync_remote

    try:
        pulled, dequeued = sync_remote(".", remote)
    except NntuneError:
        raise
    except Exception as exc:  # DVC's own errors: an unreachable remote, a bad URL
        raise NntuneError(
            f"could not pull experiments from {remote}: {' '.join(str(exc).split())}; check "
            f"`git remote get-url {remote}` and that it is reachable"
        ) from exc
    message = f"pulled {len(pulled)} new experiment(s) from {remote}"
    if dequeued:
        message += f"; {len(dequeued)} of them were queued here and left the queue"
    typer.echo(message, err=quiet)


def _comparison(params: Path, metric: str | None, all_commits: bool) -> Any:
    from nntune.experiments import list_experiments
    from nntune.grid import flatten
    from nntune.metrics import Objective, infer_direction, validation_metric_names
    from nntune.ranking import compare as rank

    p, base = _load_with_mapping(params)
    objective = p.evaluate.objective
    if metric:
        allowed = validation_metric_names(p.data.task)
        if metric not in allowed:
            raise NntuneError(f"--metric must be one of {', '.join(allowed)}, got {metric!r}")
        objective = Objective(metric, infer_direction(metric))
    exps = list_experiments(".", flatten(base), all_commits)
    return rank(exps, objective, p.data.task)


def _print_comparison(comparison: Any, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from nntune.ranking import format_value

    console = _wide_console()
    if not rows:
        console.print("no experiments yet: queue some with `nntune grid`, run `nntune run`")
        return
    o = comparison.objective
    table = Table(title=f"ranked by {o.metric} ({o.direction})", title_justify="left")
    for column in rows[0]:
        header = column.rsplit(".", 1)[-1]  # model.units -> units
        table.add_column(header, justify="left" if column in ("experiment", "status") else "right")
    for row in rows:
        style = "bold green" if row["rank"] == 1 else ("red" if row["status"] == "failed" else None)
        if row["status"] == "diverged":
            style = "yellow"
        table.add_row(*(format_value(v) for v in row.values()), style=style)
    console.print(table)
    if comparison.pending:
        console.print(f"{len(comparison.pending)} experiment(s) still queued or running")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="project folder (created if missing)")],
    data: Annotated[Path, typer.Option("--data", "-d", help="CSV or Parquet table")],
    target: Annotated[str, typer.Option("--target", "-t", help="column to predict")],
    task: Annotated[
        Literal["multiclass", "binary", "regression"] | None,
        typer.Option(help="the task (default: inferred from the target column)"),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(help="replace an existing project's pipeline; keeps params and schema"),
    ] = False,
    reset_params: Annotated[
        bool,
        typer.Option("--reset-params", help="with --force: replace params.yaml and the schema too"),
    ] = False,
) -> None:
    """Scaffold a ready project around your table: pipeline, params, inferred schema, git +
    DVC with the data `dvc add`-ed (in a subfolder of a git repository: `dvc init
    --subdir`). Then `cd DIR && dvc repro`."""
    from nntune.scaffold import init_project

    if reset_params and not force:
        raise NntuneError("--reset-params replaces an existing project's params: add --force")
    done = init_project(directory, data, target, task, force, reset_params)
    how = "inferred from the target column" if done.inferred_task else "as given"
    typer.echo(f"task: {done.task} ({how}; change data.task in params.yaml if wrong)")
    typer.echo(f"created {directory}: data {done.data} (dvc add), schema, params, pipeline")
    if done.subdir:
        typer.echo("a subfolder of a git repository: its own DVC repository (dvc init --subdir)")
    if done.replaced:
        typer.echo(f"replaced {len(done.replaced)} file(s): {', '.join(done.replaced)}")
    if done.kept:
        typer.echo(f"kept {', '.join(done.kept)} (--reset-params replaces them)")
    for note in done.notes:
        typer.echo(f"warning: {note}", err=True)
    if not done.committed:
        typer.echo("existing git repository: the files init wrote are staged; review and commit")
    typer.echo(f"next: cd {directory} && dvc repro")


@app.command()
def validate(
    path: Annotated[
        Path | None, typer.Argument(help="table to check (default: data.source)")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Validate a table as the pipeline's validate stage does, without DVC: every failure
    of the schema and of the params' column rules; exit code 1 if any."""
    import dataclasses

    from nntune.schema import check_data, render_report

    data = _load(params).data
    if path is not None:
        data = dataclasses.replace(data, source=str(path))
    report = check_data(data)
    render_report(report)
    if not report.valid:
        raise typer.Exit(1)


schema_app = typer.Typer(help="pandera schemas of the input table.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")


@schema_app.command("infer")
def schema_infer(
    path: Annotated[
        Path | None, typer.Argument(help="table to infer from (default: data.source)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="YAML to write (default: data.schema)")
    ] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing schema file")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write a pandera schema (YAML) inferred from the data: dtypes, nullability, ranges,
    allowed categories, the label set. Read it, tighten it, commit it."""
    import dataclasses

    from nntune import artifacts
    from nntune.data import read_table
    from nntune.schema import infer_schema

    data = _load(params).data
    if path is not None:
        data = dataclasses.replace(data, source=str(path))
    target = out or Path(data.schema)
    if target.exists() and not force:
        raise NntuneError(f"{target} exists; pass --force to overwrite it")
    schema = infer_schema(read_table(data.source, data.delimiter), data)
    artifacts.write_text(target, schema.to_yaml())
    typer.echo(f"wrote {target}: {len(schema.columns)} columns from {data.source}")


@app.command("export-digits")
def export_digits(
    path: Annotated[Path, typer.Argument(help="CSV file to write")] = Path("data/digits.csv"),
) -> None:
    """Write scikit-learn's bundled handwritten-digits set as CSV (the default data)."""
    from nntune.data import export_digits as export

    export(path)
    typer.echo(f"wrote {path}")


def _wide_console() -> Any:
    """A terminal's own width; piped or logged output gets room for the whole table
    instead of ellipses (rich assumes 80 columns when it cannot ask a terminal)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=250)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)

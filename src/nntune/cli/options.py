"""Option types and small helpers that several command groups share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from nntune.backends.options import Backend, BackendOptions, Executor, RayOptions
from nntune.config.params import parse_params, read_params_mapping
from nntune.config.sections import Params
from nntune.errors import NntuneError

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_SPACE = "grid.yaml"

ParamsOption = Annotated[
    Path, typer.Option("--params", "-P", help="params file of the project", show_default=True)
]


def load_checked(path: Path) -> Params:
    return load_with_mapping(path)[0]


def load_with_mapping(path: Path) -> tuple[Params, dict[str, Any]]:
    """The checked params and the plain mapping they came from, from one read of the file."""
    raw = read_params_mapping(path)
    return parse_params(raw, source=str(path)), raw


def load_for_trials(path: Path) -> tuple[Params, dict[str, Any]]:
    """``load_with_mapping`` for commands that queue trials: every trial copies the base
    params, so a base that lists ensemble members (an ensemble applied to the workspace)
    would make each trial an ensemble, never ranked with the others."""
    loaded, raw = load_with_mapping(path)
    if loaded.ensemble.enabled:
        raise NntuneError(
            f"{path}: ensemble.members lists {len(loaded.ensemble.members)} experiments (an "
            "ensemble applied to the workspace); every trial would copy them. Set "
            "ensemble.members: [] before queueing trials"
        )
    return loaded, raw


# Where trials run: `nntune run` and `nntune search` take the same options.
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
        help="fork each trial's stages from one process that imported TensorFlow once "
        "(on Ray: one per Ray worker, kept across its trials; --cold: every stage starts "
        "a fresh Python)",
    ),
]

ExecutorOption = Annotated[
    Literal["nntune", "dvc"],
    typer.Option(
        "--executor",
        help="local backend: nntune's own workers, each in a persistent git worktree (fast), "
        "or DVC's queue workers (dvc queue start)",
    ),
]
BaselineOption = Annotated[
    bool,
    typer.Option(
        "--baseline/--no-baseline",
        help="tpe: also run params.yaml as it is (STUDY-baseline) at the study's budget, so "
        "that the best is never worse on the objective than the baseline",
    ),
]


def gpu_list(text: str) -> list[str]:
    """``0,1,3`` -> ["0", "1", "3"]; ``all`` -> every GPU the backend sees."""
    if text.strip() == "all":
        from nntune.stage.device import list_gpus

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


def wide_console() -> Console:
    """A terminal's own width; piped or logged output gets room for the whole table
    instead of ellipses (rich assumes 80 columns when it cannot ask a terminal)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=250)


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def backend_options(
    backend: Backend,
    address: str | None,
    num_cpus: float,
    num_gpus: float,
    retries: int,
    remote: str,
    cache_dir: str | None,
    warm: bool,
    executor: Executor = "nntune",
) -> BackendOptions:
    """The backend options ``run`` and ``search`` share, as one value."""
    ray = RayOptions(address, num_cpus, num_gpus, retries, cache_dir, remote, warm)
    return BackendOptions(backend, warm, ray, executor)

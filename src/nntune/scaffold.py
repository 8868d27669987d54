"""``nntune init``: a ready project around the user's own table.

The project gets the pipeline this nntune carries (dvc.yaml, params.yaml, stages/, grid.yaml:
from its checkout, or from the wheel's ``nntune/pipeline``) and a copy of the library under
src/nntune, so it carries the exact code that produces its results (the stage
commands import it with ``PYTHONPATH=src``, as queued experiments need). The data file is
versioned by DVC (``dvc add``), never by git, and its schema is inferred for the user to edit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import nntune
from nntune import artifacts
from nntune.data import read_table
from nntune.errors import NntuneError
from nntune.experiments import use_this_python
from nntune.metrics import Task
from nntune.params import load_params
from nntune.schema import infer_schema

PIPELINE_FILES = ("dvc.yaml", "grid.yaml", ".dvcignore")  # and params.yaml, stages/
PACKAGED = "pipeline"  # the folder of them inside a wheel-installed package
MAX_CLASSES = 50  # more distinct integer labels than this reads as a quantity: regression


class ScaffoldError(NntuneError):
    pass


@dataclass(frozen=True)
class Scaffolded:
    project: Path
    data: str  # path of the data file inside the project
    task: Task
    inferred_task: bool
    committed: bool  # False in an existing repository: the user commits


def pipeline_root() -> Path:
    """Where the pipeline files to copy live: the ``pipeline`` folder an installed wheel
    carries (see ``nntune._build``), else the source checkout of an editable install."""
    library = Path(nntune.__file__).resolve().parent
    for root in (library / PACKAGED, library.parents[1]):
        if all((root / name).exists() for name in (*PIPELINE_FILES, "params.yaml", "stages")):
            return root
    raise ScaffoldError(
        f"nntune init needs the pipeline files (dvc.yaml, params.yaml, stages/), and neither "
        f"{library / PACKAGED} nor the checkout around {library} has them; reinstall nntune "
        "from a git clone (`pip install .` or `pip install -e .`)"
    )


def infer_task(target: pd.Series) -> Task:
    """Two values -> binary; a few integers or strings -> multiclass; else regression."""
    values = target.dropna()
    distinct = values.nunique()
    if distinct == 2:
        return "binary"
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if not numeric:
        return "multiclass"
    integral = bool((values == values.round()).all())
    return "multiclass" if integral and distinct <= MAX_CLASSES else "regression"


def init_project(
    project: Path, data_file: Path, target: str, task: Task | None = None, force: bool = False
) -> Scaffolded:
    """Create (or, with ``force``, overwrite) the pipeline in ``project`` for ``data_file``."""
    root = pipeline_root()
    frame = read_table(data_file)
    if target not in frame.columns:
        raise ScaffoldError(
            f"{data_file}: no column {target!r} (columns: {', '.join(map(str, frame.columns))}); "
            "pass --target with one of them"
        )
    existing = [n for n in ("dvc.yaml", "params.yaml") if (project / n).exists()]
    if existing and not force:
        raise ScaffoldError(
            f"{project} already has {', '.join(existing)}: refusing to overwrite a project; "
            "pass --force to replace its pipeline files (data and git history are kept)"
        )
    chosen: Task = task or infer_task(frame[target])
    project.mkdir(parents=True, exist_ok=True)
    inside = Path("data") / data_file.name
    schema_path = Path("data") / f"{data_file.stem}.schema.yaml"
    _copy_pipeline(root, project)
    params_text = _params_text(root, str(inside), str(schema_path), target, chosen)
    artifacts.write_text(project / "params.yaml", params_text)
    data = load_params(project / "params.yaml").data
    artifacts.write_text(project / schema_path, infer_schema(frame, data).to_yaml())
    _write_readme(project, inside, target, chosen)
    destination = project / inside
    if destination.resolve() != data_file.resolve():
        shutil.copy2(data_file, destination)
    committed = _init_repositories(project, inside)
    return Scaffolded(project, str(inside), chosen, task is None, committed)


def _copy_pipeline(root: Path, project: Path) -> None:
    for name in PIPELINE_FILES:
        shutil.copy2(root / name, project / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(root / "stages", project / "stages", ignore=ignore, dirs_exist_ok=True)
    library = Path(nntune.__file__).resolve().parent
    # The project's own pipeline files are at its root: no packaged copy in its library.
    vendored = shutil.ignore_patterns("__pycache__", "*.pyc", PACKAGED)
    shutil.copytree(library, project / "src" / "nntune", ignore=vendored, dirs_exist_ok=True)
    (project / "data").mkdir(exist_ok=True)
    gitignore = project / ".gitignore"
    lines = gitignore.read_text().splitlines() if gitignore.exists() else []
    wanted = [".venv/", "__pycache__/", "plots/", "dvc_plots/", ".nntune/"]
    artifacts.write_text(gitignore, "\n".join(lines + [w for w in wanted if w not in lines]) + "\n")


def _params_text(root: Path, source: str, schema: str, target: str, task: Task) -> str:
    """This checkout's params.yaml, comments kept, with the data keys set for the table."""
    text = (root / "params.yaml").read_text(encoding="utf-8")
    for key, value in (("source", source), ("schema", schema), ("target", target), ("task", task)):
        pattern = re.compile(rf"^(  {key}: )(\S+)( *#.*)?$", flags=re.MULTILINE)
        match = pattern.search(text)
        if match is None:
            raise ScaffoldError(f"{root / 'params.yaml'}: no data.{key} line to fill in")
        line = f"{match.group(1)}{value}{match.group(3) or ''}"
        text = text[: match.start()] + line + text[match.end() :]
    return text


def _write_readme(project: Path, data: Path, target: str, task: Task) -> None:
    readme = project / "README.md"
    if readme.exists():
        return
    artifacts.write_text(
        readme,
        f"""# nntune project

Predicts `{target}` ({task}) from `{data}`, with the pipeline validate -> prepare -> train ->
evaluate (`dvc.yaml`) and every knob in `params.yaml`. Made by `nntune init`
(nntune {nntune.__version__}), which also copied the library it ran into `src/nntune`.

```bash
dvc repro                 # validate, prepare, train, evaluate
nntune grid && nntune run -j 2 && nntune compare
```

`{data.parent}/{data.stem}.schema.yaml` was inferred from the data: read it and tighten it.
""",
    )


def _init_repositories(project: Path, data: Path) -> bool:
    """git and DVC set up, the data ``dvc add``-ed; returns whether a commit was made (only
    in a repository this created: an existing one is never committed to)."""
    use_this_python()

    def run(*cmd: str) -> None:
        result = subprocess.run(list(cmd), cwd=project, capture_output=True, text=True)
        if result.returncode != 0:
            raise ScaffoldError(f"`{' '.join(cmd)}` failed in {project}: {result.stderr.strip()}")

    inside_git = (
        subprocess.run(
            ["git", "rev-parse", "--is-inside-work-tree"], cwd=project, capture_output=True
        ).returncode
        == 0
    )
    if not inside_git:
        run("git", "init", "--quiet")
    if not (project / ".dvc").is_dir():
        run("dvc", "init", "--quiet")
        run("dvc", "config", "core.analytics", "false")
    run("dvc", "add", "--quiet", str(data))  # versioned by DVC; git gets only the .dvc file
    run("git", "add", "-A")
    if inside_git:
        return False
    # DVC experiments (and dvclive) need a first commit to start from.
    known = subprocess.run(["git", "config", "user.email"], cwd=project, capture_output=True)
    identity = (
        []
        if known.returncode == 0
        else ["-c", "user.name=nntune", "-c", "user.email=nntune@localhost"]
    )
    run("git", *identity, "commit", "--quiet", "-m", "nntune init: pipeline, params, schema, data")
    return True

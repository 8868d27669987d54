"""``nntune init``: a ready project around the user's own table.

The project gets the pipeline this nntune carries (dvc.yaml, params.yaml, stages/, grid.yaml:
from its checkout, or from the wheel's ``nntune/pipeline``) and a copy of the library under
src/nntune, so it carries the exact code that produces its results (the stage
commands import it with ``PYTHONPATH=src``, as queued experiments need). The data file is
versioned by DVC (``dvc add``), never by git, and its schema is inferred for the user to edit.

In a subfolder of an existing git repository the project becomes a DVC repository of its
own (``dvc init --subdir``) inside that git repository. Only the files ``init`` wrote are
staged (``git add -- FILE...``), never the user's other changes.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import nntune
from nntune.config.metrics import Task
from nntune.config.params import load_params
from nntune.config.sections import DataParams
from nntune.errors import NntuneError
from nntune.experiments import use_this_python
from nntune.scaffold.errors import ScaffoldError
from nntune.scaffold.params_text import (
    params_text,
    with_interpolated_keys,
    with_stage_sections,
)
from nntune.stage import artifacts
from nntune.stage.data import read_table
from nntune.stage.profiling import id_like_columns
from nntune.stage.schema import infer_schema

PIPELINE_FILES = ("dvc.yaml", "grid.yaml", ".dvcignore")  # and params.yaml, stages/
PACKAGED = "pipeline"  # the folder of them inside a wheel-installed package
MAX_CLASSES = 50  # more distinct integer labels than this reads as a quantity: regression
# Anchored to the project root: an unanchored `plots/` would also ignore dvclive's own
# `dvclive/plots/` folder, so the experiments' curves would never reach git and
# `dvc plots diff EXP1 EXP2` could not find them. The hidden siblings are what the atomic
# folder writes leave while they run (nntune.stage.artifacts).
GITIGNORE = [".venv/", "__pycache__/", "/plots/", "/dvc_plots/", "/.nntune/", ".*.tmp-*/"]
GITIGNORE += [".*.old-*/"]
UNANCHORED = {f"{line[1:]}": line for line in GITIGNORE if line.startswith("/")}
UNANCHORED |= {name.rstrip("/"): line for name, line in UNANCHORED.items()}


@dataclass(frozen=True)
class Scaffolded:
    project: Path
    data: str  # path of the data file inside the project
    task: Task
    inferred_task: bool
    committed: bool  # False in an existing repository: the user commits
    subdir: bool = False  # a DVC repository in a subfolder of a larger git repository
    replaced: tuple[str, ...] = ()  # files that were there with other content
    kept: tuple[str, ...] = ()  # the user's params.yaml and schema, kept under --force
    notes: tuple[str, ...] = ()  # what the user should look at
    removed: tuple[str, ...] = ()  # library modules of an older layout, taken out


@dataclass
class _Written:
    """The files ``init`` writes into the project (paths relative to it): what it stages,
    and which of them it replaced."""

    project: Path
    paths: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # stale library modules taken out

    def text(self, relative: str | Path, text: str) -> None:
        self._note(Path(relative), text.encode("utf-8"))
        artifacts.write_text(self.project / relative, text)

    def copy(self, source: str | Path, destination: str | Path) -> str:
        relative = Path(destination).relative_to(self.project)
        self._note(relative, Path(source).read_bytes())
        return str(shutil.copy2(source, destination))

    def _note(self, relative: Path, content: bytes) -> None:
        target = self.project / relative
        if target.is_file() and target.read_bytes() != content:
            self.replaced.append(relative.as_posix())
        self.paths.append(relative.as_posix())


def pipeline_root() -> Path:
    """Where the pipeline files to copy live: the ``pipeline`` folder an installed wheel
    carries (see ``nntune.scaffold.build``), else the source checkout of an editable install."""
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
    project: Path,
    data_file: Path,
    target: str,
    task: Task | None = None,
    force: bool = False,
    reset_params: bool = False,
) -> Scaffolded:
    """Create (or, with ``force``, overwrite) the pipeline in ``project`` for ``data_file``.
    ``force`` keeps an existing params.yaml and schema file unless ``reset_params``."""
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
            "pass --force to replace its pipeline files (params.yaml, the schema, data and "
            "git history are kept)"
        )
    chosen: Task = task or infer_task(frame[target])
    inside = Path("data") / data_file.name
    kept_params = None if reset_params else _kept_params(project / "params.yaml")
    project.mkdir(parents=True, exist_ok=True)
    written = _Written(project)
    _copy_pipeline(root, written)
    kept, notes = [], []
    if kept_params is None:
        schema_path = Path("data") / f"{data_file.stem}.schema.yaml"
        ids = id_like_columns(frame, target)
        text = params_text(root, inside, schema_path, target, chosen, [i.column for i in ids])
        written.text("params.yaml", text)
        data = load_params(project / "params.yaml").data
        notes += [
            f"data.exclude: {found.column}: {found.reason()}; remove it from data.exclude in "
            "params.yaml to use it as a feature"
            for found in ids
        ]
    else:
        kept.append("params.yaml")
        data = kept_params
        schema_path = Path(data.schema)
        notes += _mismatches(data, inside, target, chosen)
        upgraded, added = with_interpolated_keys((project / "params.yaml").read_text("utf-8"))
        upgraded, sections = with_stage_sections(upgraded)
        added += sections
        if added:  # the new dvc.yaml reads them: without them DVC cannot load the pipeline
            artifacts.write_text(project / "params.yaml", upgraded)
            written.paths.append("params.yaml")  # staged with the rest, kept all the same
            notes.append(f"params.yaml: added {', '.join(added)}, which dvc.yaml now reads")
    if (project / schema_path).exists() and not reset_params:
        kept.append(schema_path.as_posix())
    elif Path(data.source) == inside:
        written.text(schema_path, infer_schema(frame, data).to_yaml())
    else:
        notes.append(f"no schema {schema_path} yet: write it with `nntune schema infer`")
    _write_readme(written, inside, target, chosen)
    destination = project / inside
    if destination.resolve() != data_file.resolve():
        shutil.copy2(data_file, destination)  # versioned by `dvc add`, not git: not staged
    committed, subdir = _init_repositories(project, inside, written.paths, written.removed)
    notes += _ignored_curves(project)
    return Scaffolded(
        project,
        str(inside),
        chosen,
        task is None,
        committed,
        subdir,
        tuple(written.replaced),
        tuple(kept),
        tuple(notes),
        tuple(written.removed),
    )


def _kept_params(path: Path) -> DataParams | None:
    """The data section of the params.yaml ``--force`` keeps (None if there is none)."""
    if not path.is_file():
        return None
    try:
        return load_params(path).data
    except NntuneError as exc:
        raise ScaffoldError(
            f"{exc}; nntune init --force keeps {path}: fix it, or pass --reset-params to "
            "replace it (and the schema) with new ones"
        ) from None


def _mismatches(data: DataParams, inside: Path, target: str, task: Task) -> list[str]:
    given = {"source": inside.as_posix(), "target": target, "task": task}
    kept = {"source": data.source, "target": data.target, "task": data.task}
    differ = [k for k in given if str(kept[k]) != given[k]]
    if not differ:
        return []
    what = ", ".join(f"data.{k} is {kept[k]!r} (not {given[k]!r})" for k in differ)
    return [f"kept params.yaml: {what}; edit it, or rerun with --reset-params"]


def _copy_pipeline(root: Path, written: _Written) -> None:
    project = written.project
    for name in PIPELINE_FILES:
        written.copy(root / name, project / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    copy = written.copy
    shutil.copytree(
        root / "stages", project / "stages", ignore=ignore, copy_function=copy, dirs_exist_ok=True
    )
    library = Path(nntune.__file__).resolve().parent
    # The project's own pipeline files are at its root: no packaged copy in its library.
    vendored = shutil.ignore_patterns("__pycache__", "*.pyc", PACKAGED)
    shutil.copytree(
        library,
        project / "src" / "nntune",
        ignore=vendored,
        copy_function=copy,
        dirs_exist_ok=True,
    )
    _remove_stale_library(written)
    (project / "data").mkdir(exist_ok=True)
    gitignore = project / ".gitignore"
    old = gitignore.read_text(encoding="utf-8").splitlines() if gitignore.exists() else []
    written.text(".gitignore", gitignore_text(old))


def _remove_stale_library(written: _Written) -> None:
    """Remove the vendored library's modules that this nntune no longer has (``--force``
    over a project made by an older layout, such as the flat ``src/nntune/params.py``), so
    that no stale module shadows or sits beside the new ones. Only ``.py`` files under
    ``src/nntune`` that this copy did not write are removed; their removal is staged."""
    vendored = written.project / "src" / "nntune"
    current = {written.project / path for path in written.paths}
    for path in sorted(vendored.rglob("*.py")):
        if path not in current:
            path.unlink()
            written.removed.append(path.relative_to(written.project).as_posix())
    for folder in sorted((p for p in vendored.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()) or {c.name for c in folder.iterdir()} == {"__pycache__"}:
            shutil.rmtree(folder)


def gitignore_text(lines: list[str]) -> str:
    """The user's .gitignore lines, with an unanchored ``plots/`` (and the like) replaced
    by its anchored form and what the project needs added."""
    kept: list[str] = []
    for line in lines:
        anchored = UNANCHORED.get(line.strip(), line)
        if anchored == line or anchored not in (*lines, *kept):  # no duplicate rule
            kept.append(anchored)
    return "\n".join(kept + [w for w in GITIGNORE if w not in kept]) + "\n"


def _write_readme(written: _Written, data: Path, target: str, task: Task) -> None:
    if (written.project / "README.md").exists():
        return
    written.text(
        "README.md",
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


def _command(project: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run git or dvc in the project; a failure raises with everything it printed."""
    try:
        result = subprocess.run(list(cmd), cwd=project, capture_output=True, text=True)
    except FileNotFoundError:
        raise ScaffoldError(f"nntune init needs `{cmd[0]}` on PATH; install it") from None
    if result.returncode != 0:
        said = [line.strip() for line in (result.stdout + "\n" + result.stderr).splitlines()]
        output = " / ".join(line for line in said if line) or "no output"
        shown = [*cmd[:5], f"... ({len(cmd) - 5} more)"] if len(cmd) > 8 else list(cmd)
        raise ScaffoldError(
            f"`{' '.join(shown)}` failed in {project} (exit {result.returncode}): {output}"
        )
    return result


def _git_toplevel(project: Path) -> Path | None:
    result = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=project, capture_output=True, text=True
    )
    return Path(result.stdout.strip()).resolve() if result.returncode == 0 else None


def _init_repositories(
    project: Path, data: Path, written: list[str], removed: list[str]
) -> tuple[bool, bool]:
    """git and DVC set up, the data ``dvc add``-ed, the files init wrote staged; returns
    whether a commit was made (only in a repository this created: an existing one is never
    committed to) and whether the project is a subfolder of a larger git repository."""
    use_this_python()
    toplevel = _git_toplevel(project)
    subdir = toplevel is not None and toplevel != project.resolve()
    if toplevel is None:
        _command(project, "git", "init", "--quiet")
    staged = [*written]
    if not (project / ".dvc").is_dir():
        # No --quiet for DVC: it would silence its error messages too.
        _command(project, "dvc", "init", *(["--subdir"] if subdir else []))
        _command(project, "dvc", "config", "core.analytics", "false")
        staged += [".dvc/config", ".dvc/.gitignore"]
    _command(project, "dvc", "add", str(data))  # git gets only the .dvc file
    staged += [f"{data}.dvc", str(data.parent / ".gitignore")]
    ours = dict.fromkeys(path for path in staged if (project / path).exists())
    _command(project, "git", "add", "--", *ours)
    if removed:  # stale library modules: their removal is staged too, if git tracked them
        _command(project, "git", "rm", "--cached", "--quiet", "--ignore-unmatch", "--", *removed)
    if toplevel is not None:
        return False, subdir
    # DVC experiments (and dvclive) need a first commit to start from.
    known = subprocess.run(["git", "config", "user.email"], cwd=project, capture_output=True)
    identity = (
        []
        if known.returncode == 0
        else ["-c", "user.name=nntune", "-c", "user.email=nntune@localhost"]
    )
    message = "nntune init: pipeline, params, schema, data"
    _command(project, "git", *identity, "commit", "--quiet", "-m", message)
    return True, subdir


def _ignored_curves(project: Path) -> list[str]:
    """A warning per .gitignore rule (the project's or an enclosing repository's) that
    would keep dvclive's curves out of git, where `dvc plots diff` reads them."""
    files = _plot_files(project)
    result = subprocess.run(
        ["git", "check-ignore", "--verbose", *files], cwd=project, capture_output=True, text=True
    )
    toplevel = _git_toplevel(project) or project
    ignored: dict[tuple[str, str], list[str]] = {}
    for line in result.stdout.splitlines():
        rule, _, path = line.partition("\t")
        source, number, pattern = rule.split(":", 2)
        ignored.setdefault((f"{toplevel / source}:{number}", pattern), []).append(path)
    return [
        f"git ignores {', '.join(paths)} ({where}: {pattern}): the experiments' curves would "
        "not be committed, and `dvc plots diff` / `nntune plots` could not show them; anchor "
        f"the pattern to its folder (`/{pattern.lstrip('/')}`, not `{pattern}`)"
        for (where, pattern), paths in ignored.items()
    ]


def _plot_files(project: Path) -> list[str]:
    """The files the plots of the project's dvc.yaml read (``y: {FILE: field}``)."""
    import yaml

    declared = yaml.safe_load((project / "dvc.yaml").read_text(encoding="utf-8")) or {}
    files: list[str] = []
    for plot in declared.get("plots", []):
        for props in plot.values() if isinstance(plot, dict) else []:
            y = props.get("y") if isinstance(props, dict) else None
            files += [str(name) for name in y] if isinstance(y, dict) else []
    return files

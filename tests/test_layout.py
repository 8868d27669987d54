"""The package's layout rules: stages depend only on the stage side, no module grows past
a screenful of screens, and private APIs of DVC, Keras and Optuna stay behind one adapter
each, with an upper version bound that the installed version satisfies."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import tempfile
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SRC = REPO / "src" / "nntune"
DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# What a stage may depend on: editing anything else (the CLI, tuning, the DVC gateway, the
# backends, the warm runner's server) must never invalidate a trained stage.
STAGE_SIDE = ("nntune.stage", "nntune.config", "nntune.warm.client", "nntune.errors")
STAGE_SIDE_FILES = ("src/nntune/__init__.py", "src/nntune/warm/__init__.py")
ADAPTERS = {
    "dvc": "nntune.experiments.dvc_internals",
    "dvclive": "nntune.stage.dvclive_internals",
    "keras": "nntune.stage.keras_internals",
    "optuna": "nntune.tuning.optuna_internals",
}


def _module(path: Path) -> str:
    parts = path.relative_to(REPO / "src").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage_side(module: str) -> bool:
    return any(module == s or module.startswith(f"{s}.") for s in STAGE_SIDE)


MODULES = sorted(SRC.rglob("*.py"))


def _nntune_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nntune"):
            base = node.module or ""
            for alias in node.names:  # `from nntune.stage import artifacts` is a module
                candidate = f"{base}.{alias.name}"
                exists = (REPO / "src" / candidate.replace(".", "/")).with_suffix(".py").exists()
                found.add(candidate if exists else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("nntune")}
    return found


@pytest.mark.parametrize("stage", list(DVC_YAML["stages"]))
def test_stages_depend_only_on_the_stage_side(stage: str) -> None:
    spec = DVC_YAML["stages"][stage]
    spec = spec.get("do", spec)  # a foreach stage's template (fold)
    library = [d for d in spec["deps"] if d.startswith("src/")]
    assert library, f"{stage} lists no library module"
    outside = [
        d for d in library if d not in STAGE_SIDE_FILES and not _stage_side(_module(REPO / d))
    ]
    assert not outside, f"{stage} depends on orchestration code: {outside}"


@pytest.mark.parametrize(
    "path", [p for p in MODULES if _stage_side(_module(p))], ids=lambda p: _module(p)
)
def test_stage_side_imports_no_orchestration(path: Path) -> None:
    """The stage side imports only itself (so the deps above are closed under import)."""
    wrong = sorted(m for m in _nntune_imports(path) if m != "nntune" and not _stage_side(m))
    assert not wrong, f"{_module(path)} imports {wrong}"


def test_the_stage_side_check_sees_a_wrong_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from nntune.experiments import list_experiments\n")
    assert _nntune_imports(probe) == {"nntune.experiments"}
    assert not _stage_side("nntune.experiments")
    assert not _stage_side("nntune.warm.server")
    assert _stage_side("nntune.warm.client") and _stage_side("nntune.stage.data")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module(p))
def test_modules_stay_under_400_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 400


@pytest.mark.parametrize("library", list(ADAPTERS))
def test_private_apis_only_in_their_adapter(library: str) -> None:
    adapter = importlib.import_module(ADAPTERS[library])
    pattern = re.compile(r"\.(" + "|".join(map(re.escape, adapter.USED)) + r")\b")
    users = [
        _module(p)
        for p in MODULES
        if _module(p) != ADAPTERS[library] and pattern.search(p.read_text())
    ]
    assert not users, f"{library}'s private API used outside {ADAPTERS[library]}: {users}"


def _bound(name: str) -> str:
    for requirement in PYPROJECT["project"]["dependencies"]:
        if re.match(rf"{name}\b", requirement):
            return requirement
    raise AssertionError(f"{name} is not a dependency")


@pytest.mark.parametrize("library", list(ADAPTERS))
def test_private_apis_are_version_bounded_and_present(library: str) -> None:
    """The adapter's library has an upper bound, the installed version is inside it, and
    the private names the adapter uses exist in that version."""
    from packaging.specifiers import SpecifierSet

    requirement = _bound(library)
    specifier = SpecifierSet(requirement[len(library) :].strip())
    assert any(s.operator in ("<", "<=") for s in specifier), f"{requirement}: no upper bound"
    installed = importlib.metadata.version(library)
    assert installed in specifier, f"{library} {installed} is outside {requirement}"
    adapter = importlib.import_module(ADAPTERS[library])
    holders = _private_holders(library)
    missing = [name for name in adapter.USED if not any(hasattr(h, name) for h in holders)]
    assert not missing, f"{library} {installed} lacks {missing}: update {ADAPTERS[library]}"


def _private_holders(library: str) -> list[object]:
    """The objects (classes or instances) of the library that carry the private names."""
    if library == "dvc":
        from dvc import repo, rwlock
        from dvc.dvcfile import ProjectFile
        from dvc.repo.experiments.executor.base import BaseExecutor
        from dvc.repo.experiments.queue.celery import LocalCeleryQueue
        from dvc.stage import utils
        from dvc.utils import strictyaml
        from dvc.utils.serialize import _yaml

        return [LocalCeleryQueue, BaseExecutor, ProjectFile, utils, rwlock, _yaml, strictyaml, repo]
    if library == "dvclive":
        from nntune.stage.dvclive_internals import StepLive

        live = StepLive(dir=tempfile.mkdtemp(), dvcyaml=False, save_dvc_exp=False, report=None)
        live.end()  # closes the DVC repository it opened
        return [live]
    if library == "optuna":
        import optuna

        study = optuna.create_study()
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
        return [study.trials[0]]
    import keras

    return [keras.layers.Dropout(0.5)]  # has seed generators, and is a Layer

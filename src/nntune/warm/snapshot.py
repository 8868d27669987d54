"""Whether a forked stage may keep the nntune modules its warm runner's server imported.

The server imports the stages' nntune modules once (``nntune.warm.client.STAGE_MODULES``),
from its own copy of the library. A stage must run its own working copy's code (a queued
experiment's snapshot), so the child keeps them only where that copy holds the same bytes
for every one of them, and imports its copy afresh otherwise. Re-pointed at the stage's
files, whatever the kept modules import later also comes from the stage's copy.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any


def stat_nntune() -> dict[str, int]:
    """The modification time (ns) of every source file of the loaded ``nntune`` package,
    taken before the server imports the stages' modules (:func:`fingerprint_nntune`)."""
    package = sys.modules.get("nntune")
    if package is None or not getattr(package, "__path__", None):
        return {}
    times = {}
    for path in Path(next(iter(package.__path__))).rglob("*.py"):
        try:
            times[str(path)] = path.stat().st_mtime_ns
        except OSError:
            continue
    return times


def fingerprint_nntune(before: dict[str, int]) -> dict[str, tuple[str, str]]:
    """Every loaded nntune module with its file, relative to the ``nntune`` package's
    folder, and the SHA-256 of that file's bytes: what the server's modules were built from.
    Left out (so that a child drops them all): a module whose file is gone, lies elsewhere,
    or whose modification time is not the one in ``before`` (:func:`stat_nntune`, taken
    before the imports), since its bytes may not be the ones that were imported."""
    package = sys.modules.get("nntune")
    if package is None or not getattr(package, "__path__", None):
        return {}
    root = Path(next(iter(package.__path__)))
    prints = {}
    for name, module in list(sys.modules.items()):
        if not _is_nntune(name):
            continue
        file = getattr(module, "__file__", None)
        if not file:
            continue
        try:
            relative = Path(file).relative_to(root)
            if Path(file).stat().st_mtime_ns == before.get(str(file)):
                prints[name] = (relative.as_posix(), _digest(Path(file)))
        except (ValueError, OSError):
            continue
    return prints


def adopt_or_drop_nntune(fingerprints: dict[str, tuple[str, str]]) -> bool:
    """In a forked stage, after ``sys.path`` is the stage's: keep the nntune modules the
    server imported when the ``nntune`` package the stage would import holds, for each of
    them, a file with the same bytes (a module is what its source makes it), re-pointed at
    the stage's files (``__file__``, a package's ``__path__``, the spec), so that whatever
    they import later comes from the stage's copy. Otherwise drop them all: the stage
    imports its own copy afresh. Whether they were kept. Code objects keep the server's file
    names, so a traceback names the server's copy of the same lines."""
    names = [name for name in sys.modules if _is_nntune(name)]
    root = nntune_root(sys.path)
    same = root is not None and all(
        name in fingerprints and _same_file(root / fingerprints[name][0], fingerprints[name][1])
        for name in names
    )
    if not same or root is None:  # (root is not None whenever same: for the type checker)
        for name in names:
            del sys.modules[name]
        return False
    for name in names:
        _repoint(sys.modules[name], root / fingerprints[name][0])
    return True


def _is_nntune(name: str) -> bool:
    return name == "nntune" or name.startswith("nntune.")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_file(path: Path, digest: str) -> bool:
    try:  # a regular file only: reading a pipe would hold up the server
        return path.is_file() and _digest(path) == digest
    except OSError:
        return False


def _repoint(module: Any, file: Path) -> None:
    """Make ``module`` look imported from ``file`` (same bytes as its own)."""
    loader = importlib.machinery.SourceFileLoader(module.__name__, str(file))
    module.__file__ = str(file)
    module.__cached__ = importlib.util.cache_from_source(str(file))
    module.__loader__ = loader
    spec = getattr(module, "__spec__", None)
    if hasattr(module, "__path__"):  # a package: its submodules come from the stage's copy
        module.__path__ = [str(file.parent)]
    if spec is not None:
        spec.origin = str(file)
        spec.loader = loader
        spec.cached = module.__cached__
        if spec.submodule_search_locations is not None:
            spec.submodule_search_locations = module.__path__


def stage_path(argv0: str, cwd: str, pythonpath: str, base_path: list[str]) -> list[str]:
    """The ``sys.path`` of ``PYTHONPATH=pythonpath python argv0`` started in ``cwd``, on
    the server's interpreter (whose own entries are ``base_path``)."""
    entries = [str(Path(cwd, entry)) for entry in pythonpath.split(os.pathsep) if entry]
    return [str(Path(cwd, argv0).parent), *entries, *base_path]


def nntune_root(path: list[str]) -> Path | None:
    """The folder of the ``nntune`` package that ``import nntune`` finds on ``path``."""
    spec = importlib.machinery.PathFinder.find_spec("nntune", path)
    places = spec.submodule_search_locations if spec is not None else None
    return Path(next(iter(places))) if places else None


def select_backend(
    request: dict[str, Any], base_path: list[str], fingerprints: dict[str, tuple[str, str]]
) -> str | None:
    """For a stage that takes its Keras backend from its params file (a handoff with
    ``select``): put in ``request["env"]`` what ``nntune.stage.backend.select_for_stage``
    will set there (``KERAS_BACKEND``, XLA's settings), read with the server's copy of that
    module, the one the stage runs once its copy is found to have the same bytes. Returns
    why it cannot (the stage then runs cold), or ``None``."""
    name = "nntune.stage.backend"
    if name not in fingerprints:
        return f"this runner did not load {name}, which reads a stage's Keras backend"
    cwd, argv = str(request["cwd"]), [str(arg) for arg in request["argv"]]
    env = {str(key): str(value) for key, value in dict(request.get("env") or {}).items()}
    root = nntune_root(stage_path(argv[0], cwd, env.get("PYTHONPATH", ""), base_path))
    relative, digest = fingerprints[name]
    if root is None or not _same_file(root / relative, digest):
        return f"the stage's {name} differs from this runner's, which reads its Keras backend"
    from nntune.stage.backend import apply, declared, params_argument

    params = Path(cwd, params_argument(argv[1:]))
    if params.exists() and not params.is_file():  # a pipe would hold up the server
        return f"{params} is not a regular file"
    backend, deterministic = declared(params)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    apply(backend, deterministic, env)
    request["env"] = env
    return None


def loaded_nntune() -> dict[str, tuple[str, str]]:
    """Every loaded nntune module with its file, relative to the loaded ``nntune`` package's
    folder, and the SHA-256 of that file's bytes now: what a resident child of the warm
    runner keeps for its next stage (:mod:`nntune.warm.child`). Taken right after a stage,
    whose working copy does not change while it runs."""
    return fingerprint_nntune(stat_nntune())

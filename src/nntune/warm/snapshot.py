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
import sys
from pathlib import Path
from typing import Any

MTIME_SLACK = 2.0  # seconds: file systems that keep coarse modification times


def fingerprint_nntune(since: float) -> dict[str, tuple[str, str]]:
    """Every loaded nntune module with its file, relative to the ``nntune`` package's
    folder, and the SHA-256 of that file's bytes: what the server's modules were built from.
    Left out (so that a child drops them all): a module whose file is gone, lies elsewhere,
    or changed after ``since`` (when the imports began), whose bytes may not be the ones
    that were imported."""
    package = sys.modules.get("nntune")
    if package is None or not getattr(package, "__path__", None):
        return {}
    root = Path(next(iter(package.__path__)))
    prints = {}
    for name, module in list(sys.modules.items()):
        if name != "nntune" and not name.startswith("nntune."):
            continue
        file = getattr(module, "__file__", None)
        if not file:
            continue
        try:
            relative = Path(file).relative_to(root)
            if Path(file).stat().st_mtime < since - MTIME_SLACK:
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
    names = [m for m in sys.modules if m == "nntune" or m.startswith("nntune.")]
    spec = importlib.machinery.PathFinder.find_spec("nntune", sys.path)
    places = spec.submodule_search_locations if spec is not None else None
    root = Path(next(iter(places))) if places else None
    same = root is not None and all(
        name in fingerprints and _same_file(root / fingerprints[name][0], fingerprints[name][1])
        for name in names
    )
    if not same or root is None:
        for name in names:
            del sys.modules[name]
        return False
    for name in names:
        _repoint(sys.modules[name], root / fingerprints[name][0])
    return True


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_file(path: Path, digest: str) -> bool:
    try:
        return _digest(path) == digest
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

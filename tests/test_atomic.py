"""A folder output is replaced as a whole (``artifacts.atomic_dir``): an exception, or a
SIGKILL at a chosen moment, leaves the old folder or the new one, never a mix, and what a
killed write left behind is cleared at the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from nntune.stage import artifacts

OLD = {"a.txt": "old a", "b.txt": "old b"}
NEW = {f"part{i:02}.txt": f"new {i}" for i in range(20)}


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}


def _state(target: Path) -> str:
    """old, new, absent or mix: what a reader of ``target`` would find now."""
    if not target.exists():
        return "absent"
    files = _files(target)
    return "old" if files == OLD else "new" if files == NEW else "mix"


def _old_folder(tmp_path: Path) -> Path:
    target = tmp_path / "out"
    target.mkdir()
    for name, text in OLD.items():
        (target / name).write_text(text)
    return target


def _can_exchange(folder: Path) -> bool:
    (folder / "probe_a").mkdir()
    (folder / "probe_b").mkdir()
    try:
        return artifacts._exchange(folder / "probe_a", folder / "probe_b")
    finally:
        (folder / "probe_a").rmdir()
        (folder / "probe_b").rmdir()


def _siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_the_new_folder_replaces_the_old_as_a_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:  # a system or file system without RENAME_EXCHANGE
        monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    target = _old_folder(tmp_path)
    with artifacts.atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert (tmp / ".gitignore").read_text() == "*\n"  # git never sees it half-built
        for name, text in NEW.items():
            (tmp / name).write_text(text)
        assert _state(target) == "old"  # untouched until the swap
    assert _state(target) == "new"  # no old file left over, and no .gitignore
    assert _siblings(target) == []


def test_onto_nothing_and_into_a_missing_parent(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out"
    with artifacts.atomic_dir(target) as tmp:
        (tmp / "x.txt").write_text("x")
    assert _files(target) == {"x.txt": "x"}
    assert _siblings(target) == []


def test_an_exception_midway_leaves_the_old_folder_and_no_temporary_one(tmp_path: Path) -> None:
    target = _old_folder(tmp_path)
    with pytest.raises(RuntimeError, match="midway"), artifacts.atomic_dir(target) as tmp:
        (tmp / "part00.txt").write_text("new 0")
        raise RuntimeError("midway")
    assert _state(target) == "old"
    assert _siblings(target) == []


def test_leftovers_of_a_killed_write_are_cleared_at_the_next_start(tmp_path: Path) -> None:
    target = _old_folder(tmp_path)
    stale = tmp_path / ".out.tmp-99999"  # a run killed while writing
    stale.mkdir()
    (stale / "part00.txt").write_text("half")
    with artifacts.atomic_dir(target) as tmp:
        assert not stale.exists()
        (tmp / "x.txt").write_text("x")
    assert _siblings(target) == []


def test_an_old_folder_set_aside_comes_back_when_the_new_one_never_arrived(
    tmp_path: Path,
) -> None:
    """The two-rename swap killed between its renames: ``out`` is absent, the old folder
    is at ``.out.old-<pid>``; recovery puts it back instead of losing it."""
    target = _old_folder(tmp_path)
    target.rename(tmp_path / ".out.old-99999")
    artifacts.recover_interrupted(target)
    assert _state(target) == "old"
    assert _siblings(target) == []
    # With the new folder in place, a leftover old one is simply removed.
    (tmp_path / ".out.old-99998").mkdir()
    artifacts.recover_interrupted(target)
    assert _state(target) == "old" and _siblings(target) == []


# The child fills a new folder over the old one, one file per line it prints; MOMENT says
# where it dies by its own SIGKILL (the parent kills it itself for "writing").
CHILD = """
import os, signal, sys, time
from pathlib import Path
from nntune.stage import artifacts

target, moment = Path(sys.argv[1]), sys.argv[2]
NEW = {f"part{i:02}.txt": f"new {i}" for i in range(20)}

def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)

if moment.startswith("two-renames"):
    artifacts._exchange = lambda a, b: False
if moment == "two-renames:between":  # after the old folder went aside, before the new came
    rename = Path.rename
    Path.rename = lambda self, to: (rename(self, to), ".old-" in str(to) and die())[0]
if moment == "renameat2:after":  # swapped, the old one not yet removed
    exchange = artifacts._exchange
    artifacts._exchange = lambda a, b: (exchange(a, b), die())[0]
with artifacts.atomic_dir(target) as tmp:
    for name, text in NEW.items():
        (tmp / name).write_text(text)
        print(name, flush=True)
        time.sleep(0.02 if moment == "writing" else 0)
"""


@pytest.mark.parametrize(
    ("moment", "found", "recovered"),
    [
        ("writing", "old", "old"),  # SIGKILL from outside, half the files written
        ("renameat2:after", "new", "new"),
        ("two-renames:between", "absent", "old"),  # the one window, closed by recovery
        ("two-renames:done", "new", "new"),  # a clean run, for contrast
    ],
)
def test_a_sigkill_at_any_moment_leaves_the_old_folder_or_the_new_one(
    tmp_path: Path, moment: str, found: str, recovered: str
) -> None:
    if moment.startswith("renameat2") and not _can_exchange(tmp_path):
        pytest.skip("this file system cannot swap two folders in one step")
    target = _old_folder(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(target), moment],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as child:
        assert child.stdout is not None
        if moment == "writing":
            for _ in range(10):
                child.stdout.readline()
            os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=60)
    clean = moment == "two-renames:done"
    assert child.returncode == (0 if clean else -signal.SIGKILL)
    assert _state(target) == found
    assert bool(_siblings(target)) is not clean  # something was left behind by the kill
    artifacts.recover_interrupted(target)  # what the next start does first
    assert _state(target) == recovered
    assert _siblings(target) == []


def test_a_saved_model_is_byte_identical_whenever_the_model_is(tmp_path: Path) -> None:
    """In another second and in another process: Keras writes the date and the memory
    addresses of shared objects (``shared_object_id``) into the archive."""
    import time

    import keras
    import numpy as np

    save = [sys.executable, "-c", SAVE_SEEDED_MODEL]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    subprocess.run([*save, str(tmp_path / "a.keras")], check=True, env=env)
    assert b"shared_object_id" in _member(tmp_path / "a.keras", "config.json")
    time.sleep(1.1)  # Keras stamps the second of the save into the archive
    subprocess.run([*save, str(tmp_path / "b.keras")], check=True, env=env)
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    back = keras.saving.load_model(tmp_path / "b.keras")
    x = np.ones((2, 4), dtype="float32")
    assert back.predict(x, verbose=0).shape == (2, 3)


# The same seeded model, fitted one step and saved, in a fresh process each time.
SAVE_SEEDED_MODEL = """
import sys, keras, numpy as np
from conftest import parse_params, repo_params_dict, shrink
from nntune.stage import artifacts
from nntune.stage.model import build_model
keras.utils.set_random_seed(0)
params = parse_params(shrink(repo_params_dict()), source="tiny")
net = build_model(params.model, params.train, 4, "multiclass", 3)
net.fit(np.ones((2, 4), dtype="float32"), np.array([0, 2]), epochs=1, verbose=0)
artifacts.save_model(net, sys.argv[1])
"""


def _member(path: Path, name: str) -> bytes:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return archive.read(name)

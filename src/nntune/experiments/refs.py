"""Experiment refs and ``dvc.lock``: which commit each experiment is, the md5 of an output
it recorded (what a warm start continues), the git-tracked files it committed, and any file
or output of it read back whole (the model ``nntune predict`` uses)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from nntune.config.mapping import flatten, override_args
from nntune.experiments.repo import DvcRepo, ExperimentError


def experiment_commits(repo: DvcRepo, baseline: str) -> dict[str, str]:
    """Every experiment of ``baseline`` that has a git ref, by name: its commit. A ref is
    what survives DVC's queue clean-ups, so it is the record of a finished experiment."""
    from dvc.repo.experiments.utils import exp_refs_by_baseline

    refs = exp_refs_by_baseline(repo.scm, {baseline}).get(baseline, [])
    return {ref.name: str(repo.scm.get_ref(str(ref))) for ref in refs}


def output_md5(repo: DvcRepo, rev: str, stage: str, path: str) -> str:
    """The md5 dvc.lock records at commit ``rev`` for output ``path`` of ``stage``: how a
    later experiment names, exactly, the file it builds on."""
    fs = repo.scm.get_fs(rev)
    lock_path = (Path(repo.root_dir).relative_to(repo.scm.root_dir) / "dvc.lock").as_posix()
    try:
        with fs.open(lock_path, encoding="utf-8") as stream:
            lock = yaml.safe_load(stream) or {}
    except FileNotFoundError:
        raise ExperimentError(f"{rev[:7]}: no dvc.lock; the experiment did not run") from None
    for out in lock.get("stages", {}).get(stage, {}).get("outs", []):
        if out.get("path") == path and out.get("md5"):
            return str(out["md5"])
    raise ExperimentError(f"{rev[:7]}: dvc.lock records no md5 for {stage} output {path}")


def read_files(
    root: str | Path, wanted: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str | None]:
    """The text of each git-tracked file ``(rev, path)`` (``path`` relative to the project
    root, which may lie below the git root), None where commit ``rev`` has no such file.
    One ``git cat-file --batch`` answers them all: 50 experiments' curves in one process."""
    wanted = list(dict.fromkeys(wanted))
    if not wanted:
        return {}
    try:
        prefix = _git(root, ["rev-parse", "--show-prefix"]).decode().strip()
        requests = "".join(f"{rev}:{prefix}{path}\n" for rev, path in wanted)
        out = _git(root, ["cat-file", "--batch"], requests.encode())
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.decode(errors="replace").strip() if hasattr(exc, "stderr") else exc
        raise ExperimentError(
            f"{Path(root).resolve()}: could not read the experiments' files from git "
            f"({detail}); check that git is installed and the folder is a git repository"
        ) from None
    texts: dict[tuple[str, str], str | None] = {}
    at = 0
    for key in wanted:
        end = out.index(b"\n", at)
        header = out[at:end].split(b" ")
        at = end + 1
        if not header[-1].isdigit():  # "<name> missing" (or ambiguous): nothing follows
            texts[key] = None
            continue
        size = int(header[-1])  # "<oid> <type> <size>", then the object and a newline
        blob = header[-2] == b"blob"  # a folder's object is skipped too
        texts[key] = out[at : at + size].decode("utf-8", errors="replace") if blob else None
        at += size + 1
    return texts


def read_outputs(root: str | Path, rev: str, paths: Iterable[str]) -> dict[str, bytes]:
    """The bytes of each file in ``paths`` (relative to the project root) as commit or
    experiment ``rev`` (a name DVC knows: an experiment's, a branch, a commit) recorded it:
    a DVC output from the cache (or the default remote), a git-tracked file from git. The
    workspace, its index and the queue are never touched."""
    from dvc.api import DVCFileSystem

    where = Path(root).resolve()
    fs = DVCFileSystem(url=str(where), rev=rev)  # opens the repository on first use
    found: dict[str, bytes] = {}
    try:
        for path in paths:
            found[path] = _read_bytes(fs, rev, path, where)
    finally:
        fs.close()
    return found


def _read_bytes(fs: Any, rev: str, path: str, where: Path) -> bytes:
    from dvc.scm import RevError

    try:
        return bytes(fs.read_bytes(path))
    except RevError:
        raise ExperimentError(
            f"{where}: no experiment or commit named {rev!r}; `nntune compare` (or "
            "`dvc exp show`) lists the experiments"
        ) from None
    except FileNotFoundError:
        raise ExperimentError(
            f"{rev}: has no {path} (neither in git nor in DVC's cache); check that it "
            "finished (`nntune compare`), or `dvc pull` its outputs"
        ) from None


def _git(root: str | Path, args: list[str], stdin: bytes = b"") -> bytes:
    done = subprocess.run(["git", *args], cwd=root, input=stdin, capture_output=True, check=True)
    return done.stdout


def changed_paths(repo: DvcRepo, base: str, rev: str) -> list[str]:
    out = subprocess.run(
        ["git", "diff", "--name-only", base, rev, "--", "."],
        cwd=repo.root_dir,
        capture_output=True,
        text=True,
        check=True,
    )
    # DVC stashes its own bookkeeping (.dvc/tmp/repro.dat) with every queued entry.
    paths = [Path(repo.scm.root_dir, p).relative_to(repo.root_dir) for p in out.stdout.split()]
    return [p.as_posix() for p in paths if p.parts[:2] != (".dvc", "tmp")]


def param_changes(repo: DvcRepo, base: str, rev: str, label: str) -> list[str]:
    before, after = (flatten(_params_at(repo, r)) for r in (base, rev))
    dropped = sorted(set(before) - set(after))
    if dropped:
        raise ExperimentError(f"queued experiment {label} removes params {', '.join(dropped)}")
    return override_args({k: v for k, v in after.items() if k not in before or before[k] != v})


def _params_at(repo: DvcRepo, rev: str) -> dict[str, Any]:
    path = (Path(repo.root_dir).relative_to(repo.scm.root_dir) / "params.yaml").as_posix()
    with repo.scm.get_fs(rev).open(path, encoding="utf-8") as stream:
        loaded = yaml.safe_load(stream) or {}
    return dict(loaded)

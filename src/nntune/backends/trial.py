"""One trial on any machine, with git and a DVC remote as the system of record.

``nntune trial`` (``run_trial``) is the per-trial entry point every executor calls: a Ray
task, a Slurm array element, a shell loop. It clones the project at the baseline commit
(reusing a cached bare clone per remote), pulls what the baseline pushed to the DVC remote
(so DVC skips the stages the trial shares with it), runs ``dvc exp run -n NAME -S ...``,
pushes the experiment with ``dvc exp push origin NAME`` and then checks that the ref really
arrived: a name collision makes ``dvc exp push`` warn and still exit 0. It is idempotent:
an experiment the remote already has is skipped, so a retry never runs or pushes it twice.

Everything here drives the ``git`` and ``dvc`` command lines in a throw-away clone, as a
user would; the project's own repository is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import yaml

from nntune.config.mapping import flatten, typed_value
from nntune.errors import NntuneError
from nntune.experiments import same_params, use_this_python
from nntune.locks import LockHeldError, record_lock

GIT_REMOTE = "origin"  # the remote experiments are pushed to, in every clone
STALE_SECONDS = 60  # an unlocked clone folder older than this was left by a killed attempt
LOG_TAIL = 25  # lines of a failed command's output quoted in the error


class TrialError(NntuneError):
    pass


@dataclass(frozen=True)
class TrialSpec:
    """What a trial is: the project's git remote, the baseline commit, the experiment name
    and its ``-S key=value`` overrides."""

    git_url: str
    rev: str
    name: str
    overrides: tuple[str, ...] = ()

    def command(self, executable: str = "nntune") -> list[str]:
        """The ``nntune trial`` command line that runs this spec."""
        args = [executable, "trial", self.git_url, "--rev", self.rev, "--name", self.name]
        for override in self.overrides:
            args += ["-S", override]
        return args


Status = Literal["pushed", "skipped", "duplicate"]


@dataclass
class TrialResult:
    """``pushed``: this run's experiment is on the remote. ``skipped``: the remote already
    had it, nothing ran. ``duplicate``: another attempt pushed the same name with the same
    params first (a retry racing a lost worker); the remote keeps that one."""

    name: str
    status: Status
    commit: str
    host: str = field(default_factory=socket.gethostname)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrialResult:
        return cls(**json.loads(text))


def exp_ref(rev: str, name: str) -> str:
    """DVC's git ref of experiment ``name`` on baseline ``rev`` (what ``dvc exp push``
    creates on the remote)."""
    if len(rev) != 40:
        raise TrialError(f"--rev must be a full 40-character commit id, got {rev!r}")
    return f"refs/exps/{rev[:2]}/{rev[2:]}/{name}"


def default_cache_dir() -> Path:
    """Where clones and DVC's shared cache live on a machine: ``$NNTUNE_CACHE_DIR`` or
    ``~/.cache/nntune``."""
    configured = os.environ.get("NNTUNE_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "nntune"


def run_trial(spec: TrialSpec, cache_dir: Path | None = None) -> TrialResult:
    """Run ``spec`` once and leave its experiment on the remote (see the module doc)."""
    use_this_python()
    cache = (cache_dir or default_cache_dir()).resolve()
    ref = exp_ref(spec.rev, spec.name)
    existing = remote_commit(spec.git_url, ref)
    if existing:
        _check_same_point(spec, ref, existing, cache)
        return TrialResult(spec.name, "skipped", existing)
    log_path = cache / "logs" / f"{spec.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    try:
        with _work_dir(cache / "work", spec.name) as work, log_path.open("a") as log:
            log.write(f"# {spec.name} on {socket.gethostname()}, pid {os.getpid()}\n")
            shell = _Shell(work, log)
            with _timed(seconds, "clone"):
                _clone(spec, work, cache, shell)
            with _timed(seconds, "pull"):
                _pull_baseline(shell, cache)
                for parent in _warm_start_parents(spec):
                    # Its models/last.keras, which the warmstart stage copies by md5.
                    shell("dvc", "exp", "pull", GIT_REMOTE, parent)
            with _timed(seconds, "run"):
                overrides = [arg for o in spec.overrides for arg in ("-S", o)]
                shell("dvc", "exp", "run", "--name", spec.name, *overrides)
            local = shell("git", "rev-parse", ref).strip()
            with _timed(seconds, "push"):
                shell("dvc", "exp", "push", GIT_REMOTE, spec.name)
            status = _verify_push(spec, ref, local, shell)
    except TrialError as exc:
        raise TrialError(f"trial {spec.name}: {exc}\n(full log: {log_path})") from None
    return TrialResult(spec.name, status, local, seconds=seconds)


def _check_same_point(spec: TrialSpec, ref: str, commit: str, cache: Path) -> None:
    """A skip must be a retry of the same point: the remote experiment's params.yaml has
    every ``-S`` value of ``spec``. Otherwise two points share a name."""
    mirror = _mirror(spec.git_url, cache)
    mirror.parent.mkdir(parents=True, exist_ok=True)
    with record_lock(mirror.with_suffix(".lock")):
        if not (mirror / "HEAD").is_file():
            _git("init", "--quiet", "--bare", str(mirror))
        _git("fetch", "--quiet", spec.git_url, ref, cwd=mirror)
        recorded = flatten(yaml.safe_load(_git("show", f"{commit}:params.yaml", cwd=mirror)))
    for override in spec.overrides:
        key, _, value = override.partition("=")
        if not same_params({key: recorded.get(key)}, {key: typed_value(value)}):
            raise TrialError(
                f"name collision: {spec.git_url} already has experiment {spec.name} on "
                f"{spec.rev[:7]} with {key}={recorded.get(key)!r}, not {value}; queue this "
                "point under another name"
            )


def _git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise TrialError(f"`git {' '.join(args)}` exited {out.returncode}: {out.stderr.strip()}")
    return out.stdout


def _mirror(git_url: str, cache: Path) -> Path:
    """The bare clone cached per remote URL on this machine."""
    return cache / "git" / f"{hashlib.sha1(git_url.encode()).hexdigest()[:16]}.git"


def remote_commit(git_url: str, ref: str) -> str | None:
    """The commit ``ref`` points at on the remote, or None when it has no such ref."""
    out = subprocess.run(
        ["git", "ls-remote", git_url, ref], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise TrialError(
            f"cannot read the git remote {git_url}: {out.stderr.strip()}; check the URL "
            "and that this machine can reach it"
        )
    for line in out.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return sha
    return None


def watch_parent() -> None:
    """Die with the parent, children included. A Ray worker that is lost with its node is
    killed without a chance to clean up, and the ``dvc exp run`` it started would run on
    (and might push) beside the retry. When this process leads its own process group (the
    Ray task starts it so), a thread kills the whole group once the parent is gone."""
    if os.getpgid(0) != os.getpid():
        return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


class _Shell:
    """Runs commands in the clone, appends their output to the trial's log and turns a
    failure into a TrialError that quotes the command and the log's last lines."""

    def __init__(self, cwd: Path, log: TextIO) -> None:
        self.cwd = cwd
        self.log = log

    def __call__(self, *cmd: str, cwd: Path | None = None, check: bool = True) -> str:
        self.log.write(f"$ {' '.join(cmd)}\n")
        self.log.flush()
        out = subprocess.run(
            list(cmd),
            cwd=cwd or self.cwd,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "DVC_NO_ANALYTICS": "1"},
        )
        self.log.write(out.stdout + out.stderr)
        self.log.flush()
        if check and out.returncode != 0:
            tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-LOG_TAIL:])
            raise TrialError(f"`{' '.join(cmd)}` exited {out.returncode}:\n{tail}")
        return out.stdout


def _clone(spec: TrialSpec, work: Path, cache: Path, shell: _Shell) -> None:
    """Clone at ``spec.rev``, borrowing objects from a bare clone cached per remote URL
    (fetched, not cloned, from the second trial on a machine)."""
    mirror = _mirror(spec.git_url, cache)
    mirror.parent.mkdir(parents=True, exist_ok=True)
    with record_lock(mirror.with_suffix(".lock")):
        if (mirror / "HEAD").is_file():
            heads = "+refs/heads/*:refs/heads/*"
            shell("git", "fetch", "--quiet", "--prune", spec.git_url, heads, cwd=mirror)
        else:
            shell("git", "clone", "--quiet", "--bare", spec.git_url, str(mirror), cwd=cache)
    borrow = ["--reference", str(mirror), "--dissociate"]
    shell("git", "clone", "--quiet", "--no-checkout", *borrow, spec.git_url, str(work), cwd=cache)
    has_rev = shell("git", "cat-file", "-t", spec.rev, check=False).strip() == "commit"
    if not has_rev:
        raise TrialError(
            f"commit {spec.rev[:7]} is not on the remote {spec.git_url}; push it first "
            "(git push origin HEAD)"
        )
    shell("git", "checkout", "--quiet", "--detach", spec.rev)


def _pull_baseline(shell: _Shell, cache: Path) -> None:
    """Share one DVC cache between the trials of a machine and pull what the baseline
    pushed, so that ``dvc exp run`` skips validate and prepare like a local queued trial.
    What the remote lacks is rebuilt by the run (``--allow-missing``)."""
    if not shell("dvc", "remote", "default", check=False).strip():
        raise TrialError(
            "the project has no default DVC remote, so the experiment's models could not be "
            "shared; run `nntune remote setup GIT_URL DVC_URL`, commit .dvc/config and push"
        )
    shell("dvc", "config", "--local", "cache.dir", str(cache / "dvc-cache"))
    shell("dvc", "pull", "--allow-missing", "--quiet")


def _warm_start_parents(spec: TrialSpec) -> list[str]:
    """The experiment a promoted trial continues (``train.warm_start.experiment``)."""
    key = "train.warm_start.experiment="
    names = [o.removeprefix(key).strip("'\"") for o in spec.overrides if o.startswith(key)]
    return [name for name in names if name]


def _verify_push(spec: TrialSpec, ref: str, local: str, shell: _Shell) -> Status:
    remote = remote_commit(spec.git_url, ref)
    if remote == local:
        return "pushed"
    if remote is None:
        raise TrialError(f"`dvc exp push` exited 0 but {spec.git_url} has no {ref}")
    # Another attempt won the race (the remote kept its ref, DVC only warned): the same
    # params make it the same trial; anything else is a real name collision.
    shell("git", "fetch", "--quiet", spec.git_url, ref)
    theirs = _params_at(shell, "FETCH_HEAD")
    if theirs == _params_at(shell, local):
        return "duplicate"
    raise TrialError(
        f"name collision: {spec.git_url} already has experiment {spec.name} on "
        f"{spec.rev[:7]} with other params; queue this point under another name"
    )


def _params_at(shell: _Shell, rev: str) -> dict[str, Any]:
    return flatten(yaml.safe_load(shell("git", "show", f"{rev}:params.yaml")) or {})


@contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = round(time.perf_counter() - start, 3)


@contextmanager
def _work_dir(parent: Path, name: str) -> Iterator[Path]:
    """A fresh clone folder, locked while the trial runs and removed after it. Folders
    whose lock nobody holds are left by attempts that were killed: swept here."""
    parent.mkdir(parents=True, exist_ok=True)
    for lock in parent.glob("*.lock"):
        with contextlib.suppress(FileNotFoundError):  # another sweeper was faster
            if time.time() - lock.stat().st_mtime < STALE_SECONDS:
                continue  # maybe created a moment ago, its owner about to lock it
        try:
            with record_lock(lock, wait=False):
                shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
                lock.unlink(missing_ok=True)
        except (LockHeldError, FileNotFoundError):
            continue  # a running trial's, or swept by another sweeper
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    with record_lock(work.with_suffix(".lock")):
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
            work.with_suffix(".lock").unlink(missing_ok=True)


def parse_overrides(values: Sequence[str]) -> tuple[str, ...]:
    """Check ``-S key=value`` arguments: one value each (a trial is one point)."""
    for value in values:
        key, sep, _ = value.partition("=")
        if not sep or not key.strip():
            raise TrialError(f"-S {value!r}: expected KEY=VALUE, e.g. -S train.batch_size=64")
    return tuple(values)

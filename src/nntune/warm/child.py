"""The warm runner's forked child: becomes the stage a client handed over, and, once a stage
has ended well, may stay *resident*: it keeps its framework runtime (TensorFlow's or JAX's
thread pools, AutoGraph's conversions, JAX's compiled steps, the first ``tf.data``
pipeline), and the server hands it the next stage of the same working copy instead of
forking a fresh child (:mod:`nntune.warm.server`).

A stage ends *well* when it reaches :func:`nntune.stage.entry.exit_without_teardown` with
code 0 (every stage script's success path). Under a resident child that function raises
``SystemExit(0)`` marked ``nntune_resident`` instead of ending the process. Any other end (an
error, an exception, a signal, a script without that call, a stage of an older nntune)
ends the process as it always did, and the server relays its exit status.

Between two stages the child:

- flushes and releases the stage's standard streams (``/dev/null`` in their place), so that
  whoever reads them (DVC, the executor's log) sees them closed when the stage's process
  exits;
- clears Keras' session (layer names and uids, as in a fresh process) and collects garbage;
- records the bytes of every nntune module it has loaded, so that the next stage keeps them
  only where its copy holds the same bytes, and imports its own copy afresh otherwise
  (:func:`nntune.warm.snapshot.adopt_or_drop_nntune`): every stage runs its own snapshot;
- takes a next stage only when what its runtime was started with is the same: the
  ``runtime`` section of the stage's params file (device, seed, backend settings) and the
  ``CUDA_*`` and ``XLA_*`` settings; otherwise it ends, and the server forks a fresh child;
- ends after :data:`RESIDENT_JOBS_ENV` stages (default :data:`RESIDENT_JOBS`), so that its
  memory stays bounded, and whenever the server closes its end (the run stops).

Each stage reseeds itself (``seed_everything`` in the stage's ``main``), so its numbers do
not depend on what ran before it in the process.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import socket
import sys
import types
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from nntune.warm.client import (
    GO,
    PROFILE_CLIENT_ENV,
    PROFILE_ENV,
    SOCKET_ENV,
    read_message,
    send_message,
)
from nntune.warm.snapshot import adopt_or_drop_nntune, loaded_nntune, stage_path

NOT_RUN = 70  # a child's exit code when its go did not come (nobody is told it)
RESIDENT_ENV = "NNTUNE_WARM_RESIDENT"  # set in a resident child; nntune.stage.entry reads it
RESIDENT_JOBS_ENV = "NNTUNE_WARM_RESIDENT_JOBS"  # stages per child; 1: a fresh child each
# A resident child grows by about 9 MB per digits train stage (Keras' and TensorFlow's
# per-model caches survive clear_session: 4.4 MB per model in a bare Keras loop), so it
# ends after 10 stages (benchmarks/worker_memory.py).
RESIDENT_JOBS = 10
HANDOVER_TIMEOUT = 10.0  # seconds for a resident child to take or decline a next stage


def resident_jobs(env: dict[str, str] | os._Environ[str]) -> int:
    """How many stages a child may run (:data:`RESIDENT_JOBS_ENV`); 1 means one each."""
    try:
        return max(1, int(env.get(RESIDENT_JOBS_ENV) or RESIDENT_JOBS))
    except ValueError:
        return RESIDENT_JOBS


def runtime_key(request: dict[str, Any]) -> str:
    """What a child's runtime was started with, for the stage of ``request``: the
    ``runtime`` section of its params file and the CUDA and XLA settings of its environment.
    A resident child takes only stages with the same key. ``""``: unreadable (never taken)."""
    import yaml

    env = dict(request.get("env") or {})
    argv = [str(arg) for arg in request.get("argv") or []]
    # The stage's first argument, as nntune.stage.backend.params_argument reads it.
    first = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else "params.yaml"
    params = Path(str(request.get("cwd")), first)
    try:
        if not params.is_file():  # a pipe would hold the child up
            return ""
        section = (yaml.safe_load(params.read_text(encoding="utf-8")) or {}).get("runtime")
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return ""
    settings = {k: v for k, v in env.items() if k.startswith(("CUDA_", "XLA_"))}
    return json.dumps([section, settings], sort_keys=True, default=str)


@dataclass
class Job:
    """One or more stages, run in a forked child of the server."""

    request: dict[str, Any]
    fds: list[int]  # the stage's standard streams; with a gate, they come through it
    base_path: list[str]
    gate: socket.socket | None = None  # the child's end of the pair the go comes through
    fingerprints: dict[str, tuple[str, str]] = field(default_factory=dict)  # fingerprint_nntune
    jobs: int = 1  # stages this child may run (resident_jobs)

    def run(self) -> None:
        """Run the handed stage, and as long as this child stays resident, the next ones.
        Returns when a stage's script ended without a resident end (the process then exits
        as a cold one would); exits without running a stage whose go does not come."""
        os.setsid()  # the server kills this group if the stage's client goes away
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        started_with = None  # the runtime key of the first stage (read after it ended well)
        for done in range(1, self.jobs + 1):
            resident = done < self.jobs and self.gate is not None
            if not self._run_stage(resident):
                return  # the script ended without its resident end: as a cold process
            self._release_stage()
            if started_with is None:
                started_with = runtime_key(self.request)
            if not resident or self.gate is None or not started_with:
                _exit_now(0)
            try:
                send_message(self.gate, {"exit": 0})
                _tidy()  # after the report: off the stage's time, before the next stage
                request = read_message(self.gate)
            except OSError:
                request = None
            if not isinstance(request, dict) or not isinstance(request.get("request"), dict):
                _exit_now(0)  # the server closed its end: the run stops, or it forks anew
            taken = runtime_key(request["request"]) == started_with
            with suppress(OSError):
                send_message(self.gate, {"taken": taken})
            if not taken:
                _exit_now(0)
            self.request = request["request"]

    def _run_stage(self, resident: bool) -> bool:
        """Wait for the go, become the stage's process and run its script as ``__main__``.
        Whether it ended with a resident end (only where ``resident``)."""
        # Ctrl-C as in a cold stage: Python's default, or ignored where the stage's is.
        ignored = self.request.get("sigint_ignored") is True
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
        if self.gate is not None:
            try:  # b"": the client or the server went away
                go, self.fds, _, _ = socket.recv_fds(self.gate, len(GO), 3)
            except BaseException:  # whatever it is (a Ctrl-C), the stage must not run
                go = b""
            if go != GO or len(self.fds) != 3:
                os._exit(NOT_RUN)
            if not resident:
                self.gate.close()
                self.gate = None
        for target, fd in enumerate(self.fds):
            os.dup2(fd, target)
            os.close(fd)
        _reopen_stdio()
        argv = list(self.request["argv"])
        os.chdir(self.request["cwd"])
        os.environ.clear()
        os.environ.update(self.request["env"])
        os.environ.pop(SOCKET_ENV, None)  # inside the runner there is no runner
        os.environ.pop(RESIDENT_ENV, None)  # only this child says whether it stays
        if resident:
            os.environ[RESIDENT_ENV] = "1"
        if os.environ.get(PROFILE_ENV):  # the profile times the stage from its client's start
            os.environ[PROFILE_CLIENT_ENV] = str(self.request["pid"])
        script = Path(argv[0]).absolute()
        sys.path[:] = stage_path(
            str(script), str(Path.cwd()), os.environ.get("PYTHONPATH", ""), self.base_path
        )
        importlib.invalidate_caches()
        adopt_or_drop_nntune(self.fingerprints)
        sys.argv = argv
        # What `python SCRIPT` does: a fresh __main__ with an absolute __file__.
        main = types.ModuleType("__main__")
        main.__file__ = str(script)
        sys.modules["__main__"] = main
        try:
            exec(compile(script.read_bytes(), str(script), "exec"), main.__dict__)
        except SystemExit as exc:
            if resident and getattr(exc, "nntune_resident", False) and exc.code in (0, None):
                return True
            raise
        return False

    def _release_stage(self) -> None:
        """Right after a stage: its streams released, and the bytes of the nntune modules it
        ran recorded for the next stage."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late Ctrl-C is not the next stage's
        sys.stdout.flush()
        sys.stderr.flush()
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.close(null)
        self.fingerprints = loaded_nntune()


def _tidy() -> None:
    """Between two stages: Keras' session cleared (layer names and uids start over, as in
    a new process) and the last stage's objects collected. The server froze what it had
    imported (``gc.freeze``), so the collection scans only the stage's objects: 15 ms
    after a digits trial, against 0.4 s unfrozen. Done after the report all the same."""
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.backend.clear_session()  # collects garbage too
    else:
        gc.collect()


def _exit_now(code: int) -> NoReturn:
    """End the child as the stages end theirs: exit handlers, then no teardown."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _reopen_stdio() -> None:
    """Standard streams on the stage's descriptors, buffered as a fresh interpreter would
    buffer them (line-buffered on a terminal; stderr always)."""
    sys.stdin = open(0, encoding=sys.stdin.encoding, closefd=False)  # noqa: SIM115
    sys.stdout = open(  # noqa: SIM115
        1, "w", buffering=1 if os.isatty(1) else -1, encoding=sys.stdout.encoding, closefd=False
    )
    sys.stderr = open(  # noqa: SIM115
        2, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace", closefd=False
    )

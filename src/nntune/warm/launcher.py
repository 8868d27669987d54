"""Start and stop the warm runner's servers for the duration of one run, and point the
stages of DVC's queue workers at them (through the environment they inherit)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from nntune.stage.backend import declared
from nntune.warm.client import (
    BACKEND_ENV,
    FLAVOURS,
    SOCKET_ENV,
    WARM_BACKEND_ENV,
    flavour_socket,
    process_alive,
)

# -- the run's side: start and stop a server ----------------------------------------------


@contextmanager
def warm_runner(
    enabled: bool = True,
    flavours: dict[str, tuple[str, ...]] = FLAVOURS,
    backends: Sequence[str] | None = None,
) -> Iterator[str | None]:
    """Start the servers (one per flavour) for the duration of a run and point the stages of
    DVC's queue workers (started inside the block: they inherit the environment) at them.

    Yields the base socket path, or ``None`` when disabled or when a server did not start
    (the stages then run cold). On leaving, the servers stop accepting and exit once the
    stages they run have finished; stages that start later run cold. The servers are daemons
    (they outlive the run while stages they started still run) and stop by themselves if the
    run's process dies.

    Each flavour has a server per Keras backend in ``backends``: by default the one the
    project's params.yaml declares (``runtime.backend``). A trial queued with another
    backend runs its stages cold."""
    if not enabled:
        yield None
        return
    import subprocess
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="nntune-warm-"))
    base = folder / "socket"
    if backends is None:
        backends = (declared("params.yaml")[0],)
    sockets = {
        (flavour, backend): Path(flavour_socket(base, flavour, backend))
        for flavour in flavours
        for backend in backends
    }
    for (flavour, backend), path in sockets.items():
        preload = ",".join(flavours[flavour])
        command = [sys.executable, "-m", "nntune.warm.server", str(path), "--preload", preload]
        env = {**os.environ, BACKEND_ENV: backend}  # what the server's `import keras` loads
        with Path(f"{path}.log").open("wb") as log:
            subprocess.run(
                [*command, "--owner", str(os.getpid()), "--daemon"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=folder,
                env=env,
                start_new_session=True,  # Ctrl-C stops the run, not the stages already running
                check=False,
            )
    deadline = time.monotonic() + 30
    waiting = dict(sockets)
    while waiting and time.monotonic() < deadline:
        for key, path in list(waiting.items()):
            pid = _pid(path)
            if path.exists() or (pid is not None and not process_alive(pid)):
                del waiting[key]  # listening, or dead before it listened (its log says why)
        time.sleep(0.02)
    started = all(path.exists() for path in sockets.values())
    saved = {key: os.environ.get(key) for key in (SOCKET_ENV, WARM_BACKEND_ENV)}
    if started:
        os.environ[SOCKET_ENV] = str(base)
        os.environ[WARM_BACKEND_ENV] = backends[0]  # where a stage asks first (handoff)
    try:
        yield str(base) if started else None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for path in sockets.values():
            pid = _pid(path)
            if pid is not None:
                with suppress(OSError):
                    os.kill(pid, signal.SIGTERM)  # drains, then exits


def _pid(socket_path: Path) -> int | None:
    """The pid a daemon wrote beside its socket, once it wrote it."""
    try:
        return int(Path(f"{socket_path}.pid").read_text())
    except (OSError, ValueError):
        return None

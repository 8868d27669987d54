"""A warm runner for the stage scripts of one ``nntune run``.

Every stage of a trial is a fresh process that DVC starts, and the training and evaluation
stages spend about 4 s each importing TensorFlow before they do any work: on digits that is
more than the training itself. ``nntune run`` therefore starts servers for the run
(``python -m nntune.warm.server SOCKET``) that import the stages' third-party libraries once
(TensorFlow, Keras, pandas, pyarrow, dvclive; one of them also scikit-learn's metrics, for
the evaluate stage) and then fork a child per stage. DVC still starts each stage's command
as it always does; the stage script's first call, :func:`handoff`, passes its argv, working
directory, environment and then standard streams over a Unix socket, and exits with the
child's exit code.

What keeps a forked stage equal to a cold one:

- The server imports but never initialises TensorFlow's runtime (no op, no device), so no
  runtime thread or device exists when it forks; CUDA, thread pools and devices are created
  in the child, from the child's own environment (``CUDA_VISIBLE_DEVICES`` of its worker).
- The child runs its own working copy's nntune: ``sys.path`` is rebuilt as
  ``PYTHONPATH=src python stages/X.py`` would build it in the stage's working copy, and the
  nntune modules the server imported are kept only where that copy holds the same bytes
  for each of them, else all dropped and imported afresh (``nntune.warm.snapshot``), so a
  queued experiment runs its own snapshot's code.
- Settings read while the libraries load (``TF_*``, ``KERAS_*``, the interpreter) must equal
  the server's; otherwise the server refuses and the stage runs cold, as it does when no
  server answers.
- The child gets its own session: when the stage's process dies (DVC cancels the trial), the
  server kills the child's process group. A Ctrl-C (SIGINT) that reaches the stage's process
  is passed on to the child, whose SIGINT handling is Python's default, as in a cold stage.

Crash safety: a stage runs exactly once, warm or cold, never both. The server forks the
child, which waits, and answers ``started`` with the child's pid (and the protocol it
speaks); only when the stage's process has that answer does it send the go, with its
standard streams, which the server passes on to the child. Until then anything that goes
wrong (no server, a refusal, a server that dies, another :data:`PROTOCOL`, no answer within
``NNTUNE_WARM_CONNECT_TIMEOUT`` seconds, default 60, which covers a server still importing
TensorFlow) means nothing ran: the stage runs cold, the child (if any) exits without
running it, and the server holds none of the stage's streams. After ``started`` the
stage is never rerun cold: if the server or the connection dies before the child's exit
code comes back, the stage's process stops the child (its pid came with ``started``), says
so in one line on stderr and exits with 1; ``nntune run`` runs the trial again, and
``nntune run --cold`` runs without the warm runner.

Only the standard library is imported at the top: the client side runs in every stage.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time
from contextlib import suppress
from typing import Any, NoReturn

SOCKET_ENV = "NNTUNE_WARM_SOCKET"
WARM_BACKEND_ENV = "NNTUNE_WARM_BACKEND"  # the run's Keras backend: its servers' suffix
PROFILE_ENV = "NNTUNE_PROFILE"  # nntune.stage.entry's; repeated here to keep this module light
PROFILE_CLIENT_ENV = "NNTUNE_PROFILE_CLIENT_PID"
CONNECT_TIMEOUT_ENV = "NNTUNE_WARM_CONNECT_TIMEOUT"
CONNECT_TIMEOUT = 60.0  # seconds; a server answers once its imports are done
# 2: the server answers `started` (the child's pid) and the child waits for the client's go.
# 3: a request may ask the server to read the stage's Keras backend (`select`).
PROTOCOL = 3
GO = b"g"
LOST_EXIT = 1  # the stage's exit code when the runner died while it ran the stage
# What the stages of a trial import; each one costs a cold stage its start-up time.
# dvc.repo: dvclive's Live() opens the trial's DVC repository (0.18 s to import here).
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "yaml",
    "keras",
    "dvclive",
    "dvc.repo",
)
# One server per preload set, named by the suffix of its socket. Scikit-learn gets its own:
# loaded in the server that forks the train stage, it made that stage's `fit` 13-15% slower
# (paired medians of 5-6 runs; loaded in a cold process it does not), while the evaluate
# stage needs its metrics (1.0-1.5 s to import).
# The nntune modules each flavour's stage scripts import. A server imports them after the
# libraries; a forked stage keeps them only where its own working copy holds the same bytes
# for every nntune module the server loaded, and imports its copy's afresh otherwise
# (nntune.warm.server: 0.07 s of each stage's start).
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "": (
        "nntune.config.params",
        "nntune.stage.artifacts",
        "nntune.stage.backend",
        "nntune.stage.data",
        "nntune.stage.device",
        "nntune.stage.entry",
        "nntune.stage.lineage",
        "nntune.stage.pretrain",
        "nntune.stage.quiet",
        "nntune.stage.training",
        "nntune.stage.warmstart",
    ),
    "sklearn": (
        "nntune.config.params",
        "nntune.stage.artifacts",
        "nntune.stage.backend",
        "nntune.stage.crossval",
        "nntune.stage.data",
        "nntune.stage.device",
        "nntune.stage.entry",
        "nntune.stage.evaluate",
        "nntune.stage.outputs",
        "nntune.stage.quiet",
    ),
}
FLAVOURS: dict[str, tuple[str, ...]] = {
    "": (*PRELOAD, *STAGE_MODULES[""]),
    "sklearn": (*PRELOAD, "sklearn.metrics", *STAGE_MODULES["sklearn"]),
}
# Read by TensorFlow, Keras, JAX or the interpreter while they load, so a child must see the
# values the server loaded with. (TF_CPP_* only sets the log level of C++ messages.) Keras'
# backend is not compared here: each backend has servers of its own (flavour_socket), and a
# server refuses a stage of another backend.
_LOAD_TIME_PREFIXES = ("TF_", "KERAS_", "JAX_")
BACKEND_ENV = "KERAS_BACKEND"
DEFAULT_BACKEND = "tensorflow"
_LOAD_TIME_KEYS = (
    "PYTHONHASHSEED",
    "PYTHONWARNINGS",
    "PYTHONOPTIMIZE",
    "PYTHONSAFEPATH",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ARROW_DEFAULT_MEMORY_POOL",
)
HEADER = struct.Struct("!Q")


def load_time_env(env: dict[str, str]) -> dict[str, str]:
    """The part of an environment the server's imports depended on."""
    return {
        key: value
        for key, value in env.items()
        if (
            key.startswith(_LOAD_TIME_PREFIXES)
            and not key.startswith("TF_CPP_")
            and key != BACKEND_ENV
        )
        or key in _LOAD_TIME_KEYS
    }


# -- client: the first call of every stage script ---------------------------------------


def handoff(module: str = "__main__", flavour: str = "", select: bool = False) -> None:
    """Run this stage in the warm runner when ``nntune run`` started one. A stage script
    calls it first, with its ``__name__`` (imported as a module, it hands nothing off), and
    the :data:`FLAVOURS` key of the server whose preloaded modules it needs.

    With ``select``, the stage's Keras backend is ``runtime.backend`` of its params file
    (``nntune.stage.backend.select_for_stage``, which the script calls next). The runner
    reads it, so that this process imports no YAML parser: the stage goes to the server of
    the run's backend (:data:`WARM_BACKEND_ENV`), which sends it on to its backend's server
    when that is another one. Without ``select``, the backend is ``KERAS_BACKEND``'s.

    Does not return when the warm runner started the stage: the process exits with the
    stage's exit code, or with :data:`LOST_EXIT` when the runner died while it ran the stage
    (never rerun cold: it may have done part of its work). Returns (and the script goes on
    cold) when there is no runner, it cannot be reached, it does not answer in time or it
    refuses; the reason goes to stderr."""
    base = os.environ.get(SOCKET_ENV)
    if not base or module != "__main__":
        return
    request = {
        "protocol": PROTOCOL,
        "argv": sys.argv,
        "cwd": os.getcwd(),  # noqa: PTH109  (no pathlib: this module is imported by every stage)
        "env": dict(os.environ),
        "select": select,
        "prefix": sys.prefix,
        "version": sys.version,
        "pid": os.getpid(),
        # Started in the background by a non-interactive shell, a process ignores SIGINT;
        # the child keeps that, as the cold stage would.
        "sigint_ignored": signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
    }
    backend = requested_backend(os.environ)
    if select:
        backend = os.environ.get(WARM_BACKEND_ENV) or backend
    timeout = _connect_timeout()
    for attempt in range(2):  # the second: the server of the backend the first one named
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            reply = _handshake(sock, flavour_socket(base, flavour, backend), request, timeout)
        except TimeoutError:
            sock.close()
            print(
                f"nntune: warm runner did not answer within {timeout:g} s "
                f"({CONNECT_TIMEOUT_ENV}); this stage starts cold",
                file=sys.stderr,
            )
            return
        except (OSError, ValueError) as exc:
            sock.close()
            print(
                f"nntune: warm runner not reachable ({exc}); this stage starts cold",
                file=sys.stderr,
            )
            return
        named = reply.get("backend")
        if "refused" in reply and select and attempt == 0 and named not in (None, backend):
            sock.close()
            backend = str(named)
            continue
        break
    if "started" not in reply or reply.get("protocol") != PROTOCOL:
        sock.close()  # without our go, a child the server forked exits before the stage
        reason = reply.get("refused") or (
            f"it speaks protocol {reply.get('protocol')}, this stage {PROTOCOL}"
            if "started" in reply
            else "it stopped before answering"
        )
        print(f"nntune: warm runner refused ({reason}); this stage starts cold", file=sys.stderr)
        return
    # From here on the stage may be running in the child: it is never rerun cold.
    _relay(sock, int(reply["started"]))


def _connect_timeout() -> float:
    try:
        value = float(os.environ.get(CONNECT_TIMEOUT_ENV) or CONNECT_TIMEOUT)
    except ValueError:
        return CONNECT_TIMEOUT
    return value if value > 0 else CONNECT_TIMEOUT


def _handshake(
    sock: socket.socket, path: str, request: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Connect, pass the request, and read the server's first
    answer, all within ``timeout`` seconds (:class:`TimeoutError` past it). The standard
    streams go with the go, so that a server that answers late holds none of them."""
    deadline = time.monotonic() + timeout

    def step() -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(left)

    step()
    sock.connect(path)
    payload = json.dumps(request).encode()
    step()
    sock.sendall(HEADER.pack(len(payload)) + payload)
    data = b""
    while not data.endswith(b"\n"):
        step()
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    reply = json.loads(data or b"{}")
    if not isinstance(reply, dict):
        raise ValueError(f"unexpected answer {reply!r}")
    return reply


def _relay(sock: socket.socket, child: int) -> NoReturn:
    """Let the started child run the stage, pass a Ctrl-C on to it, and exit with its exit
    code; stop it and fail when the runner goes away first."""
    with suppress(ValueError):  # not the main thread: no Ctrl-C to pass on
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, lambda *_: _signal_group(child, signal.SIGINT))
    try:
        sock.settimeout(None)
        socket.send_fds(sock, [GO], [0, 1, 2])  # the go, with the stage's standard streams
        code = int(read_message(sock)["exit"])  # None (it went away): a TypeError
    except (OSError, ValueError, KeyError, TypeError) as exc:
        what = f"its connection failed ({exc})" if isinstance(exc, OSError) else "it went away"
        _lost(child, what)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as a shell says


def _lost(child: int, what: str) -> NoReturn:
    """The runner died after it had started the stage: stop the stage's child and fail."""
    stopped = "stopped it" if _end_group(child) else "it had already ended"
    print(
        f"nntune: the warm runner failed while it ran this stage ({what}; pid {child}, "
        f"{stopped}); the stage was not rerun cold, so that it cannot run twice: rerun "
        "`nntune run` to run it again, or `nntune run --cold` to run without the warm runner",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(LOST_EXIT)


def _signal_group(child: int, signum: int) -> None:
    """Signal the child's process group (its own session), if the pid is still that child."""
    with suppress(OSError):
        if os.getsid(child) == child and process_alive(child):
            os.killpg(child, signum)


def _end_group(child: int, grace: float = 5.0) -> bool:
    """Stop the child's process group, SIGTERM then SIGKILL; whether it was still alive."""
    try:
        if os.getsid(child) != child or not process_alive(child):
            return False  # gone, or its pid is another process's by now
    except OSError:
        return False
    for signum in (signal.SIGTERM, signal.SIGKILL):
        _signal_group(child, signum)
        deadline = time.monotonic() + grace
        while process_alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not process_alive(child):
            break
    return True


def flavour_socket(
    base: str | os.PathLike[str], flavour: str, backend: str = DEFAULT_BACKEND
) -> str:
    """The socket of the server with ``flavour``'s modules, loaded on Keras' ``backend``."""
    name = f"{os.fspath(base)}.{flavour}" if flavour else os.fspath(base)
    return name if backend == DEFAULT_BACKEND else f"{name}.{backend}"


def requested_backend(env: dict[str, str] | os._Environ[str]) -> str:
    """The Keras backend a process with ``env`` loads (the stages set it from params)."""
    return env.get(BACKEND_ENV) or DEFAULT_BACKEND


def read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the stage closed its connection")
        data += chunk
    return data


def send_message(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def read_message(conn: socket.socket) -> Any:
    """One JSON line from the other end (what :func:`send_message` sent); ``None`` when it
    closed its end first. Raises ``ValueError`` on a line that is not JSON."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)  # retried after a signal handler (PEP 475)
        if not chunk:
            return None
        data += chunk
    return json.loads(data)


def process_alive(pid: int) -> bool:
    """Whether a process runs: a zombie (dead, its parent has not reaped it yet) does not.
    Where there is no ``/proc`` (not Linux), a zombie counts as alive."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stream:  # noqa: PTH123  (no pathlib)
            stat = stream.read()
    except FileNotFoundError:
        return not os.path.exists("/proc/self/stat")  # noqa: PTH110  (reaped since os.kill)
    except OSError:
        return True
    state = stat.rpartition(")")[2].split()[:1]  # the command, in (), may hold anything
    return state not in (["Z"], ["X"])

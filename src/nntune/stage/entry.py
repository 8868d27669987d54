"""What every stage script shares: argument parsing, turning user errors into a clear
message and exit code 2 instead of a traceback, and an opt-in timing record.

With ``NNTUNE_PROFILE=/abs/path.jsonl`` in the environment (``benchmarks/overhead.py`` sets
it for the queue workers), each stage appends one JSON line: its name, working copy, when
its process started (the stage's own process, also under the warm runner of
``nntune.warm.client``), when ``main`` started (so start-up and imports are the difference) and
ended.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from nntune.errors import NntuneError

PROFILE_ENV = "NNTUNE_PROFILE"
RESIDENT_ENV = "NNTUNE_WARM_RESIDENT"  # nntune.warm.child's; repeated to keep stages light


class ResidentEnd(SystemExit):
    """A stage's good end in a resident child of the warm runner, which catches it by this
    attribute (the stage may run its own copy of this module)."""

    nntune_resident = True


def import_keras_without_sklearn() -> None:
    """``import keras`` also loads Keras' optional scikit-learn wrappers, and with them
    scikit-learn and SciPy: about 1.3 s of every training stage's start, for an API no
    stage uses. Scikit-learn is hidden while Keras loads (its wrappers then see it as not
    installed); a later ``import sklearn`` works as usual."""
    if "keras" in sys.modules or "sklearn" in sys.modules:
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # import sklearn -> ImportError
    try:
        import keras  # noqa: F401
    finally:
        del sys.modules["sklearn"]


def run_stage(main: Callable[[argparse.Namespace], None], doc: str | None, *args: str) -> None:
    """Parse ``args`` (the paths dvc.yaml passes) into a namespace and call ``main``."""
    parser = argparse.ArgumentParser(description=doc)
    for name in args:
        parser.add_argument(name)
    namespace = parser.parse_args()
    started = time.time()
    try:
        main(namespace)
    except NntuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        if os.environ.get(PROFILE_ENV):
            _record(Path(os.environ[PROFILE_ENV]), started)
    if getattr(main, "__module__", None) == "__main__":  # this process is the stage's own
        exit_without_teardown()


def exit_without_teardown(code: int = 0) -> NoReturn:
    """End a stage's process once its outputs are written, without tearing the interpreter
    down: with TensorFlow loaded, the teardown (module and thread-pool destruction) took
    1.2-1.6 s after the train and evaluate stages had finished their work. Exit handlers
    still run and the standard streams are flushed; every output is already closed (they are
    written atomically, and the train stage ends its dvclive run).

    In a resident child of the warm runner (``NNTUNE_WARM_RESIDENT``, set by
    ``nntune.warm.child``) a stage that ended well raises :class:`ResidentEnd` instead: the
    child keeps its process, and its runtime, for the working copy's next stage."""
    import atexit

    if code == 0 and os.environ.get(RESIDENT_ENV) == "1":
        raise ResidentEnd(0)

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _record(path: Path, main_start: float) -> None:
    import resource

    client = os.environ.get("NNTUNE_PROFILE_CLIENT_PID")  # set by nntune.warm.client
    line = {
        "stage": Path(sys.argv[0]).stem,
        "workspace": str(Path.cwd()),
        "trial": os.environ.get("DVC_EXP_NAME", ""),  # one worktree runs many trials
        # Under the warm runner this process is a fork: its stage started with the client.
        "process_start": process_start(int(client) if client else os.getpid()),
        "warm": bool(client),
        "main_start": main_start,
        "main_end": time.time(),
        # Peak resident memory of this stage's process (Linux reports KiB).
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pid": os.getpid(),  # a resident child of the warm runner runs several stages
    }
    with path.open("a", encoding="utf-8") as stream:  # one short line: appends do not mix
        stream.write(json.dumps(line) + "\n")


def process_start(pid: int) -> float:
    """When process ``pid`` started, as a Unix time, to the kernel's tick (10 ms). psutil's
    create_time() adds the boot time, which Linux gives in whole seconds: up to 1 s off."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the name
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - since_boot

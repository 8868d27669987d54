"""A 2-node Ray cluster on this machine runs ``nntune run --backend ray`` in a project,
optionally losing its worker node mid-run. Run by the Ray tests (and the benchmark) inside
``unshare -n -p -f --mount-proc``: a network namespace with only loopback, so nothing Ray
advertises or listens on is reachable from outside, and a PID namespace that reaps every
Ray process when this script ends.

    python tests/ray_cluster.py PROJECT CACHE_DIR OUT_JSON [--kill] [-- NNTUNE ARGS]

NNTUNE ARGS default to ``run``; ``--backend ray --address ... --cache-dir ...`` follow them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """A new network namespace has a loopback that is down; Ray needs it up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def only_loopback() -> list[str]:
    return [name for _, name in socket.if_nameindex()]


def _descendants(pid: int) -> list[psutil.Process]:
    return list(psutil.Process(pid).children(recursive=True))


def _warm_runners_of(owners: set[int]) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """The warm runner servers that a lost node's Ray workers started (``--owner PID``),
    and the stage processes those forked: daemons, so no descendants of the node's raylet."""
    servers: list[psutil.Process] = []
    children: list[psutil.Process] = []
    for process in psutil.process_iter():
        try:
            command = process.cmdline()
            server = "nntune.warm.server" in command and "--owner" in command
            if server and int(command[command.index("--owner") + 1]) in owners:
                servers.append(process)
                children += process.children(recursive=True)
        except (psutil.Error, ValueError, IndexError):
            continue
    return servers, children


def _described(process: psutil.Process) -> dict[str, object]:
    """A lingering process for the report: its command, state and children."""
    try:
        children = [(c.pid, c.status(), c.cmdline()[:4]) for c in process.children(True)]
        return {"command": process.cmdline()[:4], "status": process.status(), "children": children}
    except psutil.Error as exc:
        return {"pid": process.pid, "error": repr(exc)}


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main() -> int:
    project, cache, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    kill = "--kill" in sys.argv
    args = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else ["run"]
    if os.getpid() != 1:
        raise SystemExit("run me with unshare -n -p -f --mount-proc (I must be PID 1)")
    loopback_up()
    interfaces = only_loopback()
    if interfaces != ["lo"]:
        raise SystemExit(f"not an isolated network namespace: {interfaces}")
    # Short paths: Ray's unix sockets live under its temp dir (107-byte limit).
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmp
    (Path(tmp) / "ray").mkdir()

    from ray.cluster_utils import Cluster

    start = time.perf_counter()
    local = {"node_ip_address": "127.0.0.1", "num_cpus": 1}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**local, "temp_dir": str(Path(tmp) / "ray"), "include_dashboard": False},
    )
    worker = cluster.add_node(**local)
    cluster.wait_for_nodes()
    up = time.perf_counter() - start
    nntune = str(Path(sys.executable).parent / "nntune")
    ray = ["--backend", "ray", "--address", cluster.address, "--cache-dir", cache]
    driver = subprocess.Popen(
        [nntune, *args, *ray], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    killed_at, lost, survivors, commands = None, [], [], []
    servers, lingering = [], []
    if kill:
        # Lose the worker node once both nodes run a trial (two clones at work).
        work = Path(cache, "work")
        while driver.poll() is None and killed_at is None:
            if work.is_dir() and len([d for d in work.iterdir() if d.is_dir()]) >= 2:
                time.sleep(3)  # well inside `dvc exp run`
                lost = _descendants(worker.all_processes["raylet"][0].process.pid)
                servers, forked = _warm_runners_of({p.pid for p in lost})
                lost += forked
                commands = [" ".join(p.cmdline()) for p in [*lost, *servers] if _alive(p)]
                cluster.remove_node(worker)
                killed_at = time.perf_counter() - start
                time.sleep(5)
                survivors = [p.cmdline() for p in lost if _alive(p)]
                # A server stops once it sees its Ray worker gone (it polls each second).
                for _ in range(100):
                    if not any(_alive(p) for p in servers):
                        break
                    time.sleep(0.25)
                lingering = [_described(p) for p in servers if _alive(p)]
            time.sleep(0.2)
    stdout, stderr = driver.communicate(timeout=900)
    result = {
        "returncode": driver.returncode,
        "stdout": stdout,
        "stderr": stderr,
        "cluster_up_s": round(up, 2),
        "run_s": round(time.perf_counter() - start - up, 2),
        "killed_at_s": killed_at,
        # Processes of the lost node (the trial's `nntune trial`, `dvc exp run` and stage
        # included, and what its workers' warm runners forked) still alive 5 s after it was
        # removed: must be none. Its workers' warm runner servers 30 s after: none either.
        "lost_node_processes": len(lost),
        "lost_node_commands": commands,
        "survivors": survivors,
        "lost_warm_runners": len(servers),
        "lingering_warm_runners": lingering,
        "interfaces": interfaces,
    }
    out.write_text(json.dumps(result, indent=1))
    cluster.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)  # Ray's session logs and sockets
    return 0


if __name__ == "__main__":
    sys.exit(main())

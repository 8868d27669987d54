"""What nntune's executor keeps beside DVC's queue, under ``.dvc/tmp/nntune/``: a claim lock
per queued entry (held by the worker running it), the record of each entry it finished or
failed, and each trial's whole log. DVC ignores the folder (``.dvc/tmp`` is git-ignored and
never holds stages), and every record is written atomically."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nntune.stage.artifacts import write_json

STATE_DIR = Path(".dvc") / "tmp" / "nntune"
FAILED_REF = "refs/nntune/failed"  # keeps a failed entry's queued snapshot reachable


def state_dir(root: str | Path) -> Path:
    return Path(root) / STATE_DIR


def claim_path(root: str | Path, stash_rev: str) -> Path:
    """The lock a worker holds while it runs entry ``stash_rev`` (see :mod:`nntune.locks`:
    the kernel drops it when the worker dies, however it dies)."""
    return state_dir(root) / "claims" / f"{stash_rev}.lock"


def log_path(root: str | Path, label: str) -> Path:
    """A trial's whole log: the stages' output and DVC's, as ``nntune logs NAME`` shows it."""
    return state_dir(root) / "logs" / f"{safe_label(label)}.log"


def safe_label(label: str) -> str:
    """An experiment name as a file name (DVC names may hold characters a path must not)."""
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", label)


@dataclass
class EntryRecord:
    """How one queued entry ended under nntune's executor."""

    name: str
    stash_rev: str
    baseline_rev: str
    ok: bool
    exp_rev: str = ""  # the experiment commit (ok)
    error: str = ""  # why it failed, one line (not ok)
    log: str = ""  # the trial's log file
    worker: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    worker_trial: int = 0  # this trial's number in its worker's life (1, 2, ...)
    worker_peak_rss_mb: float = 0.0  # the worker's own peak (its stages are other processes)

    def write(self, root: str | Path) -> Path:
        path = record_path(root, self.stash_rev)
        write_json(path, asdict(self))
        return path


def record_path(root: str | Path, stash_rev: str) -> Path:
    return state_dir(root) / "done" / f"{stash_rev}.json"


def read_records(root: str | Path) -> list[EntryRecord]:
    """Every entry the executor finished or failed, oldest first."""
    folder = state_dir(root) / "done"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("*.json"):
        if path.name.startswith("."):
            continue  # a record being written: atomic_path's temporary file
        try:
            found.append((path.stat().st_mtime, path))
        except OSError:
            continue  # removed since the listing (a retry)
    records = []
    for _, path in sorted(found):
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            records.append(EntryRecord(**data))
        except (OSError, ValueError, TypeError):
            continue  # removed meanwhile (a retry), or not one of ours
    return records


def read_record(root: str | Path, stash_rev: str) -> EntryRecord | None:
    try:
        data = json.loads(record_path(root, stash_rev).read_text(encoding="utf-8"))
        return EntryRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def forget_record(root: str | Path, stash_rev: str) -> None:
    record_path(root, stash_rev).unlink(missing_ok=True)

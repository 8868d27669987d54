"""The one place that talks to DVC from Python: reading results of the workspace and,
later, of queued experiments."""

from __future__ import annotations

from typing import Any


def workspace_metrics(repo: str = ".") -> dict[str, Any]:
    """Every metrics file dvc.yaml declares, merged into one mapping (names are distinct:
    val_* from train, test_* from evaluate, timings from the run report)."""
    import dvc.api

    return dict(dvc.api.metrics_show(repo=repo))

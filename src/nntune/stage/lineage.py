"""Facts about a run that are not results: wall time, throughput and the versions that
produced it. They differ between runs and machines, so they live apart from the metrics
files, which must be byte-identical for the same params and data."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import nntune
from nntune.stage.data import Prepared
from nntune.stage.device import Device
from nntune.stage.training import FitResult

# Keras and both of its backends (None where not installed), and the pipeline's tools.
PACKAGES = ("keras", "tensorflow", "jax", "jaxlib", "dvc", "dvclive")


def run_info(result: FitResult, device: Device, data: Prepared) -> dict[str, Any]:
    return {
        "train_seconds": round(result.train_seconds, 3),
        "samples_per_second": round(result.samples_per_second, 1),
        "steady_samples_per_second": (
            None
            if result.steady_samples_per_second is None
            else round(result.steady_samples_per_second, 1)
        ),
        "steps_per_execution": result.steps_per_execution,
        **device.record(),
        "data_md5": data.source_md5,
        "versions": {
            # nntune's own version comes from the imported code, not the installed metadata:
            # a queued experiment runs its snapshot's copy of the library.
            "nntune": nntune.__version__,
            "python": platform.python_version(),
            **{name: _installed(name) for name in PACKAGES},
        },
    }


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None

"""Where ``nntune run`` and ``nntune search`` run their trials, as the user chose it: one
set of options for both commands, so that a backend behaves the same under either."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Backend = Literal["local", "ray"]
Executor = Literal["nntune", "dvc"]  # the local backend's workers: nntune's own, or DVC's


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: RAY_ADDRESS, or a local Ray started for this run
    num_cpus: float = 1.0  # Ray resources each trial reserves
    num_gpus: float = 0.0  # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it grants
    retries: int = 3  # re-runs of a trial whose node or worker died
    cache_dir: str | None = None  # clones and DVC cache on each node; None: its default
    remote: str = "origin"  # the git remote trials clone from and push to
    warm: bool = True  # each Ray worker keeps a warm runner for the stages of its trials


@dataclass(frozen=True)
class BackendOptions:
    backend: Backend = "local"
    warm: bool = True  # stages forked from the warm runner (on Ray: ray.warm)
    ray: RayOptions = field(default_factory=RayOptions)
    executor: Executor = "nntune"

    @property
    def uses_warm_runner(self) -> bool:
        return self.backend == "local" and self.warm

    def resume(self, command: str) -> str:
        """The command that continues where this one stopped."""
        return command + (" --backend ray" if self.backend == "ray" else "")

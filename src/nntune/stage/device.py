"""Everything about where a model trains: which device, GPU memory growth, mixed precision,
the distribution strategy, and what to record about it. The backend-specific code of the
stages lives here (and in nntune.stage.backend, which picks the backend), so the same model
code runs on TensorFlow and on JAX.

``list_gpus()`` is the one function that asks the backend which GPUs exist; everything
else is decided by ``resolve_device`` from its answer, which tests can fake.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nntune.config.sections import MIRRORED_ON_JAX, RuntimeParams
from nntune.errors import NntuneError
from nntune.stage.quiet import filter_tf_noise


class DeviceError(NntuneError):
    pass


@dataclass(frozen=True)
class Device:
    kind: Literal["cpu", "gpu"]
    index: int | None  # GPU index among the visible ones
    name: str  # what was actually used: "GPU 0: NVIDIA H100 80GB HBM3" or the CPU model
    mixed_precision: bool
    notes: tuple[str, ...] = ()  # fallbacks and choices worth telling the user

    def record(self) -> dict[str, Any]:
        """What the run report stores, so `dvc exp show` says what produced a number."""
        return {
            "device": self.name,
            "device_kind": self.kind,
            "mixed_precision": self.mixed_precision,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "keras_backend": _backend(),
        }


def list_gpus() -> list[str]:
    """Names of the GPUs the backend sees (after CUDA_VISIBLE_DEVICES), in index order."""
    backend = _backend()
    if backend == "jax":
        import jax

        try:
            return [str(d.device_kind) for d in jax.devices("gpu")]
        except RuntimeError:  # no GPU backend: jaxlib without CUDA, no driver, or CPU only
            return []
    names = []
    with filter_tf_noise():  # the first device query prints cuInit's failure without a GPU
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            names.append(str(details.get("device_name", gpu.name)))
    return names


def resolve_device(runtime: RuntimeParams, gpus: list[str]) -> Device:
    """Pick the device ``runtime.device`` asks for among ``gpus``; refuse what cannot work."""
    wanted = runtime.device
    if wanted == "cpu":
        return _cpu(runtime, ())
    if wanted == "auto":
        if gpus:
            return _gpu(runtime, 0, gpus[0], ("runtime.device auto: using GPU 0",))
        return _cpu(runtime, ("runtime.device auto: no GPU visible, using the CPU",))
    index = int(wanted.split(":", 1)[1])
    if index < len(gpus):
        return _gpu(runtime, index, gpus[index], ())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    problem = f"runtime.device is {wanted} but {len(gpus)} GPU(s) are visible" + (
        f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    )
    if not runtime.allow_cpu_fallback:
        raise DeviceError(
            f"{problem}; pick one of gpu:0..gpu:{len(gpus) - 1}"
            if gpus
            else f"{problem}; install nntune[gpu] and check the driver (nvidia-smi), "
            "set runtime.device: cpu, or set runtime.allow_cpu_fallback: true"
        )
    note = f"{problem}; runtime.allow_cpu_fallback is true, so training on the CPU"
    if runtime.mixed_precision:
        note += " without mixed precision"
        return Device("cpu", None, cpu_name(), False, (note,))
    return _cpu(runtime, (note,))


def _cpu(runtime: RuntimeParams, notes: tuple[str, ...]) -> Device:
    if runtime.mixed_precision:
        raise DeviceError(
            "runtime.mixed_precision is true but training runs on the CPU, where float16 is "
            "slower, not faster; set runtime.mixed_precision: false, or train on a GPU"
        )
    return Device("cpu", None, cpu_name(), False, notes)


def _gpu(runtime: RuntimeParams, index: int, name: str, notes: tuple[str, ...]) -> Device:
    return Device("gpu", index, f"GPU {index}: {name}", runtime.mixed_precision, notes)


def configure(runtime: RuntimeParams) -> Device:
    """Resolve the device and set the backend up for it, before any model exists: only the
    chosen GPU visible, memory growth on (so several runs can share a card), the mixed
    precision policy. The caller reports ``device.name`` and ``device.notes``."""
    import keras

    if _backend() == "jax" and runtime.device == "cpu":
        _jax_cpu_only()  # before JAX's runtime starts: a GPU is then never touched
    device = resolve_device(runtime, list_gpus())
    if _backend() == "tensorflow":
        _configure_tensorflow(device)
    else:
        _configure_jax(device)
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if device.mixed_precision else "float32"
    )
    return device


def _configure_tensorflow(device: Device) -> None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    chosen = [gpus[device.index]] if device.kind == "gpu" and device.index is not None else []
    tf.config.set_visible_devices(chosen, "GPU")
    for gpu in chosen:
        tf.config.experimental.set_memory_growth(gpu, True)


def _jax_cpu_only() -> None:
    import jax

    jax.config.update("jax_platforms", "cpu")


def _configure_jax(device: Device) -> None:
    """Computations and new arrays on the chosen device (``gpu:N`` among the visible GPUs,
    after ``CUDA_VISIBLE_DEVICES``). GPU memory is allocated as needed (nntune.stage.backend
    set XLA_PYTHON_CLIENT_PREALLOCATE=false before JAX started)."""
    import jax

    platform = "gpu" if device.kind == "gpu" else "cpu"
    chosen = jax.devices(platform)[device.index or 0]
    jax.config.update("jax_default_device", chosen)
    _compilation_cache(jax)


# JAX compiles the train and test steps for every batch shape (the last batch of an epoch is
# smaller): 19 compilations, 3.0 s of a 20-epoch digits trial. Kept on disk, a trial with
# the same model shapes (a grid over rates, seeds, patience...) loads them instead: the
# same executables, so the same numbers. JAX_COMPILATION_CACHE_DIR (JAX's own) overrides
# the folder; NNTUNE_JAX_CACHE=off turns it off.
CACHE_ENV = "NNTUNE_JAX_CACHE"
CACHE_MAX_BYTES = 1 << 30  # JAX drops the least recently used entries beyond this


def compilation_cache_dir() -> Path | None:
    if os.environ.get(CACHE_ENV, "").lower() in {"off", "0", "false", "no"}:
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nntune" / "jax"


def _compilation_cache(jax: Any) -> None:
    folder = compilation_cache_dir()
    if folder is None:
        return
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # default: 1 s
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)


def enable_determinism() -> None:
    """Deterministic kernels: TensorFlow's op determinism. On JAX, XLA's CPU kernels are
    deterministic, and on a GPU nntune.stage.backend put --xla_gpu_deterministic_ops=true
    in XLA_FLAGS before JAX started (it cannot be turned on later)."""
    if _backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def distribution_scope(runtime: RuntimeParams) -> AbstractContextManager[None]:
    """``with distribution_scope(runtime): build_model(...)``: MirroredStrategy replicates
    the model over every visible GPU (one replica on a CPU); ``none`` changes nothing."""
    if runtime.strategy == "none":
        return nullcontext()
    if _backend() != "tensorflow":
        raise DeviceError(f"runtime.strategy: {runtime.strategy} {MIRRORED_ON_JAX}")
    return _mirrored()


@contextmanager
def _mirrored() -> Iterator[None]:
    import tensorflow as tf

    with tf.distribute.MirroredStrategy().scope():
        yield


def cpu_name() -> str:
    """The CPU model, e.g. "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()}"


def _backend() -> str:
    import keras

    return str(keras.backend.backend())

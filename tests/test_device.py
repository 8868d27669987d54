"""Device resolution with the backend's GPU list faked at the one function that asks it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import jax_only, tensorflow_only

from nntune.config.sections import Params, RuntimeParams
from nntune.stage import device
from nntune.stage.device import Device, DeviceError, distribution_scope, resolve_device
from nntune.stage.model import build_model


def runtime(tiny_params: Params, **changes: object) -> RuntimeParams:
    return dataclasses.replace(tiny_params.runtime, **changes)  # type: ignore[arg-type]


def test_cpu_and_auto(tiny_params: Params) -> None:
    cpu = resolve_device(runtime(tiny_params, device="cpu"), ["NVIDIA H100"])
    assert (cpu.kind, cpu.index) == ("cpu", None)
    assert cpu.name.startswith("CPU")
    auto_gpu = resolve_device(runtime(tiny_params, device="auto"), ["NVIDIA H100", "NVIDIA A100"])
    assert (auto_gpu.kind, auto_gpu.index, auto_gpu.name) == ("gpu", 0, "GPU 0: NVIDIA H100")
    auto_cpu = resolve_device(runtime(tiny_params, device="auto"), [])
    assert auto_cpu.kind == "cpu"
    assert auto_cpu.notes == ("runtime.device auto: no GPU visible, using the CPU",)


def test_chosen_gpu(tiny_params: Params) -> None:
    chosen = resolve_device(runtime(tiny_params, device="gpu:1"), ["A", "B"])
    assert (chosen.kind, chosen.index, chosen.name) == ("gpu", 1, "GPU 1: B")


def test_missing_gpu_fails_clearly_without_fallback(
    tiny_params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceError) as info:
        resolve_device(runtime(tiny_params, device="gpu:0"), [])
    message = str(info.value)
    assert "runtime.device is gpu:0 but 0 GPU(s) are visible (CUDA_VISIBLE_DEVICES=)" in message
    assert "runtime.allow_cpu_fallback: true" in message
    with pytest.raises(DeviceError, match=r"pick one of gpu:0\.\.gpu:1"):
        resolve_device(runtime(tiny_params, device="gpu:2"), ["A", "B"])


def test_missing_gpu_falls_back_when_allowed(tiny_params: Params) -> None:
    used = resolve_device(runtime(tiny_params, device="gpu:0", allow_cpu_fallback=True), [])
    assert used.kind == "cpu"
    assert "runtime.allow_cpu_fallback is true, so training on the CPU" in used.notes[0]
    mixed = runtime(tiny_params, device="gpu:0", allow_cpu_fallback=True, mixed_precision=True)
    used = resolve_device(mixed, [])
    assert used.kind == "cpu" and used.mixed_precision is False
    assert used.notes[0].endswith("without mixed precision")


def test_mixed_precision_is_refused_on_cpu_and_kept_on_gpu(tiny_params: Params) -> None:
    for wanted in ("cpu", "auto"):
        with pytest.raises(DeviceError, match=r"mixed_precision is true but training runs"):
            resolve_device(runtime(tiny_params, device=wanted, mixed_precision=True), [])
    on_gpu = resolve_device(runtime(tiny_params, mixed_precision=True), ["A"])
    assert on_gpu.mixed_precision is True


def test_configure_asks_the_backend_once_and_sets_the_policy(
    tiny_params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def no_gpus() -> list[str]:
        calls.append(1)
        return []

    monkeypatch.setattr(device, "list_gpus", no_gpus)
    used = device.configure(runtime(tiny_params, device="auto"))
    assert calls == [1]
    assert used.kind == "cpu"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(DeviceError):
        device.configure(runtime(tiny_params, device="cpu", mixed_precision=True))


def test_record_names_device_and_environment(
    tiny_params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    record = Device("gpu", 0, "GPU 0: X", True).record()
    assert record == {
        "device": "GPU 0: X",
        "device_kind": "gpu",
        "mixed_precision": True,
        "cuda_visible_devices": "3",
        "keras_backend": keras.backend.backend(),
    }


@tensorflow_only
def test_mirrored_strategy_builds_and_trains_with_one_replica_on_cpu(tiny_params: Params) -> None:
    mirrored = runtime(tiny_params, strategy="mirrored")
    with distribution_scope(mirrored):
        strategy = tf.distribute.get_strategy()
        net = build_model(tiny_params.model, tiny_params.train, 4, "multiclass", n_classes=3)
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 1
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = np.arange(64) % 3
    history = net.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert len(history.history["loss"]) == 2
    with distribution_scope(runtime(tiny_params, strategy="none")):
        assert not isinstance(tf.distribute.get_strategy(), tf.distribute.MirroredStrategy)


def test_output_layer_stays_float32_under_mixed_precision(tiny_params: Params) -> None:
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        net = build_model(tiny_params.model, tiny_params.train, 4, "multiclass", n_classes=3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert net.get_layer("hidden_1").compute_dtype == "float16"
    assert net.get_layer("output").compute_dtype == "float32"


@jax_only
def test_mirrored_strategy_is_refused_on_jax(tiny_params: Params) -> None:
    with pytest.raises(DeviceError, match=r"runtime\.strategy: mirrored is TensorFlow's"):
        distribution_scope(runtime(tiny_params, strategy="mirrored"))


@jax_only
def test_on_jax_the_device_is_jaxs_default_and_compilations_are_cached(
    tiny_params: Params, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import jax

    from nntune.stage.device import compilation_cache_dir, configure

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("NNTUNE_JAX_CACHE", raising=False)
    try:
        used = configure(runtime(tiny_params, device="cpu"))
        assert used.kind == "cpu" and used.record()["keras_backend"] == "jax"
        assert jax.config.jax_default_device == jax.devices("cpu")[0]
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "nntune" / "jax")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert compilation_cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("NNTUNE_JAX_CACHE", "off")
    assert compilation_cache_dir() is None

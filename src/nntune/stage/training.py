"""Fit a compiled model: early stopping on the validation objective, a guard that stops a
diverging run instead of crashing, per-epoch curves logged with dvclive."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np

from nntune.config.metrics import Task, fit_metric_names, infer_direction
from nntune.config.sections import RuntimeParams, TrainParams
from nntune.stage import artifacts
from nntune.stage.data import Prepared
from nntune.stage.device import enable_determinism
from nntune.stage.dvclive_internals import StepLive
from nntune.stage.keras_internals import seed_generators
from nntune.stage.model import compile_model
from nntune.stage.schedules import schedule_callbacks

MEASURE_CHUNK = 1024  # rows per eager test step of the final measurement


def seed_everything(runtime: RuntimeParams) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic`` also make TensorFlow pick
    deterministic kernels, so the same params give byte-identical metrics on CPU."""
    keras.utils.set_random_seed(runtime.seed)
    if runtime.deterministic:
        enable_determinism()


class DivergenceGuard(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Stops training after the first epoch whose loss is NaN or infinite (an epoch's loss
    is the mean over its batches: one bad batch makes it so) and remembers that it happened.
    Keras' TerminateOnNaN stops too, but leaves no record a caller can read.

    It checks at the epoch's end, not after every batch: on JAX any callback with a
    batch-end hook makes Keras wait for the device after every call, which cost a fifth of
    a digits epoch; a diverged run now finishes its epoch before it stops."""

    def __init__(self) -> None:
        super().__init__()
        self.diverged = False
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch + 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for name in ("loss", "val_loss"):
            self._check((logs or {}).get(name))

    def _check(self, value: Any) -> None:
        if value is not None and not math.isfinite(float(value)):
            self.diverged = True
            self.model.stop_training = True


@dataclass(frozen=True)
class FitResult:
    metrics: dict[str, Any]  # deterministic: goes to the metrics file
    train_seconds: float  # wall time of fit alone; varies run to run, kept apart
    samples_per_second: float
    steps_per_execution: int = 1  # batches per compiled call (a speed setting, not a result)
    # The pace after the first epoch (which traces or compiles the steps); None if only one.
    steady_samples_per_second: float | None = None


class BestWeights(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """The weights of the epoch with the best monitored value (an improvement must beat the
    best by ``min_delta``, as in EarlyStopping). Unlike EarlyStopping's own restore, it
    leaves the last epoch's state in place until the caller puts them back, so that state
    can be saved first for a continued run."""

    def __init__(self, monitor: str, min_delta: float) -> None:
        super().__init__()
        self.monitor = monitor
        self.sign = 1.0 if infer_direction(monitor) == "min" else -1.0
        self.min_delta = abs(min_delta)
        self.best: float | None = None
        self.epoch: int | None = None
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        score = self.sign * float(value)
        if self.best is None or score < self.best - self.min_delta:
            self.best, self.epoch, self.weights = score, epoch, self.model.get_weights()


class EpochLog(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """One line per epoch on stdout, what ``verbose=2`` prints, without its batch-end hook:
    any callback with one makes Keras wait for the device after every call on JAX (a
    fifth of a digits epoch), where hooks at the epoch's ends do not."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self.started
        values = " - ".join(f"{name}: {value:.4f}" for name, value in sorted((logs or {}).items()))
        total = self.params.get("epochs") if self.params else None
        print(f"Epoch {epoch + 1}/{total} - {seconds:.2f}s - {values}", flush=True)


class EpochClock(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """When each epoch ended (validation included): the first epoch carries the tracing or
    compiling of the train and test steps, the later ones show the steady pace."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.ends.append(time.perf_counter())

    def steady_seconds(self) -> float | None:
        """Seconds of the epochs after the first (None with fewer than two)."""
        return self.ends[-1] - self.ends[0] if len(self.ends) > 1 else None


class LiveEpochs(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Logs each epoch's metrics to a dvclive ``Live``, under the names dvclive's own Keras
    callback gives them (``train/loss``, ``eval/loss``...). That callback subclasses
    ``tf.keras``'s: it imports TensorFlow (2 s, and absent where only JAX is installed).
    With ``end_on_train_end`` false it leaves ``live.end()`` to the caller: a fine-tuning run
    is two fits (frozen, then all layers) logged as one curve."""

    def __init__(self, live: Any, end_on_train_end: bool = False) -> None:
        super().__init__()
        self.live = live
        self.end_on_train_end = end_on_train_end

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from dvclive.utils import standardize_metric_name

        for metric, value in (logs or {}).items():
            self.live.log_metric(standardize_metric_name(metric, "dvclive.keras"), value)
        self.live.next_step()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.end_on_train_end:
            self.live.end()


# Most batches per compiled call that `steps_per_execution: auto` picks: enough to take the
# per-step Python and callback work out of an epoch of a small table (digits: 34 steps).
AUTO_STEPS_PER_EXECUTION = 128


def steps_per_execution(setting: int | Literal["auto"], steps_per_epoch: int) -> int:
    """Batches per compiled call of ``fit``: the largest divisor of ``steps_per_epoch`` not
    above ``setting`` (:data:`AUTO_STEPS_PER_EXECUTION` for "auto"). A divisor keeps every
    epoch's end on a call's end: Keras runs a call's batches even past the epoch's last
    step, which would move batches between epochs and change the per-epoch curves."""
    cap = AUTO_STEPS_PER_EXECUTION if setting == "auto" else setting
    return max(d for d in range(1, min(cap, steps_per_epoch) + 1) if steps_per_epoch % d == 0)


def epoch_orders(n: int, seed: int, first_epoch: int, end_epoch: int) -> Iterator[np.ndarray]:
    """Each epoch's order of the ``n`` training rows: a permutation keyed by (seed, epoch),
    not by a random state that advanced through earlier epochs, so that a run continued at
    epoch 3 sees exactly the batches a run from scratch sees at epoch 3."""
    for epoch in range(first_epoch, end_epoch):
        yield np.random.default_rng([seed, epoch]).permutation(n)


def epoch_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, first_epoch: int, end_epoch: int
) -> tuple[Any, int]:
    """The training batches of epochs ``first_epoch`` to ``end_epoch - 1`` as one stream,
    and the steps per epoch; each epoch in its :func:`epoch_orders` order. One gather per
    epoch, then slicing: measured as fast as Keras' own shuffling of in-memory arrays. On
    TensorFlow a ``tf.data`` pipeline; on JAX a generator of NumPy batches (no TensorFlow:
    the JAX-only install has none)."""
    n = len(x)
    steps = math.ceil(n / batch_size)
    if keras.backend.backend() != "tensorflow":

        def arrays() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for order in epoch_orders(n, seed, first_epoch, end_epoch):
                xs, ys = x[order], y[order]
                for start in range(0, n, batch_size):
                    yield xs[start : start + batch_size], ys[start : start + batch_size]

        return arrays(), steps
    import tensorflow as tf

    def orders() -> Iterator[np.ndarray]:
        return epoch_orders(n, seed, first_epoch, end_epoch)

    xs, ys = tf.constant(x), tf.constant(y)
    spec = tf.TensorSpec(shape=(n,), dtype=tf.int64)
    batches = tf.data.Dataset.from_generator(orders, output_signature=spec).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(
            (tf.gather(xs, order), tf.gather(ys, order))
        ).batch(batch_size)
    )
    return batches.prefetch(tf.data.AUTOTUNE), steps


class EpochSeeds(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Sets every random layer's seed state (dropout, noise) from (seed, epoch, layer) at
    the start of each epoch, so that randomness, like the batch order, depends on the epoch
    and not on how many steps ran before: what makes a continued run exact."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for position, number, generator in seed_generators(self.model):
            key = [self.seed, epoch, position, number]
            value = int(np.random.default_rng(key).integers(0, 2**31 - 1))
            state = generator.state
            state.assign(np.array([value, 0], dtype=keras.backend.standardize_dtype(state.dtype)))


def fit(
    net: keras.Model,
    data: Prepared,
    train: TrainParams,
    live_dir: str | Path,
    *,
    seed: int,
    frozen: Sequence[str] = (),
    freeze_epochs: int = 0,
    initial_epoch: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    save_last: Callable[[keras.Model], None] | None = None,
) -> FitResult:
    """Train ``net`` on the train split, stop early on the validation split (when
    ``train.early_stopping.enabled``), and measure the model that is kept (the best epoch's
    weights when ``restore_best_weights``).

    With ``freeze_epochs``, the layers named in ``frozen`` (pretrained ones) stay fixed for
    that many epochs first, then everything is fine-tuned with early stopping; the epochs
    count as one run (``max_epochs`` includes the frozen ones). ``initial_epoch`` continues
    a model that already trained that many epochs (warm start): batch order and dropout are
    keyed by (seed, epoch), so 3 epochs then 6 more equal 9 epochs from scratch. That takes
    the last epoch's state, not the best one: ``save_last`` receives the model in that state
    before the best epoch's weights are put back (``restore_best_weights``, with or without
    early stopping)."""
    x_train, y_train = data.xy("train")
    x_val, y_val = data.xy("val")
    es = train.early_stopping
    stopper = keras.callbacks.EarlyStopping(
        monitor=es.monitor,
        mode=infer_direction(es.monitor),
        patience=es.patience,
        min_delta=es.min_delta,
        restore_best_weights=False,  # BestWeights does it, after the last state is saved
    )
    keeper = BestWeights(es.monitor, es.min_delta)
    guard = DivergenceGuard()
    reseed = EpochSeeds(seed)
    clock = EpochClock()
    rates = schedule_callbacks(train)  # before the guard and the logger: they read the rate

    per_call = steps_per_execution(
        train.steps_per_execution, math.ceil(len(x_train) / train.batch_size)
    )

    def run(first: int, end: int, extra: Sequence[keras.callbacks.Callback]) -> dict[str, Any]:
        batches, steps = epoch_batches(x_train, y_train, train.batch_size, seed, first, end)
        # Set after compile (a recompile resets it), before fit builds its functions; the
        # compile config the model file saves keeps 1, so the file does not depend on it.
        net.steps_per_execution = per_call
        history = net.fit(
            batches,
            steps_per_epoch=steps,
            initial_epoch=first,
            epochs=end,
            validation_data=(x_val, y_val),
            shuffle=False,  # the batches are already in the (seed, epoch) order
            verbose=0,  # EpochLog prints the epochs
            callbacks=[reseed, *rates, guard, *extra, logger, clock, EpochLog(), *callbacks],
        )
        return dict(history.history)

    # The curves are built in a sibling folder that replaces live_dir once the run ended,
    # diverged or not: a crash (or a kill) leaves the old curves, never half of new ones.
    with artifacts.atomic_dir(live_dir) as live_tmp:
        # dvcyaml=False: dvc.yaml is ours and declares the plots; dvclive must not rewrite it.
        live = StepLive(dir=str(live_tmp), dvcyaml=False, save_dvc_exp=False, report=None)
        live.step = initial_epoch  # a continued run's curve goes on from the parent's last
        logger = LiveEpochs(live)
        started = time.perf_counter()
        epoch = initial_epoch
        tuned: list[float] = []  # the monitored metric over the fine-tuning epochs
        try:
            if freeze_epochs and frozen:
                _set_trainable(net, frozen, False, train, data.task)
                epoch += len(run(epoch, epoch + freeze_epochs, []).get("loss", []))
                _set_trainable(net, frozen, True, train, data.task)
            if not guard.diverged:
                fine_tune = [stopper, keeper] if es.enabled else [keeper]
                history = run(epoch, train.max_epochs, fine_tune)
                epoch += len(history.get("loss", []))
                tuned = history.get(es.monitor, [])
            live.end()
        finally:
            live.close()
    seconds = time.perf_counter() - started
    ran = epoch - initial_epoch
    if save_last is not None:
        save_last(net)  # the state a continued run starts from: the last epoch's
    if es.restore_best_weights and keeper.weights is not None:
        net.set_weights(keeper.weights)
    any_finite = any(math.isfinite(v) for v in tuned)
    if any_finite and keeper.epoch is not None:
        # Keras counts epochs from the start of the whole run (initial_epoch).
        best_epoch = keeper.epoch + 1 if es.restore_best_weights else epoch
    else:
        best_epoch = None
    metrics: dict[str, Any] = {
        "epochs_trained": epoch,  # in total, the parent's epochs included
        "epochs_run": ran,  # by this run (what a search spends)
        "best_epoch": best_epoch,
        "diverged": guard.diverged,
        "diverged_at_epoch": guard.epoch if guard.diverged else None,
        "learning_rate_effective": train.effective_learning_rate,
    }
    metrics.update(_measure(net, "train", x_train, y_train, train.batch_size, data.task))
    metrics.update(_measure(net, "val", x_val, y_val, train.batch_size, data.task))
    return FitResult(
        metrics=metrics,
        train_seconds=seconds,
        samples_per_second=len(x_train) * ran / seconds if seconds > 0 else 0.0,
        steps_per_execution=per_call,
        steady_samples_per_second=(
            len(x_train) * (len(clock.ends) - 1) / steady
            if (steady := clock.steady_seconds())
            else None
        ),
    )


def _set_trainable(
    net: keras.Model, names: Sequence[str], trainable: bool, train: TrainParams, task: Task
) -> None:
    for name in names:
        net.get_layer(name).trainable = trainable
    compile_model(net, train, task)  # Keras applies a change of `trainable` at compile


def _measure(
    net: keras.Model, prefix: str, x: np.ndarray, y: np.ndarray, batch_size: int, task: Task
) -> dict[str, float]:
    """Loss and metrics of the kept model, with dropout off, as ``{prefix}_{name}``.

    On TensorFlow, Keras' own ``test_step`` runs eagerly on chunks of rows, its results
    weighted by rows as ``evaluate`` weights its batches: ``evaluate`` would first trace a
    test function for the train split's batch shapes (0.13 s against 0.05 s for both splits
    after a digits fit; the values agree to float32 rounding, about 1e-8). Inference mode
    makes the chunk size irrelevant to the values. Other backends, and a model replicated on
    several GPUs, keep ``evaluate``."""
    tensorflow = keras.backend.backend() == "tensorflow"  # only its models have a strategy
    if tensorflow and net.distribute_strategy.num_replicas_in_sync == 1:
        net.reset_metrics()
        for start in range(0, len(x), MEASURE_CHUNK):
            net.test_step((x[start : start + MEASURE_CHUNK], y[start : start + MEASURE_CHUNK]))
        values = net.get_metrics_result()
    else:
        values = net.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    return {f"{prefix}_{name}": float(values[name]) for name in fit_metric_names(task)}

"""``nntune lr-find``: the learning-rate range test (Smith 2017, "Cyclical Learning Rates for
Training Neural Networks", section 3.3; fastai's ``lr_find``).

The model of ``params.yaml`` trains on mini-batches of the training split while its rate
grows exponentially, one step per batch, from ``start`` to ``end``. The loss is smoothed
(an exponential moving average with bias correction, beta 0.98, as fastai), the sweep stops
once the smoothed loss passes 4 times its minimum (or is not finite), and a rate is read off
the curve by fastai's ``valley`` rule. Seeded as the train stage seeds, with the train
stage's batch order: on a CPU two runs give the same numbers.

The sweep itself (``run_sweep``) takes any ``train_step(rate) -> loss``; the Keras one is
built by ``keras_train_step``, so the stopping and the rule are tested without Keras.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nntune.config.sections import Params, TrainParams
from nntune.errors import NntuneError
from nntune.tuning.grid import LEARNING_RATE, format_rate, rates_around, significant

if TYPE_CHECKING:
    from nntune.stage.data import Prepared

PREPARED_DIR = "data/prepared"  # what dvc.yaml's prepare stage writes
BETA = 0.98  # fastai's smoothing of the loss
DIVERGED = 4.0  # stop once the smoothed loss passes this multiple of its minimum
SKIP_END = 5  # fastai leaves out the last 5 points (and the first tenth) when suggesting
RULE = (
    "valley (fastai's default): the rate halfway along the longest stretch over "
    "which the smoothed loss keeps falling; steadier than the steepest slope, which is one "
    "noisy difference, and than minimum/10, which moves with where the loss blows up"
)


class LrFindError(NntuneError):
    pass


@dataclass(frozen=True)
class Step:
    learning_rate: float
    loss: float
    smoothed_loss: float


@dataclass(frozen=True)
class Sweep:
    steps: list[Step]
    planned: int  # steps asked for; fewer ran when the loss diverged
    diverged: bool


@dataclass(frozen=True)
class Suggestion:
    learning_rate: float  # the optimiser's rate at this batch size, 2 significant digits
    step: int  # 1-based step of the sweep it was read at
    steepest: float  # what the two classic rules would say, for comparison
    minimum_over_10: float


@dataclass(frozen=True)
class LrFind:
    sweep: Sweep
    suggestion: Suggestion
    train: TrainParams
    device: str

    @property
    def params_learning_rate(self) -> float:
        """The ``train.learning_rate`` that gives the suggested rate at this batch size:
        with ``lr_scaling.rule: linear`` the optimiser multiplies it by B / reference."""
        scaling = self.train.lr_scaling
        if scaling.rule == "linear":
            factor = scaling.reference_batch_size / self.train.batch_size
            return significant(self.suggestion.learning_rate * factor)
        return self.suggestion.learning_rate


def sweep_rates(start: float, end: float, steps: int) -> list[float]:
    """``steps`` rates from ``start`` to ``end``, evenly spaced on a log scale."""
    if not (0 < start < end and math.isfinite(end)):
        raise LrFindError(f"--start {start:g} and --end {end:g}: need 0 < start < end")
    if steps < 20:
        raise LrFindError(f"--steps {steps}: too few to read a rate off; use 100 to 300")
    return [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]


class SmoothedLoss:
    """An exponential moving average of the loss, divided by 1 - beta^n so that the first
    steps are not pulled towards the average's starting 0 (fastai's AvgSmoothLoss)."""

    def __init__(self, beta: float = BETA) -> None:
        self.beta = beta
        self.average = 0.0
        self.count = 0
        self.lowest = math.inf

    def add(self, loss: float) -> float:
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * loss
        smoothed = self.average / (1 - self.beta**self.count)
        self.lowest = min(self.lowest, smoothed)
        return smoothed

    def diverged(self, smoothed: float) -> bool:
        return not math.isfinite(smoothed) or smoothed > DIVERGED * self.lowest


def run_sweep(rates: Sequence[float], train_step: Callable[[float], float]) -> Sweep:
    """One training step at each rate, in order, until the smoothed loss diverges."""
    smoother = SmoothedLoss()
    steps: list[Step] = []
    for rate in rates:
        loss = train_step(rate)
        smoothed = smoother.add(loss)
        steps.append(Step(rate, loss, smoothed))
        if smoother.diverged(smoothed):
            return Sweep(steps, len(rates), diverged=True)
    return Sweep(steps, len(rates), diverged=False)


def valley(losses: Sequence[float]) -> int:
    """fastai's rule: the longest run of points (not necessarily adjacent) over which the
    loss keeps falling, and the index halfway along it. fastai's start index can fall one
    before the first point when nothing falls; here it stops at 0."""
    falling = [1] * len(losses)  # length of the longest falling run that ends at i
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j]:
                falling[i] = max(falling[i], falling[j] + 1)
    end = max(range(len(losses)), key=falling.__getitem__)  # the first longest
    start = max(0, end - falling[end])
    third = (end - start) / 3
    return start + int(third) + int(third / 2)


def suggest(sweep: Sweep) -> Suggestion:
    """The valley rule on the smoothed loss, leaving out the first tenth of the planned
    steps and the last 5 that ran (fastai's window) and any from a non-finite loss on."""
    first = sweep.planned // 10
    window = sweep.steps[first : len(sweep.steps) - SKIP_END]
    finite = next((i for i, s in enumerate(window) if not math.isfinite(s.smoothed_loss)), None)
    window = window[:finite]
    if len(window) < 3:
        raise LrFindError(
            f"the loss diverged at step {len(sweep.steps)} of {sweep.planned} (rate "
            f"{sweep.steps[-1].learning_rate:.2g}), too early to suggest a rate; start lower "
            "(--start) or check the training data"
        )
    rates = [s.learning_rate for s in window]
    losses = [s.smoothed_loss for s in window]
    at = valley(losses)
    slopes = [
        (losses[i + 1] - losses[i]) / math.log(rates[i + 1] / rates[i])
        for i in range(len(losses) - 1)
    ]
    steepest = rates[min(range(len(slopes)), key=slopes.__getitem__)]
    lowest = rates[min(range(len(losses)), key=losses.__getitem__)]
    return Suggestion(
        learning_rate=significant(rates[at]),
        step=first + at + 1,
        steepest=significant(steepest),
        minimum_over_10=significant(lowest / 10),
    )


def keras_train_step(params: Params, data: Prepared, steps: int) -> Callable[[float], float]:
    """A fresh model of ``params`` (built and compiled as the train stage builds it, same
    optimiser) and a function that trains it one batch at a given rate and returns that
    batch's loss. Seeded, and batches in the train stage's (seed, epoch) order."""
    from nntune.stage.device import distribution_scope
    from nntune.stage.model import model_for
    from nntune.stage.training import epoch_batches, seed_everything

    seed_everything(params.runtime)
    x, y = data.xy("train")
    size = params.train.batch_size
    epochs = math.ceil(steps / math.ceil(len(x) / size))
    batches, _ = epoch_batches(x, y, size, params.runtime.seed, 0, epochs)
    with distribution_scope(params.runtime):
        net = model_for(params, data)
    batch = iter(batches)

    def train_step(rate: float) -> float:
        x_batch, y_batch = next(batch)
        net.optimizer.learning_rate = rate
        return float(net.train_on_batch(x_batch, y_batch, return_dict=True)["loss"])

    return train_step


def find_rate(
    params: Params,
    start: float,
    end: float,
    steps: int,
    prepared_dir: str | Path = PREPARED_DIR,
) -> LrFind:
    """Sweep on the configured device and suggest a rate."""
    from nntune.stage.data import META_FILE, read_prepared
    from nntune.stage.device import configure

    rates = sweep_rates(start, end, steps)
    if not (Path(prepared_dir) / META_FILE).is_file():
        raise LrFindError(
            f"{prepared_dir}: no prepared splits; run `dvc repro prepare` first "
            "(lr-find trains on the training split it writes)"
        )
    data = read_prepared(prepared_dir, splits=("train",))
    device = configure(params.runtime)
    sweep = run_sweep(rates, keras_train_step(params, data, steps))
    return LrFind(sweep, suggest(sweep), params.train, device.name)


def record(found: LrFind) -> dict[str, Any]:
    """What the JSON file holds: the sweep, the suggestion, how it was read, and the run."""
    scaling = found.train.lr_scaling
    return {
        "sweep": [
            {"step": i, "lr": s.learning_rate, "loss": s.loss, "smoothed_loss": s.smoothed_loss}
            for i, s in enumerate(found.sweep.steps, start=1)
        ],
        "steps_planned": found.sweep.planned,
        "diverged": found.sweep.diverged,
        "suggested_learning_rate": found.params_learning_rate,
        "suggested_effective_learning_rate": found.suggestion.learning_rate,
        "suggested_at_step": found.suggestion.step,
        "rule": "valley",
        "rule_explained": RULE,
        "other_rules": {
            "steepest_slope": found.suggestion.steepest,
            "minimum_over_10": found.suggestion.minimum_over_10,
        },
        "batch_size": found.train.batch_size,
        "lr_scaling": {"rule": scaling.rule, "reference_batch_size": scaling.reference_batch_size},
        "optimizer": found.train.optimizer,
        "device": found.device,
    }


def plot_spec(found: LrFind) -> dict[str, Any]:
    """Vega-lite: loss and smoothed loss against the rate (log axis), the suggestion marked.
    The y axis stops a little above the smoothed curve: the raw loss at divergence would
    flatten everything else."""
    from nntune.tuning.report import VEGA_LITE_SCHEMA

    values = [
        {"lr": s.learning_rate, "loss": s.loss, "smoothed loss": s.smoothed_loss}
        for s in found.sweep.steps
    ]
    finite = [s.smoothed_loss for s in found.sweep.steps if math.isfinite(s.smoothed_loss)]
    top = 1.1 * max(finite) if finite else 1.0
    rate = found.suggestion.learning_rate
    x = {"field": "lr", "type": "quantitative", "scale": {"type": "log"}, "title": "learning rate"}
    y = {"field": "value", "type": "quantitative", "scale": {"domain": [0, top]}, "title": "loss"}
    mark = {"lr": rate, "label": f" suggested {format_rate(rate)}"}
    return {
        "$schema": VEGA_LITE_SCHEMA,
        "title": f"learning-rate range test, batch size {found.train.batch_size}",
        "width": 500,
        "height": 300,
        "layer": [
            {
                "data": {"values": values},
                "transform": [{"fold": ["loss", "smoothed loss"], "as": ["series", "value"]}],
                "mark": {"type": "line", "clip": True},
                "encoding": {
                    "x": x,
                    "y": y,
                    "color": {"field": "series", "type": "nominal", "title": None},
                    "opacity": {
                        "field": "series",
                        "type": "nominal",
                        "scale": {"range": [0.35, 1.0]},
                        "legend": None,
                    },
                },
            },
            {
                "data": {"values": [mark]},
                "mark": {"type": "rule", "color": "firebrick", "strokeDash": [4, 3]},
                "encoding": {"x": {"field": "lr", "type": "quantitative"}},
            },
            {
                "data": {"values": [mark]},
                "mark": {"type": "text", "align": "left", "baseline": "top", "y": 4},
                "encoding": {
                    "x": {"field": "lr", "type": "quantitative"},
                    "text": {"field": "label"},
                },
            },
        ],
    }


def write(found: LrFind, out_dir: str | Path) -> tuple[Path, Path]:
    """``lr_find.json`` and ``lr_find.svg`` in ``out_dir``, each written atomically."""
    import vl_convert as vlc

    from nntune.stage import artifacts

    out = Path(out_dir)
    json_path, svg_path = out / "lr_find.json", out / "lr_find.svg"
    artifacts.write_json(json_path, record(found))
    artifacts.write_text(svg_path, vlc.vegalite_to_svg(vl_spec=plot_spec(found)))
    return json_path, svg_path


def run(params: Params, start: float, end: float, steps: int, out_dir: str | Path) -> list[str]:
    """``nntune lr-find``: sweep, write the JSON and the plot, and say what to print."""
    started = time.perf_counter()
    found = find_rate(params, start, end, steps)
    json_path, svg_path = write(found, out_dir)
    seconds = time.perf_counter() - started
    return [
        *summary(found),
        f"wrote {json_path} and {svg_path} ({seconds:.1f} s)",
    ]


def summary(found: LrFind) -> list[str]:
    """What ``nntune lr-find`` prints after the sweep, one line each."""
    sweep, chosen = found.sweep, found.suggestion
    last = sweep.steps[-1]
    stop = (
        f"stopped at step {len(sweep.steps)} of {sweep.planned}: the smoothed loss diverged "
        f"at rate {last.learning_rate:.2g}"
        if sweep.diverged
        else f"ran all {sweep.planned} steps without diverging (try a higher --end)"
    )
    rate = found.params_learning_rate
    return [
        f"{len(sweep.steps)} steps of batch size {found.train.batch_size} on {found.device}",
        stop,
        f"suggested learning rate: {format_rate(rate)}",
        "rule: valley (fastai's default): halfway along the longest stretch where the "
        f"smoothed loss keeps falling (the steepest slope would say "
        f"{format_rate(chosen.steepest)}, the minimum/10 {format_rate(chosen.minimum_over_10)})",
        scaling_note(found.train, chosen.learning_rate),
        f"for grid.yaml: {LEARNING_RATE}: [{', '.join(map(format_rate, rates_around(rate)))}]"
        f"   # or: nntune grid --lr-around {format_rate(rate)}",
    ]


def scaling_note(train: TrainParams, rate: float) -> str:
    """How the found rate carries over to other batch sizes under ``train.lr_scaling``."""
    size, scaling = train.batch_size, train.lr_scaling
    found = f"batch size: the rate was found at batch size {size} ({format_rate(rate)})"
    if scaling.rule == "linear":
        reference = scaling.reference_batch_size
        setting = format_rate(significant(rate * reference / size))
        return (
            f"{found}; train.lr_scaling.rule is linear (reference_batch_size {reference}): "
            f"training multiplies train.learning_rate by batch_size / {reference}, so "
            f"train.learning_rate {setting} gives the optimiser {format_rate(rate)} at batch "
            f"size {size} and {format_rate(significant(2 * rate))} at {2 * size}"
        )
    return (
        f"{found}; train.lr_scaling.rule is none, so every batch size gets train.learning_rate "
        f"unchanged, but a larger batch wants a larger rate (about in proportion: "
        f"{format_rate(significant(2 * rate))} at {2 * size}); set train.lr_scaling.rule: "
        f"linear with reference_batch_size: {size} to have training scale it"
    )

"""What went wrong with a trial, read from its own learning curves: one label per trial and
the next move it suggests. ``diagnose`` is the one place the rules live; it is pure (curves,
metrics and params in, a ``Diagnosis`` out), and the rest of this module only feeds it.

The curves are dvclive's, as the train stage logs them: the training loss (the epoch's mean
over its batches, dropout on, L2 penalty included) and the validation loss (end of epoch,
penalty included), one row per epoch. The rules, checked in this order, first match wins:

``lr too high``
    the optimiser overshoots: the run diverged (``diverged`` in its metrics, or a non-finite
    loss); or the validation loss ended ``EXPLODED`` times above its first epoch's; or the
    *training* loss climbed back up, by ``REBOUND_OF_GAIN`` of what it had gained and
    ``REBOUND_OF_LEVEL`` of its best so far (the training loss is what the optimiser
    minimises: overfitting never makes it rise, a too large step does); or, where the task's
    floor is known (below), the training loss never got under ``WORSE_THAN_PRIOR`` times
    the loss of a constant prediction, which even a model with no hidden layer reaches (its
    output bias is enough), or both losses stayed ``HIGH`` while the training loss kept
    climbing: its rises over the last ``patience`` epochs add up to ``CLIMBING`` of its level.
``overfitting``
    after its best epoch the validation loss rose (median of the later epochs) by more than
    ``RISE_OF_BEST`` of its best and ``NOISE_MULTIPLE`` times its usual epoch-to-epoch step,
    while the training loss held (within ``TRAIN_HELD``) or fell.
``underfitting``
    both losses stayed ``HIGH`` (at least that share of a constant prediction's loss: the
    model cannot fit even its training rows, so it lacks capacity, not data) and flat (the
    last ``patience`` epochs gained less than ``FLAT`` of the level).
``not converged``
    it trained all ``train.max_epochs`` and its best epoch lies within the last
    ``train.early_stopping.patience`` epochs: early stopping never saw it stall.
``healthy``
    none of the above.

"What the task allows" is bounded by the loss of the best constant prediction, the
*prior's loss*: the entropy of the class frequencies for a classifier (at most ln(n
classes): 2.30 for 10 digits, 0.69 for two balanced classes), the variance of the target
for a regression (the MSE of predicting the mean). It is read from the true values of the
test split (``reports/predictions.csv``; the splits are stratified, so the frequencies are
the validation split's too). Without it the rules that need it are skipped. A trial with no
curves in its commit (one made before dvclive logged them) is ``-``: unknown.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from statistics import median, pvariance
from typing import Any

from nntune.config.metrics import Task
from nntune.experiments import Experiment

OVERFITTING = "overfitting"
UNDERFITTING = "underfitting"
LR_TOO_HIGH = "lr too high"
NOT_CONVERGED = "not converged"
HEALTHY = "healthy"
UNKNOWN_LABEL = "-"

ADVICE = {
    OVERFITTING: "more dropout or L2, or fewer units",
    UNDERFITTING: "more units or layers, or a higher rate",
    LR_TOO_HIGH: "a lower rate",
    NOT_CONVERGED: "more epochs or a higher rate",
}

# An order of magnitude above the first epoch: overfitting with early stopping does not
# get there in `patience` epochs (the digits grid's worst: 1.8x); a digits trial with rate
# 1e5 ended at 7.4e11 (issue 20).
EXPLODED = 10.0
# The training loss climbing back by a fifth of what it had gained, and by a tenth of its
# best: the digits grid's trials with no such trouble climb back by at most 4.4% of their
# gain (their rebound is large against a tiny level, hence the two conditions).
REBOUND_OF_GAIN = 0.2
REBOUND_OF_LEVEL = 0.1
# A quarter above the prior's loss: room for the L2 penalty and dropout in the training
# curve, while no working optimiser ends there (a constant prediction is reachable).
WORSE_THAN_PRIOR = 1.25
# "High": the model removed less than half of a constant prediction's loss.
HIGH = 0.5
# A high training loss whose rises over the recent epochs add up to a tenth of it is
# bouncing; an underfitting model's curve is smooth (its rises add up to 0.3% in the tests),
# one still going down has none. Only for high losses: a low one, near 0.02, wobbles by
# far more than a tenth of itself in healthy digits trials.
CLIMBING = 0.10
# Overfitting: a rise of a tenth of the best validation loss, and twice its usual step
# (median |change| per epoch), so a noisy but flat curve does not count.
RISE_OF_BEST = 0.10
NOISE_MULTIPLE = 2.0
# "Train loss held": its median after the best epoch within a quarter of its value there
# (dropout makes it wobble); a larger rise is the rate's doing and was caught above.
TRAIN_HELD = 0.25
# Flat: the last `patience` epochs gained under 2% of the loss.
FLAT = 0.02
# The fewest epochs a window (for "flat", "climbing") or a rise after the best spans.
MIN_WINDOW = 3
MIN_AFTER_BEST = 2

TRAIN_LOSS = "dvclive/plots/metrics/train/loss.tsv"
VAL_LOSS = "dvclive/plots/metrics/eval/loss.tsv"
PREDICTIONS = "reports/predictions.csv"


@dataclass(frozen=True)
class Curves:
    """A trial's per-epoch losses, as dvclive logged them."""

    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    first_epoch: int = 1  # a warm-started trial's curve goes on from its parent's epochs


@dataclass(frozen=True)
class Diagnosis:
    label: str
    evidence: str  # the numbers behind the label, one line

    @property
    def advice(self) -> str:
        """The suggested next move: one line, empty for ``healthy`` and unknown."""
        return ADVICE.get(self.label, "")


UNKNOWN = Diagnosis(UNKNOWN_LABEL, "no learning curves in the experiment's commit")


@dataclass(frozen=True)
class _Run:
    """What the rules need besides the curves."""

    epochs_trained: int
    best_epoch: int
    max_epochs: int | None
    patience: int
    prior: float | None


def diagnose(
    curves: Curves | None,
    metrics: Mapping[str, Any],
    params: Mapping[str, Any],
    prior_loss: float | None = None,
) -> Diagnosis:
    """The label of one trial from its curves, its metrics (``diverged``, ``epochs_trained``,
    ``best_epoch``, as metrics/train.json has them) and its flattened params
    (``train.max_epochs``, ``train.early_stopping.patience``); ``prior_loss`` is the loss
    of a constant prediction (see the module's docstring), None if unknown."""
    if str(metrics.get("diverged")).lower() == "true":
        at = _int(metrics.get("diverged_at_epoch"))
        where = f" at epoch {at}" if at else ""
        return Diagnosis(LR_TOO_HIGH, f"training diverged (non-finite loss){where}")
    if curves is None or not curves.val_loss or not curves.train_loss:
        return UNKNOWN
    n = min(len(curves.train_loss), len(curves.val_loss))  # killed between two writes
    curves = Curves(curves.train_loss[:n], curves.val_loss[:n], curves.first_epoch)
    train, val = curves.train_loss, curves.val_loss
    bad = next((i for i, v in enumerate(zip(train, val, strict=False)) if not _finite(*v)), None)
    if bad is not None:
        return Diagnosis(LR_TOO_HIGH, f"the loss is not finite at epoch {curves.first_epoch + bad}")
    run = _run(curves, metrics, params, prior_loss)
    for rule in (_rate_too_high, _overfitting, _underfitting, _not_converged):
        found = rule(curves, run)
        if found is not None:
            return found
    return Diagnosis(
        HEALTHY,
        f"best val loss {_g(min(val))} at epoch {run.best_epoch} of {run.epochs_trained}",
    )


def _rate_too_high(c: Curves, run: _Run) -> Diagnosis | None:
    train, val = c.train_loss, c.val_loss
    if val[0] > 0 and val[-1] >= EXPLODED * val[0]:
        return Diagnosis(
            LR_TOO_HIGH, f"val loss exploded from {_g(val[0])} (first epoch) to {_g(val[-1])}"
        )
    rebound = _rebound(c)
    if rebound is not None:
        epoch, best, value = rebound
        return Diagnosis(
            LR_TOO_HIGH,
            f"train loss climbed back from {_g(best)} to {_g(value)} at epoch {epoch}: "
            "the steps overshoot",
        )
    if run.prior is None:
        return None
    if min(train) > WORSE_THAN_PRIOR * run.prior:
        return Diagnosis(
            LR_TOO_HIGH,
            f"train loss never went below {_g(min(train))}, worse than a constant "
            f"prediction's {_g(run.prior)}",
        )
    climbed = _climb(train[-_window(c, run) - 1 :])
    if _high(c, run) and climbed >= CLIMBING:
        return Diagnosis(
            LR_TOO_HIGH,
            f"losses stay high (best val {_g(min(val))}, a constant prediction gives "
            f"{_g(run.prior)}) and train loss keeps bouncing up ({climbed:.0%} of it lately)",
        )
    return None


def _rebound(c: Curves) -> tuple[int, float, float] | None:
    """The first epoch whose training loss climbed back above its best so far by
    ``REBOUND_OF_GAIN`` of the gain and ``REBOUND_OF_LEVEL`` of the best: (epoch, best,
    value)."""
    train = c.train_loss
    best = train[0]
    for epoch, value in enumerate(train[1:], start=c.first_epoch + 1):
        gained = train[0] - best
        if gained > 0 and value - best > max(REBOUND_OF_GAIN * gained, REBOUND_OF_LEVEL * best):
            return epoch, best, value
        best = min(best, value)
    return None


def _overfitting(c: Curves, run: _Run) -> Diagnosis | None:
    train, val = c.train_loss, c.val_loss
    b = val.index(min(val))
    after, train_after = val[b + 1 :], train[b + 1 :]
    if len(after) < MIN_AFTER_BEST:
        return None
    rise = median(after) - val[b]
    noise = median(abs(y - x) for x, y in pairwise(val))
    held = not train_after or median(train_after) <= train[b] * (1 + TRAIN_HELD)
    if rise > RISE_OF_BEST * val[b] and rise > NOISE_MULTIPLE * noise and held:
        return Diagnosis(
            OVERFITTING,
            f"val loss rose from {_g(val[b])} (epoch {c.first_epoch + b}) to a median "
            f"{_g(median(after))} over {len(after)} epochs while train loss went "
            f"{_g(train[b])} -> {_g(train[-1])}",
        )
    return None


def _underfitting(c: Curves, run: _Run) -> Diagnosis | None:
    if run.prior is None or not _high(c, run):
        return None
    val = c.val_loss
    window = _window(c, run)
    start = val[-window - 1]
    if start - min(val[-window:]) >= FLAT * start:
        return None  # still going down: not converged, if anything
    return Diagnosis(
        UNDERFITTING,
        f"losses flat and high: best val {_g(min(val))}, train {_g(min(c.train_loss))}, "
        f"a constant prediction gives {_g(run.prior)}",
    )


def _not_converged(c: Curves, run: _Run) -> Diagnosis | None:
    if run.max_epochs is None or run.epochs_trained < run.max_epochs:
        return None
    if run.best_epoch <= run.epochs_trained - run.patience:
        return None
    return Diagnosis(
        NOT_CONVERGED,
        f"trained all {run.max_epochs} epochs (train.max_epochs) and the best is epoch "
        f"{run.best_epoch}: still improving",
    )


def _run(
    c: Curves, metrics: Mapping[str, Any], params: Mapping[str, Any], prior: float | None
) -> _Run:
    from_curve = c.first_epoch + len(c.val_loss) - 1
    return _Run(
        epochs_trained=_int(metrics.get("epochs_trained")) or from_curve,
        best_epoch=_int(metrics.get("best_epoch"))
        or c.first_epoch + c.val_loss.index(min(c.val_loss)),
        max_epochs=_int(params.get("train.max_epochs")),
        patience=max(1, _int(params.get("train.early_stopping.patience")) or MIN_WINDOW),
        prior=prior if prior is not None and math.isfinite(prior) and prior > 0 else None,
    )


def _high(c: Curves, run: _Run) -> bool:
    assert run.prior is not None
    return min(c.val_loss) >= HIGH * run.prior and min(c.train_loss) >= HIGH * run.prior


def _window(c: Curves, run: _Run) -> int:
    """Epochs the recent checks ("flat", "climbing") look back over: the patience."""
    return max(1, min(len(c.val_loss) - 1, max(MIN_WINDOW, run.patience)))


def _climb(values: Sequence[float]) -> float:
    """The rises from epoch to epoch, added up, as a share of the median level."""
    if len(values) < 2 or median(values) <= 0:
        return 0.0
    return sum(max(0.0, y - x) for x, y in pairwise(values)) / median(values)


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _int(value: Any) -> int | None:
    """A count from metrics or params: exp_show gives ints as floats, missing ones as None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def _g(value: float) -> str:
    return f"{value:.3g}"


# Feeding the rules: dvclive's files, the prior's loss, every experiment of a comparison.


def parse_curve(text: str | None) -> tuple[tuple[float, ...], int] | None:
    """The values of a dvclive TSV (``step<TAB>loss``) and the epoch of its first row."""
    if not text:
        return None
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    values = []
    for row in rows[1:]:
        if len(row) >= 2:
            try:
                values.append(float(row[1]))
            except ValueError:
                return None
    if not values:
        return None
    first_step = rows[1][0]
    return tuple(values), int(first_step) + 1 if first_step.isdigit() else 1


def curves_from_files(train_text: str | None, val_text: str | None) -> Curves | None:
    """``Curves`` from the text of dvclive's train and eval ``loss.tsv``; None if either is
    missing or unreadable."""
    train, val = parse_curve(train_text), parse_curve(val_text)
    if train is None or val is None:
        return None
    return Curves(train_loss=train[0], val_loss=val[0], first_epoch=val[1])


def prior_loss(task: Task, actual: Sequence[str]) -> float | None:
    """The loss of the best constant prediction for these true values: the entropy of the
    class frequencies (cross-entropy of predicting them), or the variance (MSE of the mean)."""
    if not actual:
        return None
    if task == "regression":
        try:
            return pvariance([float(v) for v in actual])
        except ValueError:
            return None
    counts = Counter(actual).values()
    n = len(actual)
    return -sum(k / n * math.log(k / n) for k in counts)


def actual_values(predictions_csv: str | None) -> list[str]:
    """The ``actual`` column of reports/predictions.csv."""
    if not predictions_csv:
        return []
    return [row.get("actual") or "" for row in csv.DictReader(io.StringIO(predictions_csv))]


FileReader = Callable[[list[tuple[str, str]]], Mapping[tuple[str, str], str | None]]


def diagnose_experiments(
    experiments: Sequence[Experiment], task: Task, read: FileReader
) -> dict[str, Diagnosis]:
    """Every experiment's diagnosis, by name. ``read`` gives the text of ``(rev, path)``
    files (``nntune.experiments.read_files``); the prior's loss comes from the first
    experiment's test predictions (the data is the same for all of them)."""
    if not experiments:
        return {}
    wanted = [(e.rev, path) for e in experiments for path in (TRAIN_LOSS, VAL_LOSS)]
    texts = read([*wanted, (experiments[0].rev, PREDICTIONS)])
    prior = prior_loss(task, actual_values(texts.get((experiments[0].rev, PREDICTIONS))))
    return {
        e.name: diagnose(
            curves_from_files(texts.get((e.rev, TRAIN_LOSS)), texts.get((e.rev, VAL_LOSS))),
            e.metrics,
            e.params,
            prior,
        )
        for e in experiments
    }

"""Which parameters mattered: an Optuna study rebuilt from finished experiments, whatever
queued them (a grid, random points, a search), and ``optuna.importance`` run over it.

Each experiment becomes one completed trial: its varying params, under distributions
inferred from the values seen, and its objective. fANOVA (a random forest's variance
decomposition) and PED-ANOVA (how the top 10 % differ from the rest) are Optuna's own;
nothing here computes an importance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

from nntune.config.metrics import Objective
from nntune.errors import NntuneError
from nntune.experiments import Experiment
from nntune.tuning.ranking import plain, varying_params

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution, CategoricalChoiceType

Evaluator = Literal["fanova", "ped-anova"]
EVALUATORS: tuple[Evaluator, ...] = get_args(Evaluator)
EVALUATOR_NAMES: dict[Evaluator, str] = {"fanova": "fANOVA", "ped-anova": "PED-ANOVA"}

# Below these there is nothing to tell apart: with one varying parameter the answer is 100 %
# by definition, and a forest fitted to 4 points (or PED-ANOVA's top 10 % of them, a single
# trial) says whatever its first split happens to say.
MIN_TRIALS = 5
MIN_PARAMS = 2


class TooFewExperimentsError(NntuneError):
    pass


def param_importances(
    experiments: Sequence[Experiment], objective: Objective, evaluator: Evaluator = "fanova"
) -> dict[str, float]:
    """Each varying parameter's share of the importance (they sum to 1), largest first,
    over ``experiments``: succeeded ones with a finite objective (``Comparison.ranked``)."""
    import optuna

    study = build_study(experiments, objective)
    chosen: optuna.importance.BaseImportanceEvaluator = (
        optuna.importance.FanovaImportanceEvaluator(seed=0)
        if evaluator == "fanova"
        else optuna.importance.PedAnovaImportanceEvaluator()
    )
    found = optuna.importance.get_param_importances(study, evaluator=chosen)
    return {key: float(value) for key, value in found.items()}


def build_study(experiments: Sequence[Experiment], objective: Objective) -> optuna.Study:
    """An in-memory study with one completed trial per experiment, over the params that
    vary among them; too few experiments or varying params raise TooFewExperimentsError."""
    import optuna

    keys = varying_params(list(experiments))
    _check_enough(experiments, keys, objective)
    distributions = {key: distribution([e.params.get(key) for e in experiments]) for key in keys}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize" if objective.direction == "min" else "maximize"
    )
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={k: _trial_value(e.params.get(k), d) for k, d in distributions.items()},
                distributions=distributions,
                value=float(e.metrics[objective.metric]),
                user_attrs={"experiment": e.name},
            )
            for e in experiments
        ]
    )
    return study


def distribution(values: Sequence[Any]) -> BaseDistribution:
    """Numbers span a float or int range (log-scaled when they span two decades or more);
    anything else (strings, booleans, lists, a missing value) is a category."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    plains = [plain(v) for v in values]
    if all(is_number(v) for v in plains):
        low, high = min(plains), max(plains)
        log = spans_decades(plains)
        if all(isinstance(v, int) for v in plains):
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(float(low), float(high), log=log)
    return CategoricalDistribution(sorted({_choice(v) for v in plains}, key=json.dumps))


def spans_decades(values: Sequence[float]) -> bool:
    """Positive numbers whose largest is at least 100 times the smallest: a log scale."""
    return min(values) > 0 and max(values) / min(values) >= 100


def _check_enough(experiments: Sequence[Experiment], keys: list[str], objective: Objective) -> None:
    bad = [e.name for e in experiments if not is_number(e.metrics.get(objective.metric))]
    if bad:  # the caller passed more than Comparison.ranked: a bug, not a user error
        raise ValueError(f"experiments without a finite {objective.metric}: {', '.join(bad)}")
    if len(experiments) >= MIN_TRIALS and len(keys) >= MIN_PARAMS:
        return
    varying = ", ".join(keys) or "none"
    raise TooFewExperimentsError(
        f"too few experiments to tell which parameters matter: {len(experiments)} finished "
        f"with a finite {objective.metric} (needs {MIN_TRIALS}), and {len(keys)} parameter(s) "
        f"vary among them ({varying}; needs {MIN_PARAMS}); queue more with `nntune grid` or "
        "`nntune search` and run them"
    )


def _trial_value(value: Any, dist: BaseDistribution) -> CategoricalChoiceType:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    value = plain(value)
    if isinstance(dist, CategoricalDistribution):
        return _choice(value)
    return int(value) if isinstance(dist, IntDistribution) else float(value)


def _choice(value: Any) -> CategoricalChoiceType:
    """A value Optuna accepts as a category: None, bool, int, float or str (a list or a
    mapping becomes its JSON text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True)


def is_number(value: Any) -> bool:
    """A finite int or float, and not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

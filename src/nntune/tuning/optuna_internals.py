"""The private API of Optuna that nntune needs, and nowhere else.

The study driver is restartable: it rebuilds each trial from the journal (a
``FrozenTrial``) and must report to, or sample for, that same trial. Optuna's public
``Trial`` constructor takes the storage's trial id, which a ``FrozenTrial`` keeps in a
private attribute. ``pyproject.toml`` bounds Optuna to the versions this was tested with,
and ``tests/test_layout.py`` checks that the installed Optuna still has it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

# The private attribute of optuna.trial.FrozenTrial used below.
USED = ("_trial_id",)


def live_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """The ``optuna.trial.Trial`` of ``study`` that ``frozen`` (a ``FrozenTrial`` read back
    from the journal) records, to report to or sample for."""
    import optuna

    return optuna.trial.Trial(study, frozen._trial_id)

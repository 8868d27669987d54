"""The best trial or the average of the best K? Decided on out-of-fold predictions.

With ``data.cv_folds`` every trial's fold stages predict the rows of their own fold, which
that fold's model never trained on (``nntune.stage.crossval.out_of_fold``). Together they
cover every train + validation row once. Averaging K trials' out-of-fold predictions row by
row (``nntune.stage.ensemble.combined``, the ensemble stage's own average) scores the
ensemble of those K configurations on the same rows, by the same rule, as each single one,
and never looks at the test split. The score is the pooled log loss of the class
probabilities (classification) or the RMSE in the target's units (regression): proper
scores of the predictions themselves, without the training loss's label smoothing or weight
penalty, so an average and a single model compare fairly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nntune.config.metrics import Task
from nntune.errors import NntuneError
from nntune.stage.crossval import OUT_PREFIX
from nntune.stage.ensemble import combined
from nntune.stage.outputs import class_probabilities


class OofError(NntuneError):
    pass


def score_name(task: Task) -> str:
    return "RMSE" if task == "regression" else "log loss"


def pooled(folds: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One trial's folds as one frame, in row order; each row of the table at most once."""
    frame = pd.concat(list(folds), ignore_index=True).sort_values("row", kind="stable")
    if frame["row"].duplicated().any():
        raise OofError("out-of-fold predictions hold a row twice: the folds overlap")
    return frame.reset_index(drop=True)


def outputs(frame: pd.DataFrame) -> np.ndarray:
    columns = [c for c in frame.columns if str(c).startswith(OUT_PREFIX)]
    columns.sort(key=lambda c: int(str(c).removeprefix(OUT_PREFIX)))
    return frame[columns].to_numpy(dtype="float64")


def oof_score(frame: pd.DataFrame, task: Task) -> float:
    """The pooled score of out-of-fold predictions: lower is better."""
    output = outputs(frame)
    y = frame["target"].to_numpy()
    if task == "regression":
        return float(np.sqrt(np.mean((output.reshape(-1) - y.astype("float64")) ** 2)))
    proba = np.clip(class_probabilities(output), 1e-15, 1.0)
    picked = proba[np.arange(len(y)), y.astype("int64")]
    return float(-np.mean(np.log(picked)))


def averaged(frames: Sequence[pd.DataFrame], task: Task) -> pd.DataFrame:
    """The row-by-row average of several trials' pooled out-of-fold predictions. They must
    hold the same rows with the same targets (one split seed, one set of folds)."""
    first = frames[0]
    for other in frames[1:]:
        if not np.array_equal(other["row"].to_numpy(), first["row"].to_numpy()) or not (
            np.array_equal(other["target"].to_numpy(), first["target"].to_numpy())
        ):
            raise OofError(
                "the trials' folds hold other rows (data.split_seed, data.cv_folds, "
                "data.missing or the data differ), so their predictions cannot be averaged"
            )
    average = combined([outputs(f) for f in frames], task).reshape(len(first), -1)
    columns = {f"{OUT_PREFIX}{j}": average[:, j] for j in range(average.shape[1])}
    return pd.DataFrame({"row": first["row"], "target": first["target"], **columns})


@dataclass(frozen=True)
class Choice:
    """The best trial's out-of-fold score against the average of the best ``len(members)``."""

    metric: str  # "log loss" or "RMSE"
    best: str
    best_score: float
    members: list[str]
    ensemble_score: float

    @property
    def ensemble_wins(self) -> bool:
        return self.ensemble_score < self.best_score

    def describe(self) -> str:
        verdict = "better" if self.ensemble_wins else "not better"
        return (
            f"on the folds' held-out rows the average of the best {len(self.members)} has "
            f"{self.metric} {self.ensemble_score:.4g} against {self.best_score:.4g} for the best "
            f"trial ({self.best}): {verdict}"
        )


def choose(ranked: Mapping[str, Sequence[pd.DataFrame]], task: Task) -> Choice:
    """``ranked``: the candidates' fold frames, best first (the ensemble's members in the
    order ``compare`` ranks them); the first is the best trial."""
    if len(ranked) < 2:
        raise OofError("an average needs at least 2 cross-validated trials")
    frames = {name: pooled(folds) for name, folds in ranked.items()}
    names = list(frames)
    return Choice(
        metric=score_name(task),
        best=names[0],
        best_score=oof_score(frames[names[0]], task),
        members=names,
        ensemble_score=oof_score(averaged(list(frames.values()), task), task),
    )

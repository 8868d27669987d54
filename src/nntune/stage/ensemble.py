"""The ensemble stage: the average of several experiments' models, scored on the test split.

``params.yaml``'s ``ensemble.members`` names each member by experiment and by the md5s of
its trained model and its prepared data (``nntune ensemble --top K`` fills them in from the
members' dvc.lock). ``materialise`` copies exactly those objects out of DVC's cache into
``models/ensemble/member_N/``: the model, its meta.json (the fitted preprocessing, which
``nntune export`` builds into one model of all members) and its test split as its own
preprocessing encoded it (members may differ in ``data.scaling`` or category caps). The
cache keeps one copy of each: the same md5 is the same object. ``evaluate_ensemble``
checks that every member held out the same rows, then averages what the members output on
them: the class probabilities, or the values in the target's units. Without members the
stage writes empty records and imports neither DVC nor a framework.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nntune.config.ensemble_section import EnsembleMember, EnsembleParams
from nntune.config.metrics import Task
from nntune.errors import NntuneError
from nntune.stage import artifacts
from nntune.stage.data import META_FILE, Prepared, read_prepared
from nntune.stage.evaluate import evaluate_predictions
from nntune.stage.outputs import class_probabilities, raw_output
from nntune.stage.quiet import filter_tf_noise

INFO_FILE = "ensemble.json"
MODEL_FILE = "model.keras"
TEST_FILE = "test.parquet"  # the member's test split, encoded by its own preprocessing
PREFIX = "ensemble_"  # the ensemble's metric names: ensemble_test_accuracy, ...


class EnsembleError(NntuneError):
    pass


@dataclass(frozen=True)
class Member:
    experiment: str
    folder: Path  # MODEL_FILE, META_FILE and TEST_FILE
    prepared: Prepared  # its meta.json and test split


def materialise(ensemble: EnsembleParams, out_dir: str | Path, repo_root: str | Path = ".") -> None:
    """Write ``out_dir`` as a whole (``artifacts.atomic_dir``): each member's model and
    meta.json out of DVC's cache, checked against their md5s, and ``ensemble.json`` naming
    the members. Only ``{"members": []}`` without members (no DVC opened)."""
    with artifacts.atomic_dir(out_dir) as tmp:
        if ensemble.enabled:
            with _Cache(repo_root) as cache:
                for i, member in enumerate(ensemble.members):
                    folder = tmp / f"member_{i}"
                    folder.mkdir()
                    _copy_member(cache, member, i, folder)
        members = [m.record() for m in ensemble.members]
        artifacts.write_json(tmp / INFO_FILE, {"members": members})


def _copy_member(cache: _Cache, member: EnsembleMember, i: int, folder: Path) -> None:
    where = f"ensemble.members[{i}] ({member.experiment})"
    cache.copy(member.model, folder / MODEL_FILE, f"{where}: its model")
    manifest = json.loads(cache.path(member.prepared, where).read_text("utf-8"))
    entries = {e.get("relpath"): e.get("md5") for e in manifest}
    for name in (META_FILE, TEST_FILE):
        if not entries.get(name):
            raise EnsembleError(
                f"{where}: its data/prepared (md5 {member.prepared}) has no {name}; run "
                "that experiment again with this nntune"
            )
        cache.copy(entries[name], folder / name, f"{where}: its {name}")


class _Cache:
    """DVC's cache of the repository at ``root`` (a queued experiment's config points at
    the project's): objects by md5, copied out and checked."""

    def __init__(self, root: str | Path) -> None:
        from dvc.repo import Repo

        self.repo = Repo(str(root))

    def __enter__(self) -> _Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.repo.close()

    def path(self, md5: str, where: str) -> Path:
        path = Path(self.repo.cache.local.oid_to_path(md5))
        if not path.is_file():
            raise EnsembleError(
                f"{where}: md5 {md5} is not in DVC's cache; fetch the member with "
                "`dvc exp pull <remote> NAME` and `dvc pull`, or rebuild the list with "
                "`nntune ensemble --top K`"
            )
        return path

    def copy(self, md5: str, target: Path, where: str) -> None:
        shutil.copyfile(self.path(md5, where), target)
        if artifacts.file_md5(target) != md5:
            raise EnsembleError(
                f"{where}: DVC's cache holds other bytes under md5 {md5}; the cache is "
                "corrupt: remove that object and pull it again"
            )


def read_members(members_dir: str | Path) -> list[Member]:
    """The members ``materialise`` wrote, in order."""
    members_dir = Path(members_dir)
    info_path = members_dir / INFO_FILE
    if not info_path.is_file():
        raise EnsembleError(f"{info_path}: not found; run the ensemble stage (dvc repro)")
    records = json.loads(info_path.read_text(encoding="utf-8"))["members"]
    members = []
    for i, record in enumerate(records):
        folder = members_dir / f"member_{i}"
        prepared = read_prepared(folder, splits=("test",))
        members.append(Member(str(record["experiment"]), folder, prepared))
    return members


def check_members(members: Iterable[Member], prepared: Prepared) -> None:
    """Members are averaged row by row on this project's test split: each must predict the
    same target, task and classes, and must have held out exactly the same rows of the same
    data (a member trained on a test row would make the ensemble's score a lie)."""
    for member in members:
        theirs = member.prepared
        problems = []
        if (theirs.target, theirs.task) != (prepared.target, prepared.task):
            problems.append(
                f"it predicts {theirs.target} ({theirs.task}), this project {prepared.target} "
                f"({prepared.task})"
            )
        elif list(theirs.classes) != list(prepared.classes):
            problems.append(f"its classes {list(theirs.classes)} are not {prepared.classes}")
        if theirs.source_md5 != prepared.source_md5:
            problems.append("it was trained on another version of the data (its md5 differs)")
        elif theirs.test_rows != prepared.test_rows or not prepared.test_rows:
            problems.append(
                "its test split holds other rows (data.split_seed, test_fraction, "
                "val_fraction or missing differ)"
            )
        if problems:
            raise EnsembleError(
                f"ensemble member {member.experiment}: " + "; ".join(problems) + ". An "
                "ensemble's members must share the target, the data and the test split: "
                "choose experiments of one search (`nntune ensemble --top K` does)"
            )


def member_output(member: Member) -> np.ndarray:
    """The member's raw output on its test split, as its evaluate stage got it."""
    with filter_tf_noise():  # TensorFlow's start-up lines on fd 2
        import keras

        net = keras.saving.load_model(member.folder / MODEL_FILE, compile=False)
    return raw_output(net, member.prepared.x("test"))


def combined(outputs: Sequence[np.ndarray], task: Task) -> np.ndarray:
    """The ensemble's output from its members' raw outputs: the mean of their class
    probabilities (a sigmoid head read as [1 - p, p]), or of their values (in the target's
    units: each model de-standardises its own output)."""
    if task == "regression":
        return np.asarray(np.mean([o.reshape(-1).astype("float64") for o in outputs], axis=0))
    return np.asarray(np.mean([class_probabilities(o) for o in outputs], axis=0))


def evaluate_ensemble(
    prepared_dir: str | Path, members_dir: str | Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ensemble's test metrics (``ensemble_test_*`` and ``ensemble_members``) and a
    report of each member's own test metrics beside the ensemble's; both empty without
    members."""
    members = read_members(members_dir)
    if not members:
        return {}, {}
    prepared = read_prepared(prepared_dir, splits=("test",))
    check_members(members, prepared)
    _, y_test = prepared.xy("test")
    outputs, own = [], []
    for member in members:
        output = member_output(member)
        outputs.append(output)
        scores, _ = evaluate_predictions(prepared, y_test, output)
        own.append({"experiment": member.experiment, **scores})
    metrics, _ = evaluate_predictions(prepared, y_test, combined(outputs, prepared.task))
    named = {f"{PREFIX}{key}": value for key, value in metrics.items()}
    named[f"{PREFIX}members"] = len(members)
    return named, {"ensemble": metrics, "members": own}

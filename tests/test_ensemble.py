"""Ensembles (``nntune ensemble --top K``): the ``ensemble`` params and their refusals, the
average of the members' outputs, the checks that members share the test split, compare
keeping ensembles apart from the trials, the upgrade of an older params.yaml, and, end to
end, an ensemble experiment whose metrics, export and predictions are the average of its
members' own models."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import repo_params_dict, shrink
from project import NNTUNE, run, scaffold

from nntune.config.ensemble_section import EnsembleParams
from nntune.config.metrics import Objective
from nntune.config.params import parse_params
from nntune.config.sections import Params, ParamsError
from nntune.experiments.ensembles import members_override
from nntune.experiments.rows import Experiment
from nntune.scaffold.params_text import with_stage_sections
from nntune.stage.data import Prepared
from nntune.stage.ensemble import (
    EnsembleError,
    Member,
    check_members,
    combined,
    evaluate_ensemble,
    materialise,
)
from nntune.tuning.ranking import compare, ensemble_records, records

MD5 = "0123456789abcdef0123456789abcdef"
MEMBER = {"experiment": "a", "model": MD5, "prepared": f"{MD5}.dir"}


def _params(members: Any) -> Params:
    raw = shrink(repo_params_dict())
    raw["ensemble"] = {"members": members}
    return parse_params(raw, source="test")


def _problems(members: Any) -> str:
    with pytest.raises(ParamsError) as caught:
        _params(members)
    return "\n".join(caught.value.problems)


def test_no_ensemble_by_default_and_an_older_params_yaml_without_the_section_loads() -> None:
    assert _params([]).ensemble == EnsembleParams()
    raw = shrink(repo_params_dict())
    raw.pop("ensemble")
    assert not parse_params(raw, source="old").ensemble.enabled


def test_members_name_the_experiment_and_the_md5s_of_its_model_and_prepared_data() -> None:
    second = {**MEMBER, "experiment": "b", "model": MD5[::-1]}
    ensemble = _params([MEMBER, second]).ensemble
    assert ensemble.enabled
    assert [m.record() for m in ensemble.members] == [MEMBER, second]


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ("a,b", "ensemble.members must be a list"),
        ([MEMBER], "must list at least 2 experiments"),
        ([MEMBER, MEMBER], "lists an experiment twice"),
        ([MEMBER, {**MEMBER, "experiment": "b", "model": "abc"}], "ensemble.members[1] must be"),
        ([MEMBER, {**MEMBER, "experiment": "b", "prepared": MD5}], "ensemble.members[1] must be"),
        ([MEMBER, {"experiment": "b", "model": MD5}], "ensemble.members[1] must be"),
    ],
)
def test_malformed_members_are_refused_by_key(members: Any, expected: str) -> None:
    assert expected in _problems(members)


def test_the_override_sets_the_members_through_dvcs_own_parser(tmp_path: Path) -> None:
    """`nntune ensemble` passes the members as one -S argument: DVC's Hydra parser must
    read back exactly the list (an odd experiment name included)."""
    from dvc.utils.hydra import apply_overrides

    members = [MEMBER, {**MEMBER, "experiment": "it's: [odd], {x}", "model": MD5[::-1]}]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"ensemble": {"members": []}, "x": 1}))
    apply_overrides(str(path), [members_override(members)])
    assert yaml.safe_load(path.read_text()) == {"ensemble": {"members": members}, "x": 1}


def test_the_average_is_of_probabilities_or_of_values() -> None:
    sigmoid_a, sigmoid_b = np.array([[0.2], [0.9]]), np.array([[0.4], [0.5]])
    assert np.allclose(combined([sigmoid_a, sigmoid_b], "binary"), [[0.7, 0.3], [0.3, 0.7]])
    soft_a = np.array([[0.5, 0.25, 0.25]], dtype="float32")
    soft_b = np.array([[0.1, 0.1, 0.8]], dtype="float32")
    assert np.allclose(combined([soft_a, soft_b], "multiclass"), [[0.3, 0.175, 0.525]])
    values = combined([np.array([[1.0], [3.0]]), np.array([[2.0], [5.0]])], "regression")
    assert values.shape == (2,)
    assert np.allclose(values, [1.5, 4.0])


def _prepared(**changes: Any) -> Prepared:
    fields: dict[str, Any] = {
        "splits": {},
        "features": ["x"],
        "target": "y",
        "task": "binary",
        "classes": ["no", "yes"],
        "scaler_mean": [0.0],
        "scaler_scale": [1.0],
        "source_md5": "d" * 32,
        "test_rows": [3, 5, 8],
    }
    return Prepared(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"test_rows": [3, 5, 9]}, "its test split holds other rows"),
        ({"source_md5": "e" * 32}, "another version of the data"),
        ({"classes": ["yes", "no"]}, "its classes"),
        ({"task": "regression"}, "it predicts y (regression)"),
    ],
)
def test_a_member_that_did_not_hold_out_the_same_rows_is_refused(
    changes: dict[str, Any], expected: str
) -> None:
    mine = _prepared()
    check_members([Member("same", Path(), _prepared())], mine)  # the same split: fine
    with pytest.raises(EnsembleError, match="ensemble member other") as caught:
        check_members([Member("other", Path(), _prepared(**changes))], mine)
    assert expected in str(caught.value)


def test_without_members_the_stage_writes_empty_records_and_opens_no_dvc(tmp_path: Path) -> None:
    out = tmp_path / "models" / "ensemble"
    materialise(EnsembleParams(), out, repo_root=tmp_path / "not-a-repo")
    assert json.loads((out / "ensemble.json").read_text()) == {"members": []}
    assert evaluate_ensemble(tmp_path / "no-prepared-data", out) == ({}, {})


def _exp(name: str, val_loss: float, members: Any = "[]", **metrics: Any) -> Experiment:
    params = {"ensemble.members": members}
    return Experiment(name, name, "Success", params, {"val_loss": val_loss, **metrics})


def test_compare_lists_ensembles_apart_and_never_ranks_them() -> None:
    """An ensemble experiment's val_* are the baseline's (its train stage did not change):
    ranking it with the trials would be a lie, so it is shown by its test metrics only."""
    trials = [_exp("a", 0.30), _exp("b", 0.20)]
    ensemble = _exp(
        "ens",
        0.01,  # the baseline's, copied: must not win
        members=str([MEMBER, {**MEMBER, "experiment": "b"}]),
        ensemble_members=2,
        ensemble_test_accuracy=0.97,
    )
    failed = Experiment("broken", "broken", "Failed", {"ensemble.members": "[{}]"}, {})
    objective = Objective("val_loss", "min")
    comparison = compare([*trials, ensemble, failed], objective, "multiclass")
    assert [e.name for e in comparison.ranked] == ["b", "a"]
    assert [e.name for e in comparison.failed] == ["broken"]
    assert "ensemble.members" not in comparison.varying
    assert [r["experiment"] for r in records(comparison)] == ["b", "a", "broken"]
    assert ensemble_records(comparison) == [
        {"experiment": "ens", "members": 2, "test_accuracy": 0.97}
    ]


def test_commands_that_queue_trials_refuse_a_base_that_lists_members(tmp_path: Path) -> None:
    from nntune.cli.options import load_for_trials
    from nntune.errors import NntuneError

    raw = shrink(repo_params_dict())
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_for_trials(path)[1] == raw
    raw["ensemble"]["members"] = [MEMBER, {**MEMBER, "experiment": "b"}]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(NntuneError, match="every trial would copy them"):
        load_for_trials(path)


def test_init_force_adds_the_ensemble_section_to_an_older_params_yaml() -> None:
    old = "data:\n  source: d.csv\n\nmodel:\n  units: 8\n"
    upgraded, added = with_stage_sections(old)
    assert added == ["ensemble"]
    assert yaml.safe_load(upgraded) == {
        "data": {"source": "d.csv"},
        "model": {"units": 8},
        "ensemble": {"members": []},
    }
    assert with_stage_sections(upgraded) == (upgraded, [])


def _members_average(project: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The average of the members' softmax on their test split, computed here from each
    member's own model and prepared data (read back from git and DVC's cache), and the
    test labels: what the ensemble must equal."""
    import keras

    from nntune.experiments import read_outputs

    outputs, labels = [], None
    for name in names:
        files = read_outputs(project, name, ["models/model.keras", "data/prepared/test.parquet"])
        model_path = project / f"{name}.keras"
        model_path.write_bytes(files["models/model.keras"])
        net = keras.saving.load_model(model_path, compile=False)
        model_path.unlink()
        test = pd.read_parquet(io.BytesIO(files["data/prepared/test.parquet"]))
        features = test.drop(columns="target").to_numpy("float32")
        outputs.append(np.asarray(net.predict(features, verbose=0), dtype="float64"))
        labels = test["target"].to_numpy()
    assert labels is not None
    probabilities = np.mean([o / o.sum(axis=1, keepdims=True) for o in outputs], axis=0)
    return probabilities, labels


def test_an_ensemble_experiment_averages_its_members_in_metrics_export_and_predict(
    tmp_path: Path,
) -> None:
    project = scaffold(tmp_path / "project")
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["max_epochs"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(project, "git", "commit", "-qam", "two epochs")
    for name, units in (("u8", 8), ("u16", 16), ("u32", 32)):
        run(project, "dvc", "exp", "run", "--name", name, "-S", f"model.units={units}")

    refused = run(project, NNTUNE, "ensemble", "--top", "4", check=False)
    assert refused.returncode == 2
    assert "only 3 successful experiment(s) to average" in refused.stderr

    unknown = run(project, NNTUNE, "ensemble", "-e", "u8", "-e", "nope", check=False)
    assert unknown.returncode == 2
    assert "--experiment: nope not among the successful experiments" in unknown.stderr

    done = run(project, NNTUNE, "ensemble", "--top", "2", "--name", "ens")
    assert "ensemble ens (test split): test_accuracy" in done.stdout
    shown = json.loads(run(project, NNTUNE, "compare", "--format", "json").stdout)
    best_two = [row["experiment"] for row in shown["experiments"][:2]]
    assert "ens" not in [row["experiment"] for row in shown["experiments"]]
    assert [e["experiment"] for e in shown["ensembles"]] == ["ens"]

    # Lineage: the params name the members and the md5s their dvc.lock recorded.
    params = yaml.safe_load(
        run(project, "git", "show", _ref(project, "ens") + ":params.yaml").stdout
    )
    members = params["ensemble"]["members"]
    assert [m["experiment"] for m in members] == best_two
    for member in members:
        lock = yaml.safe_load(
            run(project, "git", "show", _ref(project, member["experiment"]) + ":dvc.lock").stdout
        )
        outs = {o["path"]: o["md5"] for o in lock["stages"]["train"]["outs"]}
        assert member["model"] == outs["models/model.keras"]

    # The metrics: the average of the members' own models on the shared test split.
    probabilities, labels = _members_average(project, best_two)
    metrics = json.loads(
        run(project, "git", "show", _ref(project, "ens") + ":metrics/ensemble.json").stdout
    )
    assert metrics["ensemble_members"] == 2
    expected = float(np.mean(probabilities.argmax(axis=1) == labels))
    assert metrics["ensemble_test_accuracy"] == pytest.approx(expected, abs=1e-12)

    # Export and predict: the raw test rows give the same averaged probabilities.
    from nntune.experiments import read_outputs

    files = read_outputs(project, "ens", ["models/ensemble/member_0/meta.json"])
    rows = json.loads(files["models/ensemble/member_0/meta.json"])["test_rows"]
    raw_rows = pd.read_csv(project / "data/digits.csv").iloc[rows]
    raw_rows.to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "predicted.csv"
    run(
        project,
        NNTUNE,
        "predict",
        str(tmp_path / "rows.csv"),
        "-e",
        "ens",
        "--proba",
        "-o",
        str(out),
    )
    predicted = pd.read_csv(out).to_numpy("float64")
    assert np.allclose(predicted, probabilities, atol=1e-5)

    run(project, NNTUNE, "export", "-e", "ens", "--out", str(tmp_path / "export"))
    exported = _exported_output(tmp_path / "export", raw_rows.drop(columns="target"))
    assert np.allclose(exported, probabilities, atol=1e-5)
    card = json.loads((tmp_path / "export" / "model_card.json").read_text())
    assert [m["experiment"] for m in card["ensemble"]] == best_two

    # Applied to the workspace, the ensemble and what it depends on are up to date.
    run(project, "dvc", "exp", "apply", "ens")
    assert json.loads(run(project, "dvc", "status", "--json", "ensemble").stdout) == {}


def _ref(project: Path, name: str) -> str:
    refs = run(project, "git", "for-each-ref", "--format=%(refname)", "refs/exps/").stdout
    return next(r for r in refs.split() if r.rsplit("/", 1)[-1] == name)


def _exported_output(folder: Path, rows: pd.DataFrame) -> np.ndarray:
    import keras

    card = json.loads((folder / "model_card.json").read_text())
    names = {c["column"]: c["input"] for c in card["inputs"]}
    net = keras.saving.load_model(folder / "model.keras")
    inputs = {names[c]: rows[c].to_numpy("float32") for c in names}
    return np.asarray(net.predict(inputs, verbose=0), dtype="float64")

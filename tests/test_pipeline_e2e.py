"""End-to-end: the real pipeline in a scaffolded temp project with its own git repo,
driven by the real ``dvc`` commands. Never touches this repository's git history."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from project import NNTUNE, run, scaffold

from nntune.warm.launcher import warm_runner

pytestmark = pytest.mark.e2e

# Files whose bytes must not change when the same params run again on CPU.
DETERMINISTIC = [
    "metrics/train.json",
    "metrics/evaluate.json",
    "reports/predictions.csv",
    "reports/validation.json",
    "dvclive/metrics.json",
    "dvclive/plots/metrics/train/loss.tsv",
    "dvclive/plots/metrics/eval/loss.tsv",
    "dvclive/plots/metrics/eval/accuracy.tsv",
    "data/prepared/train.parquet",
    "data/prepared/meta.json",
]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return scaffold(tmp_path / "project")


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


def _snapshot(project: Path) -> dict[str, bytes]:
    return {name: (project / name).read_bytes() for name in DETERMINISTIC}


def _assert_forked_and_unchanged(
    project: Path,
    warm: subprocess.CompletedProcess[str],
    profile: Path,
    before: dict[str, bytes],
    runner: str,
) -> None:
    """The forced rerun ran every Keras stage forked from the runner (its profile says so)
    and rewrote each file of ``before`` byte for byte."""
    assert "cold" not in warm.stderr, warm.stderr
    forked = {r["stage"] for r in map(json.loads, profile.read_text().splitlines()) if r["warm"]}
    assert forked == {"pretrain", "warmstart", "train", "evaluate"}
    changed = [name for name in before if before[name] != (project / name).read_bytes()]
    assert not changed, f"not reproducible under {runner}: {changed}"


def test_repro_is_skipped_when_unchanged_and_byte_identical_when_forced(project: Path) -> None:
    first = run(project, "dvc", "repro")
    for stage in ("validate", "prepare", "pretrain", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    before = _snapshot(project)
    evaluation = json.loads(before["metrics/evaluate.json"])
    assert set(evaluation) == {"test_accuracy", "test_f1_macro", "test_log_loss"}
    assert evaluation["test_accuracy"] > 0.5  # 4 epochs of a 16-unit MLP learn digits

    second = run(project, "dvc", "repro")
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date." in second.stdout

    run(project, "dvc", "repro", "--force")
    after = _snapshot(project)
    changed = [name for name in DETERMINISTIC if before[name] != after[name]]
    assert not changed, f"not reproducible: {changed}"

    # The same bytes when the stages are forked from the warm runner of `nntune run`, which
    # imported TensorFlow before forking (the profile says which stages it ran).
    profile = project.parent / "profile.jsonl"
    with warm_runner() as socket, _environ(NNTUNE_PROFILE=str(profile)):
        assert socket is not None
        warm = run(project, "dvc", "repro", "--force")
        _assert_forked_and_unchanged(project, warm, profile, before, "the warm runner")
        # Again: each Keras stage now runs in a resident child, one that has already run
        # stages of this working copy (Keras' session cleared, the stage reseeded).
        again = run(project, "dvc", "repro", "--force")
    _assert_forked_and_unchanged(project, again, profile, before, "resident children")
    lines = profile.read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["warm"]]  # validate, prepare: cold
    assert len(records) == 8
    first_pids = {r["pid"] for r in records[: len(records) // 2]}
    assert all(r["pid"] in first_pids for r in records[len(records) // 2 :]), records
    # Lineage: what produced these numbers, down to the data file's DVC hash.
    lineage = json.loads((project / "reports" / "train_run.json").read_text())
    assert lineage["train_seconds"] > 0 and lineage["versions"]["nntune"]
    assert lineage["device"].startswith("CPU") and lineage["device_kind"] == "cpu"
    assert lineage["keras_backend"] == "tensorflow"
    assert set(lineage["versions"]) == {
        "nntune", "python", "keras", "tensorflow", "jax", "jaxlib", "dvc", "dvclive"
    }  # fmt: skip
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    data_dep = next(d for d in lock["stages"]["validate"]["deps"] if d["path"] == "data/digits.csv")
    assert lineage["data_md5"] == data_dep["md5"]
    assert "training on CPU" in first.stderr + first.stdout

    # The results are visible to DVC's own commands.
    shown = json.loads(run(project, "dvc", "metrics", "show", "--json").stdout)
    assert "metrics/evaluate.json" in json.dumps(shown)
    run(project, "dvc", "plots", "show", "-o", "plots_html")
    html = (project / "plots_html" / "index.html").read_text()
    plots = json.loads(run(project, "dvc", "plots", "show", "--json").stdout)["data"]
    epochs = json.loads(after["metrics/train.json"])["epochs_trained"]
    rows = {title: plots[title][0]["content"]["data"]["values"] for title in plots if plots[title]}
    assert len(rows["Loss"]) == len(rows["Accuracy"]) == 2 * epochs  # train and eval curves
    assert len(rows["Confusion matrix (test)"]) == 360  # 20% of 1,797 digits
    assert {"actual", "predicted"} <= set(rows["Confusion matrix (test)"][0])
    for title in rows:
        assert title in html


def test_jax_backend_pretrains_trains_and_evaluates_byte_identically(project: Path) -> None:
    """runtime.backend: jax, with pretraining (reconstruction cross-entropy): the Keras
    stages run on JAX, and a forced rerun (its compilations then
    come from JAX's cache) and a rerun forked from a JAX warm runner give the same bytes."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["runtime"]["backend"] = "jax"
    params["pretrain"]["enabled"] = True
    assert params["pretrain"]["loss"] == "reconstruction_crossentropy"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    deterministic = [*DETERMINISTIC, "metrics/pretrain.json"]
    profile = project.parent / "profile.jsonl"
    cache = project.parent / "jax-cache"
    with _environ(JAX_COMPILATION_CACHE_DIR=str(cache), NNTUNE_PROFILE=str(profile)):
        first = run(project, "dvc", "repro")
        before = {name: (project / name).read_bytes() for name in deterministic}
        assert any(cache.iterdir()), "JAX's compilation cache stayed empty"
        run(project, "dvc", "repro", "--force")
        again = [n for n in deterministic if before[n] != (project / n).read_bytes()]
        assert not again, f"not reproducible on JAX: {again}"
        profile.unlink()
        with warm_runner(backends=("jax",)) as socket:
            assert socket is not None
            warm = run(project, "dvc", "repro", "--force")
    _assert_forked_and_unchanged(project, warm, profile, before, "the JAX warm runner")
    assert "training on CPU" in first.stderr + first.stdout
    lineage = json.loads((project / "reports" / "train_run.json").read_text())
    assert lineage["keras_backend"] == "jax" and lineage["versions"]["jax"]
    assert lineage["steps_per_execution"] >= 1
    assert json.loads(before["metrics/pretrain.json"])["pretrain_epochs"] >= 1
    assert json.loads(before["metrics/evaluate.json"])["test_accuracy"] > 0.5


def test_bad_params_stop_the_pipeline_before_training(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["learning_rate"] = -0.1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = run(project, "dvc", "repro", check=False)
    assert result.returncode != 0
    assert "train.learning_rate must be > 0, got -0.1" in result.stderr + result.stdout
    assert not (project / "models" / "model.keras").exists()
    assert not (project / "data" / "prepared").exists()


def test_bad_data_stops_the_pipeline_with_a_report(project: Path) -> None:
    csv = project / "data" / "digits.csv"
    lines = csv.read_text().splitlines()
    lines[5] = "99" + lines[5][lines[5].index(",") :]  # pixel_0_0 of data row 4 out of range
    csv.write_text("\n".join(lines) + "\n")
    result = run(project, "dvc", "repro", check=False)
    assert result.returncode != 0
    assert "pixel_0_0" in result.stderr
    assert "failed to reproduce 'validate'" in result.stderr
    report = json.loads((project / "reports" / "validation.json").read_text())
    assert report["valid"] is False
    assert report["failures"][0]["column"] == "pixel_0_0"
    assert report["failures"][0]["examples"] == [{"row": 4, "value": 99}]
    assert not (project / "data" / "prepared").exists()


@pytest.mark.parametrize("launcher", ["dvc queue start", "nntune run"])
def test_queued_experiments_run_their_own_snapshot_of_the_library(
    project: Path, launcher: str
) -> None:
    run(project, "dvc", "repro")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "--quiet", "-m", "baseline results")
    # Change the library only in what gets queued, then put the workspace back. Neither the
    # workspace nor the installed (editable) nntune has this version any more: only the
    # queued snapshots do.
    init = project / "src" / "nntune" / "__init__.py"
    original = init.read_text()
    init.write_text(original.replace('__version__ = "', '__version__ = "0.0.0+queued-'))
    run(project, "dvc", "exp", "run", "--queue", "-S", "model.units=8,12")
    init.write_text(original)
    assert run(project, "git", "status", "--porcelain").stdout == ""

    if launcher == "dvc queue start":  # every stage a fresh Python
        run(project, "dvc", "queue", "start", "-j", "1")
        _wait_for_queue(project, timeout=420)
    else:  # stages forked from the warm runner, which imported the installed nntune
        profile = project.parent / "profile.jsonl"
        with _environ(NNTUNE_PROFILE=str(profile)):
            run(project, NNTUNE, "run", "-j", "1")
        records = [json.loads(line) for line in profile.read_text().splitlines()]
        assert [r["warm"] for r in records if r["stage"] == "train"] == [True, True]

    rows = json.loads(run(project, "dvc", "exp", "show", "--json", "--no-pager").stdout)
    experiments = _experiments(rows)
    assert sorted(experiments) == [8, 12], experiments
    # DVC reports an executor state only for experiments its celery workers ran (while its
    # queue keeps their record); nntune's workers commit plain experiment refs, as a pulled
    # experiment is, which `nntune compare` counts as succeeded.
    expected = "success" if launcher == "dvc queue start" else "?"
    for units, (state, version) in experiments.items():
        assert state == expected, (units, state)
        assert version.startswith("0.0.0+queued-"), (units, version)


def _wait_for_queue(project: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(project, "dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            return
        time.sleep(2)
    run(project, "dvc", "queue", "kill", "--all", check=False)
    raise AssertionError(f"queue did not drain in {timeout}s:\n{status}")


def _experiments(rows: list[dict]) -> dict[int, tuple[str, str]]:  # type: ignore[type-arg]
    """{model.units: (state, nntune version)} of every experiment `dvc exp show` lists."""
    found = {}
    for baseline in rows:
        for exp_range in baseline.get("experiments") or []:
            state = exp_range["executor"]["state"] if exp_range.get("executor") else "?"
            for rev in exp_range["revs"]:
                data = rev.get("data") or {}
                params = data["params"]["params.yaml"]["data"]
                metrics = data["metrics"]["reports/train_run.json"]["data"]
                found[params["model"]["units"]] = (state, metrics["versions"]["nntune"])
    return found


def test_pretraining_switches_on_without_re_running_prepare(project: Path) -> None:
    off = run(project, "dvc", "repro")
    assert json.loads((project / "models/pretrained/info.json").read_text()) == {"enabled": False}
    assert json.loads((project / "metrics/pretrain.json").read_text()) == {"pretrain_epochs": 0}
    assert "pretraining on" not in off.stderr  # disabled: nothing trained, no TensorFlow
    assert "is empty" not in off.stderr  # its curve folder says why it has no curves

    on = run(
        project,
        *("dvc", "exp", "run", "-S", "pretrain.enabled=true", "-S", "pretrain.freeze_epochs=1"),
    )
    assert "Running stage 'pretrain'" in on.stdout and "Running stage 'train'" in on.stdout
    assert (
        "Running stage 'prepare'" not in on.stdout and "Running stage 'validate'" not in on.stdout
    )
    metrics = json.loads((project / "metrics/pretrain.json").read_text())
    assert metrics["pretrain_epochs"] == 3  # the shrunk budget
    assert metrics["pretrain_loss"] < metrics["pretrain_loss_first_epoch"]
    info = json.loads((project / "models/pretrained/info.json").read_text())
    assert info["enabled"] is True and info["layers"] == ["hidden_1"]
    assert info["loss"] == "reconstruction_crossentropy" and info["input_scaling"]
    assert (project / "models/pretrained/encoder.keras").is_file()
    assert not (project / "dvclive_pretrain/OFF").exists()
    assert json.loads((project / "metrics/evaluate.json").read_text())["test_accuracy"] > 0.5
    plots = json.loads(run(project, "dvc", "plots", "show", "--json").stdout)["data"]
    curve = plots["Reconstruction loss (pretrain)"][0]["content"]["data"]["values"]
    assert len(curve) == 2 * 3  # train and validation reconstruction loss, 3 epochs

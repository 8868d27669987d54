"""``nntune lr-find``: the learning-rate range test on digits, its stopping rule, the valley
rule, and what it says about batch size."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import repo_params_dict
from typer.testing import CliRunner

from nntune.cli import app
from nntune.config.params import parse_params
from nntune.config.sections import LrScalingParams, LrScalingRule
from nntune.stage.data import digits_frame, write_prepared
from nntune.stage.preprocess import prepare
from nntune.tuning.lr_find import (
    LrFind,
    LrFindError,
    Suggestion,
    Sweep,
    run_sweep,
    scaling_note,
    suggest,
    sweep_rates,
    valley,
)

runner = CliRunner()


@pytest.fixture
def digits_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the repository's params.yaml (on the CPU) and digits prepared as the
    prepare stage writes them."""
    raw = repo_params_dict()
    raw["runtime"]["device"] = "cpu"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    write_prepared(prepare(digits_frame(), parse_params(raw).data), tmp_path / "data/prepared")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_digits_suggestion_is_sensible_and_repeats_exactly(digits_project: Path) -> None:
    runs = []
    for out in ("first", "second"):
        result = runner.invoke(app, ["lr-find", "--steps", "100", "--out", out])
        assert result.exit_code == 0, result.output
        runs.append(result.output)
    found = re.search(r"^suggested learning rate: (\S+)$", runs[0], re.MULTILINE)
    assert found is not None, runs[0]
    first = (digits_project / "first/lr_find.json").read_text()
    assert first == (digits_project / "second/lr_find.json").read_text()
    record = json.loads(first)
    assert 1e-3 <= record["suggested_learning_rate"] <= 0.1
    assert found.group(1) == f"{record['suggested_learning_rate']:.2g}"
    assert record["rule"] == "valley" and record["batch_size"] == 32
    # Adam at rate 10 blows up: the raw loss ends far above its minimum. Whether the
    # smoothed loss crosses the divergence line before the last step (and stops the sweep)
    # depends on the backend's and the CPU's float arithmetic: on JAX on some CPUs it ends at
    # step 100 with a raw loss of 31; the rule itself is tested on made-up curves below.
    losses = [step["loss"] for step in record["sweep"]]
    floor = min(loss for loss in losses if loss is not None)
    assert any(loss is None or loss > 10 * floor for loss in losses[-3:])
    assert record["diverged"] == (len(record["sweep"]) < record["steps_planned"])
    assert record["sweep"][0]["lr"] == pytest.approx(1e-7)
    svg = (digits_project / "first/lr_find.svg").read_text()
    assert svg.startswith("<svg") and f"suggested {found.group(1)}" in svg
    assert "for grid.yaml: train.learning_rate: [" in runs[0]
    assert "the rate was found at batch size 32" in runs[0]


def test_without_prepared_data_it_says_to_run_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params_dict()))
    result = runner.invoke(app, ["lr-find"])
    assert result.exit_code == 2
    assert "data/prepared: no prepared splits; run `dvc repro prepare` first" in result.output


def test_the_sweep_stops_when_the_smoothed_loss_passes_4x_its_minimum() -> None:
    rates = sweep_rates(1e-7, 10.0, 200)
    assert rates[0] == pytest.approx(1e-7) and rates[-1] == pytest.approx(10.0)

    def blows_up(rate: float) -> float:  # flat, then 1.5x per step above 1e-3
        return (
            1.0 if rate < 1e-3 else 1.5 ** (math.log(rate / 1e-3) / math.log(rates[1] / rates[0]))
        )

    sweep = run_sweep(rates, blows_up)
    smoothed = [s.smoothed_loss for s in sweep.steps]
    assert sweep.diverged and len(sweep.steps) < 200
    assert smoothed[-1] > 4.0 and max(smoothed[:-1]) <= 4.0  # stopped at the first one past
    nan_at_30 = run_sweep(rates, lambda rate: math.nan if rate >= rates[29] else 1.0)
    assert nan_at_30.diverged and len(nan_at_30.steps) == 30
    flat = run_sweep(rates, lambda rate: 1.0)
    assert not flat.diverged and len(flat.steps) == 200


def test_smoothing_is_bias_corrected() -> None:
    sweep = run_sweep([1e-3, 2e-3, 4e-3], lambda rate: 2.0 if rate < 4e-3 else 4.0)
    # An average from 0 would start at 0.04; corrected, a constant loss stays itself.
    assert [s.smoothed_loss for s in sweep.steps[:2]] == pytest.approx([2.0, 2.0])
    expected = (0.02 * 2.0 * (0.98**2 + 0.98) + 0.02 * 4.0) / (1 - 0.98**3)
    assert sweep.steps[2].smoothed_loss == pytest.approx(expected)


def test_valley_is_halfway_along_the_longest_fall() -> None:
    losses = [3.0] * 20 + [3.0 - 0.05 * i for i in range(1, 41)] + [1.0 + i for i in range(20)]
    # The fall: 41 points, index 19 (3.0) to 59 (1.0). fastai's start is one before it (18),
    # then a third and a sixth of the length on: 18 + 13 + 6.
    assert valley(losses) == 37
    assert valley([1.0, 1.0, 1.0]) == 0  # nothing falls: the first point, not the last
    steps = sweep_rates(1e-6, 1.0, 100)
    sweep = run_sweep(steps, lambda r: 2.0 if r < 1e-4 else max(0.2, 2.0 - math.log10(r / 1e-4)))
    chosen = suggest(sweep)
    assert 1e-4 < chosen.learning_rate < 0.1
    assert chosen.learning_rate == float(f"{steps[chosen.step - 1]:.2g}")


def test_a_sweep_that_diverges_at_once_is_refused() -> None:
    rates = sweep_rates(1e-7, 10.0, 100)
    with pytest.raises(LrFindError, match=r"diverged at step 2 of 100 .* start lower"):
        suggest(run_sweep(rates, lambda rate: 1.0 if rate == rates[0] else 100.0))
    with pytest.raises(LrFindError, match="--steps 5: too few"):
        sweep_rates(1e-7, 10.0, 5)
    with pytest.raises(LrFindError, match="need 0 < start < end"):
        sweep_rates(1.0, 0.1, 100)


def _found(rule: LrScalingRule, batch_size: int, rate: float) -> LrFind:
    train = replace(
        parse_params(repo_params_dict()).train,
        batch_size=batch_size,
        lr_scaling=LrScalingParams(rule, 32),
    )
    return LrFind(Sweep([], 200, diverged=True), Suggestion(rate, 1, rate, rate), train, "CPU")


def test_batch_size_note_and_linear_scaling() -> None:
    linear = _found("linear", 64, 0.005)
    # Training multiplies train.learning_rate by 64 / 32: params get half the found rate.
    assert linear.params_learning_rate == 0.0025
    note = scaling_note(linear.train, 0.005)
    assert "train.lr_scaling.rule is linear (reference_batch_size 32)" in note
    assert "train.learning_rate 0.0025 gives the optimiser 0.005 at batch size 64" in note
    plain = _found("none", 64, 0.005)
    assert plain.params_learning_rate == 0.005
    note = scaling_note(plain.train, 0.005)
    assert "rule is none, so every batch size gets train.learning_rate unchanged" in note
    assert "a larger batch wants a larger rate (about in proportion: 0.01 at 128)" in note

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO

from nntune.config.mapping import apply, flatten, override_args
from nntune.tuning.grid import GridError, expand, load_space, parse_assignments


def test_default_space_is_seed_guided_and_dedups_linear_models(raw_params: dict[str, Any]) -> None:
    space = load_space(REPO / "grid.yaml")
    assert space == {
        "model.hidden_layers": [0, 1, 2],
        "model.units": [50, 100, 200],
        "train.batch_size": [32, 64],
        "train.learning_rate": [0.001, 0.01, 0.1],
    }
    trials, dropped = expand(space, raw_params)
    # 54 points, but with 0 hidden layers the 3 unit counts build the same model.
    assert len(trials) == 42
    assert len(dropped) == 12
    names = [t.name for t in trials]
    assert len(set(names)) == len(names)
    assert "h2-u100-b32-lr0.01" in names
    assert "h0-b64-lr0.1" in names  # units left out: it does not matter without hidden layers


def test_points_are_checked_by_the_params_loader(raw_params: dict[str, Any]) -> None:
    with pytest.raises(GridError) as info:
        expand({"train.learning_rate": [0.01, -1.0]}, raw_params)
    assert "train.learning_rate must be > 0, got -1.0" in str(info.value)
    with pytest.raises(GridError, match=r"model\.layers is not a known key"):
        expand({"model.layers": [1, 2]}, raw_params)


def test_random_subset_is_distinct_and_seeded(raw_params: dict[str, Any]) -> None:
    space = load_space(REPO / "grid.yaml")
    a, _ = expand(space, raw_params, random_points=5, seed=1)
    b, _ = expand(space, raw_params, random_points=5, seed=1)
    c, _ = expand(space, raw_params, random_points=5, seed=2)
    assert [t.name for t in a] == [t.name for t in b]
    assert len({t.name for t in a}) == 5
    assert [t.name for t in a] != [t.name for t in c]
    everything, _ = expand(space, raw_params, random_points=1000)
    assert len(everything) == 42
    with pytest.raises(GridError, match="--random must be >= 1"):
        expand(space, raw_params, random_points=0)


def test_assignments_are_typed_like_yaml() -> None:
    space = parse_assignments(
        ["model.units=64,128", "train.learning_rate=1e-3,0.01", "model.activation=relu,tanh"]
    )
    assert space == {
        "model.units": [64, 128],
        "train.learning_rate": [0.001, 0.01],
        "model.activation": ["relu", "tanh"],
    }
    assert parse_assignments(["model.units=[64,32],128"]) == {"model.units": [[64, 32], 128]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model.units", "expected KEY=V1,V2"),
        ("model.units=", "expected KEY=V1,V2"),
        ("=1,2", "expected KEY=V1,V2"),
        ("model units=1", "is not a dotted params key"),
        ("model.units=64,64", "lists a value twice"),
    ],
)
def test_bad_assignments(text: str, message: str) -> None:
    with pytest.raises(GridError, match=message):
        parse_assignments([text])


def test_bad_space_files(tmp_path: Path) -> None:
    with pytest.raises(GridError, match="search-space file not found"):
        load_space(tmp_path / "grid.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(GridError, match="the search space is empty"):
        load_space(empty)
    no_values = tmp_path / "none.yaml"
    no_values.write_text("model.units: []\n")
    with pytest.raises(GridError, match="has no values"):
        load_space(no_values)


def test_unvaried_keys_stay_out_of_names(raw_params: dict[str, Any]) -> None:
    trials, _ = expand({"model.units": [32], "train.batch_size": [16, 64]}, raw_params)
    assert [t.name for t in trials] == ["b16", "b64"]
    assert trials[0].params.model.units == (32,)


def test_pretraining_is_a_grid_dimension(raw_params: dict[str, Any]) -> None:
    trials, _ = expand(parse_assignments(["pretrain.enabled=true,false"]), raw_params)
    assert [t.name for t in trials] == ["pretrue", "prefalse"]
    assert [t.params.pretrain.enabled for t in trials] == [True, False]
    assert override_args(trials[0].overrides) == ["pretrain.enabled=true"]


def test_override_args_and_apply(raw_params: dict[str, Any]) -> None:
    point = {"model.units": [64, 32], "train.learning_rate": 0.001, "runtime.deterministic": False}
    assert override_args(point) == [
        "model.units=[64,32]",
        "train.learning_rate=0.001",
        "runtime.deterministic=false",
    ]
    raw = apply(raw_params, point)
    assert flatten(raw)["model.units"] == [64, 32]
    assert raw_params["model"]["units"] == 128  # the base is not modified


def test_lr_around_centres_the_learning_rate_dimension(raw_params: dict[str, Any]) -> None:
    from nntune.tuning.grid import format_rate, rates_around, rates_around_dimension

    assert rates_around(0.0029) == [0.00097, 0.0029, 0.0087]
    assert rates_around(0.002512) == [0.00084, 0.0025, 0.0075]  # 2 significant digits
    space = load_space(REPO / "grid.yaml")
    space.update(rates_around_dimension(0.0029, {}))
    assert space["train.learning_rate"] == [0.00097, 0.0029, 0.0087]
    trials, _ = expand(space, raw_params)
    assert len(trials) == 42 and "h2-u100-b32-lr0.00097" in [t.name for t in trials]
    assert rates_around_dimension(None, {}) == {}
    with pytest.raises(GridError, match=r"-p train\.learning_rate=\.\.\. and --lr-around both"):
        rates_around_dimension(0.01, {"train.learning_rate": [0.1]})
    for bad in (0.0, -0.01, float("nan")):
        with pytest.raises(GridError, match="--lr-around must be a positive learning rate"):
            rates_around(bad)
    # What lr-find prints for grid.yaml reads back as numbers, small ones included.
    assert [yaml.safe_load(format_rate(r)) for r in (0.0025, 1e-05, 3.3e-05)] == [
        0.0025,
        1e-05,
        3.3e-05,
    ]


def test_grid_command_takes_lr_around(
    tmp_path: Path, raw_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from nntune.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params))
    (tmp_path / "grid.yaml").write_text((REPO / "grid.yaml").read_text())
    monkeypatch.setattr("nntune.cli.tune._existing", lambda base: [])  # no DVC repo here
    args = ["grid", "--dry-run", "--lr-around", "0.0025"]
    result = CliRunner().invoke(app, [*args, "-p", "model.units=64"])
    assert result.exit_code == 0, result.output
    assert "3 points (dry run: nothing queued)" in result.output
    for name in ("lr0.00083", "lr0.0025", "lr0.0075"):
        assert name in result.output
    result = CliRunner().invoke(app, args)  # grid.yaml's other dimensions stay
    assert "42 points (dry run: nothing queued)" in result.output
    assert "h2-u200-b64-lr0.0075" in result.output

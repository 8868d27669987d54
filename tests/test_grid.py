from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
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

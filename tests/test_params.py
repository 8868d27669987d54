from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nntune.config.params import load_params, parse_params
from nntune.config.sections import ParamsError


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[leaf] = value


def _delete(raw: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    del node[leaf]


def _problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ParamsError) as info:
        parse_params(raw, source="params.yaml")
    return info.value.problems


def test_repository_params_load_with_seed_guided_defaults() -> None:
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert p.data.task == "multiclass"
    assert p.model.units == (128,)
    assert p.train.learning_rate == 0.01
    assert p.train.batch_size == 32
    assert p.evaluate.objective.metric == "val_loss"
    assert p.evaluate.objective.direction == "min"


BAD_VALUES = [
    # (dotted key, bad value, fragment the message must contain)
    ("train.learning_rate", -0.1, "train.learning_rate must be > 0, got -0.1"),
    ("train.learning_rate", 0, "train.learning_rate must be > 0, got 0"),
    ("train.learning_rate", "fast", "train.learning_rate must be a finite number, got 'fast'"),
    ("train.learning_rate", float("nan"), "train.learning_rate must be a finite number"),
    (
        "train.optimizer",
        "nadam",
        "train.optimizer must be one of adam, adamw, sgd, rmsprop, got 'nadam'",
    ),
    ("train.momentum", 0.9, "train.momentum is not used by adam"),
    ("train.momentum", 1.0, "train.momentum must be < 1"),
    ("train.batch_size", 0, "train.batch_size must be >= 1, got 0"),
    ("train.batch_size", 32.5, "train.batch_size must be an integer, got 32.5"),
    ("train.batch_size", True, "train.batch_size must be an integer, got True"),
    ("train.max_epochs", 0, "train.max_epochs must be >= 1"),
    ("train.early_stopping.monitor", "val_f1", "train.early_stopping.monitor must be one of"),
    ("train.early_stopping.monitor", "test_loss", "must be one of val_loss, val_accuracy"),
    ("train.early_stopping.patience", -1, "train.early_stopping.patience must be >= 0"),
    ("train.early_stopping.min_delta", -0.1, "train.early_stopping.min_delta must be >= 0"),
    ("train.early_stopping.restore_best_weights", "yes", "must be true or false, got 'yes'"),
    ("train.early_stopping.enabled", "off", "train.early_stopping.enabled must be true or false"),
    ("train.warm_start.epochs", 3, "train.warm_start.experiment is empty while"),
    ("train.warm_start.model_md5", 5, "train.warm_start.model_md5 must be an md5"),
    ("train.lr_scaling.rule", "cubic", "train.lr_scaling.rule must be one of none, linear, sqrt"),
    ("train.lr_scaling.reference_batch_size", 0, "reference_batch_size must be >= 1"),
    ("model.hidden_layers", -1, "model.hidden_layers must be >= 0, got -1"),
    ("model.units", 0, "model.units every layer size must be an integer >= 1"),
    ("model.units", [64, 32], "lists 2 layer size(s) but model.hidden_layers is 1"),
    ("model.units", "wide", "model.units must be a positive integer or a list"),
    ("model.activation", "relu6", "model.activation must be one of relu"),
    ("model.dropout", 1.0, "model.dropout must be < 1, got 1.0"),
    ("model.dropout", -0.2, "model.dropout must be >= 0"),
    ("model.l2", -1e-4, "model.l2 must be >= 0"),
    ("data.task", "ranking", "data.task must be one of multiclass, binary, regression"),
    ("data.source", "data/digits.xlsx", "data.source must be a CSV or Parquet file"),
    ("data.source", "", "data.source must be a non-empty string"),
    ("data.schema", "schema.json", "data.schema must be a pandera schema file ending in .yaml"),
    ("data.target", None, "data.target must be a non-empty string, got None"),
    ("data.test_fraction", 0.0, "data.test_fraction must be > 0"),
    ("data.test_fraction", 1.5, "data.test_fraction must be < 1"),
    ("data.val_fraction", 0.75, "test_fraction + val_fraction must be < 0.9"),
    ("data.split_seed", -3, "data.split_seed must be >= 0"),
    ("runtime.seed", "42", "runtime.seed must be an integer, got '42'"),
    ("runtime.deterministic", 1, "runtime.deterministic must be true or false, got 1"),
    ("runtime.device", "gpu", "runtime.device must be auto, cpu or gpu:N"),
    ("runtime.device", "cuda:0", "runtime.device must be auto, cpu or gpu:N"),
    ("runtime.allow_cpu_fallback", "no", "runtime.allow_cpu_fallback must be true or false"),
    ("runtime.mixed_precision", None, "runtime.mixed_precision must be true or false"),
    ("runtime.strategy", "horovod", "runtime.strategy must be one of none, mirrored"),
    ("runtime.backend", "torch", "runtime.backend must be one of tensorflow, jax, got 'torch'"),
    ("train.steps_per_execution", 0, "train.steps_per_execution must be auto (chosen from"),
    ("train.steps_per_execution", "max", "a whole number of batches >= 1, got 'max'"),
    ("train.steps_per_execution", 2.5, "a whole number of batches >= 1, got 2.5"),
    ("train.steps_per_execution", True, "a whole number of batches >= 1, got True"),
    ("evaluate.objective.metric", "test_accuracy", "evaluate.objective.metric must be one of"),
    ("evaluate.objective.direction", "max", "contradicts the metric: lower val_loss is better"),
    ("evaluate.objective.direction", "up", "evaluate.objective.direction must be one of min, max"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_VALUES)
def test_bad_value_is_rejected_naming_key_value_and_allowed(
    raw_params: dict[str, Any], key: str, value: Any, message: str
) -> None:
    _set(raw_params, key, value)
    problems = _problems(raw_params)
    assert any(message in p for p in problems), problems


WARM = {"experiment": "s-t3-e3", "model_md5": "0123456789abcdef0123456789abcdef", "epochs": 3}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_md5": "not-a-hash"}, "model_md5 must be the md5 of s-t3-e3's models/last.keras"),
        ({"epochs": 0}, "train.warm_start.epochs must be >= 1: the epochs the parent"),
        ({"epochs": 200}, "train.warm_start.epochs must be < train.max_epochs (200)"),
    ],
)
def test_warm_start_needs_an_md5_and_fewer_epochs_than_max(
    raw_params: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    raw_params["train"]["warm_start"] = {**WARM, **change}
    assert any(message in p for p in _problems(raw_params)), _problems(raw_params)


def test_warm_start_is_refused_with_frozen_pretrained_epochs(raw_params: dict[str, Any]) -> None:
    raw_params["train"]["warm_start"] = dict(WARM)
    raw_params["pretrain"].update(enabled=True, freeze_epochs=2)
    assert any("pretrain.freeze_epochs must be 0 when" in p for p in _problems(raw_params))
    raw_params["pretrain"].update(freeze_epochs=0)
    assert parse_params(raw_params).train.warm_start.epochs == 3


@pytest.mark.parametrize(
    "key", ["data.target", "model.units", "train.early_stopping.patience", "runtime.seed"]
)
def test_missing_key_is_named(raw_params: dict[str, Any], key: str) -> None:
    _delete(raw_params, key)
    assert f"{key} is missing" in _problems(raw_params)


def test_missing_section_is_reported_once(raw_params: dict[str, Any]) -> None:
    del raw_params["model"]
    assert _problems(raw_params) == ["model is missing"]


def test_section_that_is_not_a_mapping(raw_params: dict[str, Any]) -> None:
    raw_params["train"] = 0.01
    assert _problems(raw_params) == ["train must be a mapping of keys to values, got 0.01"]


@pytest.mark.parametrize("key", ["train.learning_rte", "model.layers", "extra", "data.seed"])
def test_unknown_key_is_rejected_with_known_keys(raw_params: dict[str, Any], key: str) -> None:
    _set(raw_params, key, 1)
    problems = _problems(raw_params)
    assert any(p.startswith(f"{key} is not a known key (known here:") for p in problems), problems


def test_every_problem_is_reported_at_once(raw_params: dict[str, Any]) -> None:
    _set(raw_params, "train.learning_rate", -0.1)
    _set(raw_params, "model.dropout", 2)
    _set(raw_params, "runtime.seed", -1)
    with pytest.raises(ParamsError) as info:
        parse_params(raw_params, source="params.yaml")
    assert len(info.value.problems) == 3
    assert str(info.value).startswith("params.yaml: 3 invalid parameter(s):")


def test_monitor_follows_the_task(raw_params: dict[str, Any]) -> None:
    _set(raw_params, "data.task", "regression")
    _set(raw_params, "train.early_stopping.monitor", "val_accuracy")
    _set(raw_params, "evaluate.objective.metric", "val_rmse")
    problems = _problems(raw_params)
    assert any("must be one of val_loss, val_rmse, val_mae" in p for p in problems), problems


def test_units_list_and_zero_hidden_layers(raw_params: dict[str, Any]) -> None:
    _set(raw_params, "model.hidden_layers", 3)
    _set(raw_params, "model.units", [200, 100, 50])
    assert parse_params(raw_params).model.units == (200, 100, 50)
    _set(raw_params, "model.hidden_layers", 0)
    _set(raw_params, "model.units", 64)
    assert parse_params(raw_params).model.units == ()


def test_numbers_written_without_a_dot_are_accepted(raw_params: dict[str, Any]) -> None:
    # `dvc exp run -S train.learning_rate=1e-3` writes 1e-3, which PyYAML reads as a string.
    raw_params["train"]["learning_rate"] = yaml.safe_load("1e-3")
    assert parse_params(raw_params).train.learning_rate == pytest.approx(0.001)


def test_linear_lr_scaling(raw_params: dict[str, Any]) -> None:
    _set(raw_params, "train.batch_size", 128)
    assert parse_params(raw_params).train.effective_learning_rate == pytest.approx(0.01)
    _set(raw_params, "train.lr_scaling.rule", "linear")
    assert parse_params(raw_params).train.effective_learning_rate == pytest.approx(0.04)


def test_load_params_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("")
    with pytest.raises(ParamsError) as info:
        load_params(bad)
    assert "data is missing" in info.value.problems


def test_loader_does_not_import_tensorflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from nntune.config.params import load_params; "
        "load_params('params.yaml'); print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False False"


def test_backend_and_steps_per_execution_are_read_and_may_be_left_out(
    raw_params: dict[str, Any],
) -> None:
    """A project scaffolded before the keys existed still loads: TensorFlow, auto."""
    _set(raw_params, "runtime.backend", "jax")
    _set(raw_params, "train.steps_per_execution", 17)
    given = parse_params(raw_params, source="params.yaml")
    assert (given.runtime.backend, given.train.steps_per_execution) == ("jax", 17)
    _delete(raw_params, "runtime.backend")
    _delete(raw_params, "train.steps_per_execution")
    left_out = parse_params(raw_params, source="params.yaml")
    assert (left_out.runtime.backend, left_out.train.steps_per_execution) == ("tensorflow", "auto")


def test_mirrored_strategy_is_refused_on_jax(raw_params: dict[str, Any]) -> None:
    _set(raw_params, "runtime.backend", "jax")
    _set(raw_params, "runtime.strategy", "mirrored")
    (problem,) = _problems(raw_params)
    assert problem.startswith("runtime.strategy is TensorFlow's MirroredStrategy; nntune does")
    assert "set runtime.strategy: none" in problem

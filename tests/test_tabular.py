"""The tabular recipe of issue 17: the scalings, grouped rare categories, identifier columns,
the standardised regression target, AdamW, schedules, label smoothing, batch normalisation
and square-root rate scaling. The preprocessing is checked where it must agree: what the
prepare stage fits with scikit-learn and what ``nntune predict`` applies to raw rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import make_table, repo_params_dict, shrink

from nntune.config.params import parse_params
from nntune.config.sections import Params, ParamsError
from nntune.serving.preprocessing import PreprocessingSpec, encode_rows
from nntune.stage.data import Prepared
from nntune.stage.preprocess import prepare
from nntune.stage.profiling import MAX_ENUMERATED, id_like_columns
from nntune.stage.schema import infer_schema, validate_table


def _params(**sections: dict[str, Any]) -> Params:
    raw = shrink(repo_params_dict())
    for name, values in sections.items():
        raw[name].update(values)
    return parse_params(raw, source="test")


def _problems(**sections: dict[str, Any]) -> str:
    with pytest.raises(ParamsError) as caught:
        _params(**sections)
    return "\n".join(caught.value.problems)


RATE_CURVE = "live/plots/metrics/train/learning_rate.tsv"  # dvclive's name for Keras' log


# --- params ------------------------------------------------------------------------------


def test_the_new_keys_are_optional_and_default_to_the_old_behaviour() -> None:
    raw = shrink(repo_params_dict())
    for key in ("scaling", "max_categories", "min_frequency"):
        del raw["data"][key]
    for key in ("weight_decay", "schedule", "warmup_epochs", "label_smoothing"):
        del raw["train"][key]
    del raw["model"]["batch_norm"]
    params = parse_params(raw, source="old")
    assert (params.data.scaling, params.data.max_categories, params.data.min_frequency) == (
        "standard",
        0,
        1,
    )
    train = params.train
    assert (train.weight_decay, train.schedule, train.warmup_epochs) == (0.0, "constant", 0)
    assert train.label_smoothing == 0.0 and not train.scheduled
    assert params.model.batch_norm is False


def test_bad_values_of_the_new_keys_are_refused_with_the_key_and_the_fix() -> None:
    text = _problems(
        data={"scaling": "minmax", "max_categories": 1, "min_frequency": 0},
        train={"schedule": "step", "warmup_epochs": 4, "weight_decay": -0.1},
        model={"batch_norm": "yes"},
    )
    assert "data.scaling must be one of standard, robust, quantile, got 'minmax'" in text
    assert "data.max_categories" in text and "data.exclude" in text
    assert "data.min_frequency" in text and ">= 1" in text
    assert "train.schedule" in text and "constant, cosine, plateau" in text
    assert "train.warmup_epochs" in text and "max_epochs (4)" in text
    assert "train.weight_decay" in text
    assert "model.batch_norm" in text


def test_label_smoothing_is_refused_for_regression_and_momentum_for_adamw() -> None:
    text = _problems(data={"task": "regression"}, train={"label_smoothing": 0.1})
    assert "train.label_smoothing" in text and "regression" in text
    text = _problems(train={"optimizer": "adamw", "momentum": 0.9})
    assert "train.momentum" in text and "adamw" in text


@pytest.mark.parametrize(("rule", "expected"), [("none", 0.01), ("linear", 0.04), ("sqrt", 0.02)])
def test_sqrt_rate_scaling_grows_with_the_square_root_of_the_batch(
    rule: str, expected: float
) -> None:
    train = _params(train={"batch_size": 128, "learning_rate": 0.01}).train
    scaled = _params(
        train={
            "batch_size": 128,
            "learning_rate": 0.01,
            "lr_scaling": {"rule": rule, "reference_batch_size": 32},
        }
    ).train
    assert train.effective_learning_rate == pytest.approx(0.01)
    assert scaled.effective_learning_rate == pytest.approx(expected)


# --- preprocessing -----------------------------------------------------------------------


def _heavy_table(n_rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Heavy-tailed and skewed numbers with gaps, a categorical column with a long tail of
    rare values, a 3-class target."""
    rng = np.random.default_rng(seed)
    codes = np.arange(n_rows) % 3
    frame = pd.DataFrame(
        {
            "pareto": rng.pareto(1.2, n_rows) * (1 + codes),
            "lognormal": rng.lognormal(0, 2, n_rows),
            "normal": rng.normal(size=n_rows) + codes,
            "ties": rng.integers(0, 4, n_rows).astype("float64"),
        }
    )
    frame.loc[frame.index[::9], "lognormal"] = np.nan
    common = np.array(["a", "b", "c"])[codes]
    rare = np.array([f"rare{i}" for i in rng.integers(0, 40, n_rows)])
    frame["shop"] = np.where(rng.random(n_rows) < 0.7, common, rare)
    frame["target"] = codes
    return frame


def _prepared(frame: pd.DataFrame, **data: Any) -> tuple[Prepared, Params]:
    params = _params(data={"missing": "impute", **data})
    return prepare(frame, params.data), params


def _encoded_again(frame: pd.DataFrame, prepared: Prepared, split: str) -> np.ndarray:
    """What ``nntune predict`` makes of the split's raw rows."""
    spec = PreprocessingSpec.from_meta(
        {
            "preprocessing": prepared.preprocessing,
            "features": prepared.features,
            "target": prepared.target,
            "task": prepared.task,
            "classes": prepared.classes,
        }
    )
    assert split == "test"  # the one split whose raw rows Prepared records
    part = frame.loc[prepared.test_rows]
    encoded = encode_rows(part.drop(columns="target"), spec, "rows")
    assert encoded.kept.all()
    return encoded.features


@pytest.mark.parametrize("scaling", ["standard", "robust", "quantile"])
def test_predict_applies_each_scaling_exactly_as_prepare_fitted_it(scaling: str) -> None:
    frame = _heavy_table()
    prepared, _ = _prepared(frame, scaling=scaling, max_categories=5)
    assert prepared.preprocessing["scaling"] == scaling
    np.testing.assert_allclose(
        _encoded_again(frame, prepared, "test"), prepared.x("test"), rtol=0, atol=1e-6
    )


def test_robust_and_quantile_scalings_tame_heavy_tails_on_the_training_split() -> None:
    frame = _heavy_table(n_rows=2000)
    columns = ["pareto", "lognormal"]
    standard, _ = _prepared(frame, scaling="standard")
    robust, _ = _prepared(frame, scaling="robust")
    quantile, _ = _prepared(frame, scaling="quantile")
    train = {name: p.splits["train"][columns] for name, p in [
        ("standard", standard), ("robust", robust), ("quantile", quantile)
    ]}  # fmt: skip
    # robust: median 0 and interquartile range 1 (the imputed gaps sit at the median)
    np.testing.assert_allclose(train["robust"].median(), 0.0, atol=1e-6)
    iqr = train["robust"].quantile(0.75) - train["robust"].quantile(0.25)
    np.testing.assert_allclose(iqr, 1.0, atol=0.02)
    # quantile: a standard normal's spread and no value beyond the clip, unlike standard's
    # heavy tail (dozens of standard deviations)
    assert train["standard"].abs().max().max() > 15
    assert train["quantile"].abs().max().max() < 5.3
    np.testing.assert_allclose(train["quantile"]["pareto"].std(), 1.0, atol=0.1)


def test_rare_categories_share_one_input_and_unseen_values_join_them() -> None:
    frame = _heavy_table()
    prepared, _ = _prepared(frame, max_categories=4)
    shop = [f for f in prepared.features if f.startswith("shop_")]
    assert shop == ["shop_a", "shop_b", "shop_c", "shop_infrequent_sklearn"]
    spec = PreprocessingSpec.from_meta(
        {
            "preprocessing": prepared.preprocessing,
            "features": prepared.features,
            "target": "target",
            "task": "multiclass",
        }
    )
    rows = frame.drop(columns="target").head(3).copy()
    rows["shop"] = ["b", "rare7", "never-seen"]
    encoded = encode_rows(rows, spec, "rows")
    block = encoded.features[:, [prepared.features.index(f) for f in shop]]
    np.testing.assert_array_equal(block, [[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]])
    (unseen,) = encoded.unseen
    assert unseen.rows == 1 and unseen.categories == ("never-seen",)
    assert "grouped with the infrequent ones" in unseen.warning()


def test_min_frequency_groups_categories_seen_too_rarely() -> None:
    frame = _heavy_table()
    capped, _ = _prepared(frame, min_frequency=20)
    uncapped, _ = _prepared(frame)
    assert len([f for f in uncapped.features if f.startswith("shop_")]) > 30
    assert [f for f in capped.features if f.startswith("shop_")] == [
        "shop_a",
        "shop_b",
        "shop_c",
        "shop_infrequent_sklearn",
    ]


def _with_ids(n_rows: int = 500) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = make_table(n_rows=n_rows)
    frame["customer_id"] = [f"C{i:06d}-{rng.integers(1000)}" for i in range(n_rows)]
    frame["row"] = np.arange(n_rows) + 1000  # numbers the rows
    frame["orderId"] = rng.permutation(n_rows) * 7  # named like one
    frame["amount_cents"] = rng.permutation(n_rows) * 13 + 5  # unique, but a quantity
    frame["city"] = rng.choice(["x", "y", "z"], n_rows)
    return frame


def test_identifier_columns_are_found_and_quantities_are_not() -> None:
    found = {f.column: f for f in id_like_columns(_with_ids(), "target")}
    # uid (make_table's unique float) is continuous: a measurement, not an identifier
    assert sorted(found) == ["customer_id", "orderId", "row"]
    assert found["customer_id"].distinct == 500 and found["customer_id"].rows == 500
    assert "looks like an identifier" in found["customer_id"].reason()


def test_the_inferred_schema_does_not_enumerate_an_identifier(tiny_params: Params) -> None:
    frame = _with_ids()
    schema = infer_schema(frame, tiny_params.data)
    assert not schema.columns["customer_id"].checks
    (check,) = schema.columns["city"].checks
    assert sorted(check.statistics["allowed_values"]) == ["x", "y", "z"]
    assert len(schema.to_yaml()) < 20_000  # not 500 ids
    assert frame["customer_id"].nunique() > MAX_ENUMERATED


def test_validation_warns_about_identifiers_among_the_features(tiny_params: Params) -> None:
    frame = _with_ids()
    data = tiny_params.data
    schema = infer_schema(frame, data)
    report = validate_table(frame, schema, data, "ids.schema.yaml")
    assert report.valid
    warned = {w.column: w.check for w in report.warnings}
    assert "looks like an identifier" in warned["customer_id"]
    assert "data.exclude" in warned["customer_id"]
    excluded = validate_table(
        frame,
        schema,
        _params(data={"exclude": ["customer_id", "row", "orderId"]}).data,
        "ids.schema.yaml",
    )
    assert not {"customer_id", "row", "orderId"} & {w.column for w in excluded.warnings}


# --- the model and its training ----------------------------------------------------------


def _regression(offset: float, spread: float, n_rows: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(n_rows, 4)), columns=["a", "b", "c", "d"])
    frame["target"] = offset + spread * (frame["a"] - 0.5 * frame["b"] + 0.1 * frame["c"])
    return frame


def test_a_target_in_large_units_is_learnt_and_reported_in_its_units() -> None:
    """House-price scale (mean 3e5, sd 1e5): the network learns the standardised target,
    and rmse / predictions come back in the target's units. Without the standardisation the
    output starts near 0, five standard deviations away, and Adam at 0.01 does not get
    there in 15 epochs (r2 far below 0)."""
    from nntune.stage.model import TargetScale, build_model
    from nntune.stage.training import fit, seed_everything

    params = _params(
        data={"task": "regression"},
        model={"l2": 0.0},  # Keras adds the penalty to val_loss too
        train={"max_epochs": 15, "early_stopping": {**_es(), "monitor": "val_loss"}},
        evaluate={"objective": {"metric": "val_loss", "direction": "min"}},
    )
    frame = _regression(3e5, 1e5)
    prepared = prepare(frame, params.data)
    seed_everything(params.runtime)
    x, y = prepared.xy("train")
    scale = TargetScale.of("regression", y)
    assert scale is not None and scale.mean == pytest.approx(y.mean(), rel=1e-6)
    net = build_model(params.model, params.train, x.shape[1], "regression", target=scale)
    result = fit(net, prepared, params.train, _tmp_live(), seed=params.runtime.seed)
    x_val, y_val = prepared.xy("val")
    predicted = net.predict(x_val, verbose=0).reshape(-1)
    r2 = 1 - np.mean((predicted - y_val) ** 2) / np.var(y_val)
    assert r2 > 0.9
    rmse = float(np.sqrt(np.mean((predicted - y_val) ** 2)))
    assert result.metrics["val_rmse"] == pytest.approx(rmse, rel=1e-3)  # the target's units
    # loss: the standardised target's MSE
    assert result.metrics["val_loss"] == pytest.approx(rmse**2 / scale.std**2, rel=1e-3)


def _es() -> dict[str, Any]:
    return dict(repo_params_dict()["train"]["early_stopping"], patience=20)


def _tmp_live() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="live-")


def test_adamw_batch_norm_and_label_smoothing_build_and_survive_a_save(tmp_path: Any) -> None:
    import keras

    from nntune.stage import artifacts
    from nntune.stage.model import SmoothedSparseCrossentropy, build_model

    params = _params(
        model={"batch_norm": True, "hidden_layers": 2},
        train={"optimizer": "adamw", "weight_decay": 0.02, "label_smoothing": 0.1},
    )
    net = build_model(params.model, params.train, 5, "multiclass", 3)
    assert [type(layer).__name__ for layer in net.layers].count("BatchNormalization") == 2
    assert isinstance(net.optimizer, keras.optimizers.AdamW)
    assert float(net.optimizer.weight_decay) == pytest.approx(0.02)
    assert isinstance(net.loss, SmoothedSparseCrossentropy)
    net.train_on_batch(np.zeros((4, 5), "float32"), np.array([0, 1, 2, 0]))
    artifacts.save_model(net, tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert again.loss.label_smoothing == pytest.approx(0.1)


def test_smoothed_crossentropy_is_the_crossentropy_of_smoothed_one_hot_targets() -> None:
    import keras

    from nntune.stage.model import SmoothedSparseCrossentropy

    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")
    labels = np.array([0, 2])
    got = float(SmoothedSparseCrossentropy(label_smoothing=0.3)(labels, probabilities))
    targets = np.eye(3)[labels] * 0.7 + 0.1
    expected = float(np.mean(-(targets * np.log(probabilities)).sum(axis=1)))
    assert got == pytest.approx(expected, rel=1e-5)
    plain = float(keras.losses.SparseCategoricalCrossentropy()(labels, probabilities))
    assert float(SmoothedSparseCrossentropy(label_smoothing=0.0)(labels, probabilities)) == (
        pytest.approx(plain, rel=1e-5)
    )


@pytest.mark.parametrize(
    ("schedule", "warmup", "expected"),
    [
        ("constant", 2, [1 / 3, 2 / 3, 1, 1, 1, 1]),
        ("cosine", 0, [1 + math.cos(math.pi * e / 6) for e in range(6)]),
        ("cosine", 2, [1 / 3, 2 / 3, *[1 + math.cos(math.pi * e / 4) for e in range(4)]]),
    ],
)
def test_epoch_rates_follow_the_schedule(schedule: str, warmup: int, expected: list[float]) -> None:
    from nntune.stage.schedules import epoch_rate

    train = _params(
        train={"max_epochs": 6, "schedule": schedule, "warmup_epochs": warmup, "learning_rate": 0.1}
    ).train
    if schedule == "cosine":  # the cosine's factor is (1 + cos) / 2; warm-up ones are as listed
        expected = [v / 2 if i >= warmup else v for i, v in enumerate(expected)]
    got = [epoch_rate(train, epoch) / 0.1 for epoch in range(6)]
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_a_scheduled_run_trains_at_each_epochs_rate_and_logs_it(tmp_path: Any) -> None:
    from nntune.stage.model import build_model
    from nntune.stage.schedules import epoch_rate
    from nntune.stage.training import fit, seed_everything

    params = _params(
        train={
            "max_epochs": 5,
            "schedule": "cosine",
            "warmup_epochs": 1,
            "early_stopping": {**_es(), "enabled": False},
        }
    )
    prepared = prepare(make_table(n_rows=150), params.data)
    seed_everything(params.runtime)
    net = build_model(params.model, params.train, len(prepared.features), "multiclass", 3)
    fit(net, prepared, params.train, tmp_path / "live", seed=params.runtime.seed)
    logged = pd.read_csv(tmp_path / RATE_CURVE, sep="\t")
    expected = [epoch_rate(params.train, e) for e in range(5)]
    np.testing.assert_allclose(logged["learning_rate"], expected, rtol=1e-6)
    assert float(net.optimizer.learning_rate) == pytest.approx(expected[-1], rel=1e-6)


def test_plateau_halves_the_rate_when_validation_stalls(tmp_path: Any) -> None:
    from nntune.stage.model import build_model
    from nntune.stage.training import fit, seed_everything

    params = _params(
        train={
            "max_epochs": 12,
            "schedule": "plateau",
            "learning_rate": 0.5,  # too large: validation loss stalls at once
            "early_stopping": {**_es(), "enabled": False, "patience": 3},
        }
    )
    prepared = prepare(make_table(n_rows=150), params.data)
    seed_everything(params.runtime)
    net = build_model(params.model, params.train, len(prepared.features), "multiclass", 3)
    fit(net, prepared, params.train, tmp_path / "live", seed=params.runtime.seed)
    rates = pd.read_csv(tmp_path / RATE_CURVE, sep="\t")
    values = rates["learning_rate"].to_numpy()
    assert values[0] == pytest.approx(0.5)
    assert values[-1] < 0.5
    halvings = -np.log2(values / 0.5)  # every rate is the first one halved k times
    np.testing.assert_allclose(halvings, np.round(halvings), atol=1e-5)
    assert (np.diff(halvings) >= 0).all()


def test_a_constant_rate_without_warm_up_logs_no_rate_curve(tmp_path: Any) -> None:
    from nntune.stage.model import build_model
    from nntune.stage.training import fit, seed_everything

    params = _params(train={"max_epochs": 2})
    prepared = prepare(make_table(n_rows=90), params.data)
    seed_everything(params.runtime)
    net = build_model(params.model, params.train, len(prepared.features), "multiclass", 3)
    fit(net, prepared, params.train, tmp_path / "live", seed=params.runtime.seed)
    assert not (tmp_path / RATE_CURVE).exists()


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression"])
def test_the_tabular_preset_is_a_valid_space_for_each_task(
    task: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nntune.tuning.search_space import (
        TABULAR_SPACE,
        SearchError,
        check_against,
        chosen_space,
        preset_space,
    )

    raw = shrink(repo_params_dict())
    raw["data"]["task"] = task
    if task == "regression":
        raw["evaluate"]["objective"] = {"metric": "val_loss", "direction": "min"}
    for rows in (None, 10, 300, 100_000):  # every batch size the sizing can choose
        space = preset_space("tabular", task, rows)
        check_against(space, raw)  # every end of every range passes the params loader
        assert set(TABULAR_SPACE) <= set(space)
        assert ("train.label_smoothing" in space) == (task != "regression")
    monkeypatch.chdir(tmp_path)
    make_table(60).to_csv("table.csv", index=False)
    raw["data"].update(source="table.csv", target="target", task=task)
    data = parse_params(raw).data
    assert chosen_space(None, data) == chosen_space("seed", data)
    # a file of that name in the project wins over the preset
    Path("tabular").write_text("model.units: [8, 16]\n")
    assert set(chosen_space(Path("tabular"), data)) == {"model.units"}
    with pytest.raises(SearchError):
        preset_space("huge", task)


def test_the_tabular_batch_sizes_leave_enough_updates_per_epoch() -> None:
    from nntune.tuning.search_space import MIN_STEPS, tabular_batches

    assert tabular_batches(None) == (64, 128, 256)  # size unknown: a large table's
    assert tabular_batches(100_000) == (64, 128, 256)
    assert tabular_batches(958) == (16, 32, 64)  # digits, per fold of 3
    assert tabular_batches(303) == (16, 32)  # breast_cancer, per fold of 3
    assert tabular_batches(95) == (16,)  # wine, per fold: fewer than 8 steps even so
    for rows in (20, 95, 300, 958, 2048, 10_000):
        sizes = tabular_batches(rows)
        assert 1 <= len(sizes) <= 3
        assert all(rows / b >= MIN_STEPS for b in sizes) or sizes == (16,)


def test_the_tabular_preset_sizes_its_batches_from_the_training_rows(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nntune.tuning.search_space import Choice, chosen_space, training_rows

    monkeypatch.chdir(tmp_path)
    table = make_table(1000)
    table.loc[table.index[:100], "target"] = np.nan  # unlabeled rows train nothing
    table.to_csv("table.csv", index=False)
    raw = repo_params_dict()
    raw["data"].update(source="table.csv", target="target", test_fraction=0.2, val_fraction=0.2)
    data = parse_params(raw).data
    prepared = prepare(pd.read_csv("table.csv"), data)
    assert training_rows(data) == len(prepared.splits["train"]) == 540
    assert chosen_space("tabular", data)["train.batch_size"] == Choice((16, 32, 64))
    raw["data"]["cv_folds"] = [0, 1, 2]
    folded = parse_params(raw).data
    fold = prepare(pd.read_csv("table.csv"), folded, fold=0)
    assert abs(training_rows(folded) - len(fold.splits["train"])) <= 1  # 720 * 2 / 3
    assert chosen_space("tabular", folded)["train.batch_size"] == Choice((16, 32))
    # data.missing: drop drops rows with gaps in the features, not in an excluded column
    table.loc[table.index[100:150], "uid"] = np.nan
    table.loc[table.index[150:170], "a"] = np.nan
    table.to_csv("table.csv", index=False)
    raw["data"].update(cv_folds=[], missing="drop", exclude=["uid"])
    dropping = parse_params(raw).data
    kept = prepare(pd.read_csv("table.csv"), dropping)
    assert training_rows(dropping) == len(kept.splits["train"]) == 528  # 880 rows

"""The prepare stage's work: split the table (stratified for classification), hide labels
for ``data.label_fraction``, and fit the preprocessing (imputation, scaling, one-hot
encoding) on the training split only.

Apart from ``nntune.stage.data`` so that the stages that only read prepared splits (pretrain,
train, evaluate) never import scikit-learn's preprocessing: about a second per trial.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    OneHotEncoder,
    QuantileTransformer,
    RobustScaler,
    StandardScaler,
)

from nntune.config.sections import DataParams
from nntune.stage.data import SPLITS, UNLABELED, DataError, Prepared


def feature_columns(frame: pd.DataFrame, data: DataParams) -> list[str]:
    """``data.features``, or every column but the target and ``data.exclude``."""
    if data.features is not None:
        return list(data.features)
    return [c for c in frame.columns if c != data.target and c not in data.exclude]


def categorical_columns(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Columns that are not numbers (strings, categories, mixed objects): one-hot encoded.
    Booleans count as numbers (0 / 1)."""
    return [c for c in columns if not pd.api.types.is_numeric_dtype(frame[c])]


def prepare(
    frame: pd.DataFrame,
    data: DataParams,
    source_md5: str | None = None,
    fold: int | None = None,
) -> Prepared:
    """Split (stratified for classification), then fit the preprocessing on the training
    split only (imputation, scaling of numbers, one-hot encoding of categories) and apply it
    to all three, so nothing about val / test leaks into training.

    With ``fold`` (one of ``data.cv_folds``), the test split is the same, and the train and
    validation splits are fold ``fold`` of a (stratified, for classification) k-fold split of
    the other rows, shuffled with ``data.split_seed``: validation is that fold, training the
    others, and the preprocessing is fitted on those."""
    features = feature_columns(frame, data)
    table = frame[[*features, data.target]]
    # A row without a label cannot train or test, but pretraining can learn from it.
    labelled = table[data.target].notna()
    unlabeled, table = table[~labelled], table[labelled]
    if data.missing == "drop":
        table, unlabeled = table.dropna(), unlabeled.dropna(subset=features)
    elif data.missing == "error" and table[features].isna().any().any():
        missing = [c for c in features if table[c].isna().any()]
        raise DataError(
            f"{data.source}: missing values in {', '.join(missing)} and data.missing is error; "
            "run the validate stage for the rows, or set data.missing: drop or impute"
        )
    classes: list[Any] = []
    if data.task != "regression":
        classes = sorted(table[data.target].unique().tolist())
        codes = {label: code for code, label in enumerate(classes)}
        table = table.assign(**{data.target: table[data.target].map(codes)})

    stratify = data.task != "regression"
    rest, test = train_test_split(
        table,
        test_size=data.test_fraction,
        random_state=data.split_seed,
        stratify=table[data.target] if stratify else None,
    )
    if fold is not None:
        train, val = _fold(rest, data, fold, stratify)
    else:
        # val_fraction is a share of all rows; rescale it to a share of what is left.
        train, val = train_test_split(
            rest,
            test_size=data.val_fraction / (1.0 - data.test_fraction),
            random_state=data.split_seed,
            stratify=rest[data.target] if stratify else None,
        )
    whole_train = train
    if data.label_fraction < 1.0:
        train, hidden = _keep_labels(train, data, stratify)
        unlabeled = pd.concat([hidden, unlabeled])
    unlabeled = unlabeled.assign(**{data.target: np.nan})
    categorical = categorical_columns(frame, features)
    numeric = [c for c in features if c not in categorical]
    transformer = _preprocessor(numeric, categorical, data, len(whole_train))
    # Fitted on the whole training split, labels kept or not: features only, no leak.
    transformer.fit(_model_inputs(whole_train, numeric, categorical))
    names = [str(n) for n in transformer.get_feature_names_out()]
    splits = {
        name: _transformed(part, numeric, categorical, transformer, names, data.target)
        for name, part in zip((*SPLITS, UNLABELED), (train, val, test, unlabeled), strict=True)
    }
    spec = preprocessing_spec(transformer, numeric, categorical, data)
    return Prepared(
        splits=splits,
        features=names,
        target=data.target,
        task=data.task,
        classes=classes,
        scaler_mean=[item["mean"] for item in spec["numeric"]],
        scaler_scale=[item["scale"] for item in spec["numeric"]],
        source_md5=source_md5,
        preprocessing=spec,
        test_rows=[int(i) for i in test.index],
        val_rows=[int(i) for i in val.index],
    )


def preprocessing_spec(
    transformer: ColumnTransformer, numeric: list[str], categorical: list[str], data: DataParams
) -> dict[str, Any]:
    """The fitted preprocessing as plain values, in the order of the model's inputs (the
    numeric columns, then each categorical column's one-hot block). ``scaling`` says how
    numbers are scaled; per numeric column its imputed median (with ``data.missing:
    impute``), then ``(x - mean) / scale`` (standard: mean and standard deviation; robust:
    median and interquartile range; quantile: 0 and 1, after mapping the value through its
    ``quantiles`` to a standard normal). Per categorical column its imputed most frequent
    value, the categories with their own input, and the ``infrequent`` ones that share the
    block's last input with any unseen value (``data.max_categories``,
    ``data.min_frequency``; without that group an unseen value encodes as zeros)."""
    fitted = transformer.named_transformers_
    spec: dict[str, Any] = {
        "missing": data.missing,
        "scaling": data.scaling,
        "numeric": [],
        "categorical": [],
    }
    if numeric:
        steps = fitted["numeric"].named_steps
        medians = steps["impute"].statistics_ if "impute" in steps else [None] * len(numeric)
        spec["numeric"] = [
            {"column": column, "median": None if median is None else float(median), **scaled}
            for column, median, scaled in zip(
                numeric, medians, _scaling_record(steps["scale"], len(numeric)), strict=True
            )
        ]
    if categorical:
        steps = fitted["categorical"].named_steps
        frequent = steps["impute"].statistics_ if "impute" in steps else [None] * len(categorical)
        encoder = steps["onehot"]
        # infrequent_categories_ exists only when grouping is on; None per column without.
        grouped = getattr(encoder, "infrequent_categories_", None) or [None] * len(categorical)
        spec["categorical"] = []
        for column, top, cats, rare in zip(
            categorical, frequent, encoder.categories_, grouped, strict=True
        ):
            rare_set = set() if rare is None else set(rare.tolist())
            spec["categorical"].append(
                {
                    "column": column,
                    "most_frequent": _plain(top),
                    "categories": [_plain(c) for c in cats if c not in rare_set],
                    "infrequent": [_plain(c) for c in cats if c in rare_set],
                }
            )
    return spec


def _scaling_record(scaler: Any, width: int) -> list[dict[str, Any]]:
    """Per column: ``mean`` and ``scale`` of ``(x - mean) / scale``, and for the quantile
    scaling its ``quantiles`` (the references are evenly spaced from 0 to 1)."""
    if isinstance(scaler, QuantileTransformer):
        return [
            {"mean": 0.0, "scale": 1.0, "quantiles": [float(q) for q in scaler.quantiles_[:, i]]}
            for i in range(width)
        ]
    centre = scaler.mean_ if isinstance(scaler, StandardScaler) else scaler.center_
    return [
        {"mean": float(m), "scale": float(s)} for m, s in zip(centre, scaler.scale_, strict=True)
    ]


def _plain(value: Any) -> Any:
    """A category as JSON writes it (NumPy scalars become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def _fold(
    rest: pd.DataFrame, data: DataParams, fold: int, stratify: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fold ``fold`` of ``len(data.cv_folds)``: (the other folds' rows, this fold's rows)."""
    k = len(data.cv_folds)
    if fold not in data.cv_folds:
        raise DataError(f"fold {fold} is not one of data.cv_folds {list(data.cv_folds)}")
    splitter = (StratifiedKFold if stratify else KFold)(
        k, shuffle=True, random_state=data.split_seed
    )
    labels = rest[data.target] if stratify else None
    try:
        train_rows, val_rows = list(splitter.split(rest, labels))[fold]
    except ValueError as exc:
        raise DataError(
            f"{data.source}: {k} folds of the {len(rest)} train + validation rows: {exc}; use "
            "fewer folds (data.cv_folds) or more rows"
        ) from exc
    return rest.iloc[train_rows], rest.iloc[val_rows]


def _keep_labels(
    train: pd.DataFrame, data: DataParams, stratify: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``data.label_fraction`` of the training rows keep their label (stratified, seeded
    by ``data.split_seed``); the others are returned to become unlabeled."""
    try:
        kept, hidden = train_test_split(
            train,
            train_size=data.label_fraction,
            random_state=data.split_seed,
            stratify=train[data.target] if stratify else None,
        )
    except ValueError as exc:
        raise DataError(
            f"{data.source}: data.label_fraction {data.label_fraction} of {len(train)} training "
            f"rows is too few labelled rows to keep every class ({exc}); raise "
            "data.label_fraction"
        ) from exc
    return kept, hidden


# Rows the quantile scaling's quantiles are computed from at most (scikit-learn's default).
QUANTILES = 1000


def _preprocessor(
    numeric: list[str], categorical: list[str], data: DataParams, train_rows: int
) -> ColumnTransformer:
    numeric_steps: list[tuple[str, Any]] = [("scale", _scaler(data, train_rows))]
    categorical_steps: list[tuple[str, Any]] = [
        # Categories come from the training split. Rare ones (max_categories, min_frequency)
        # share one "infrequent" input, where an unseen one also goes; without that group an
        # unseen category becomes all zeros.
        (
            "onehot",
            OneHotEncoder(
                handle_unknown="infrequent_if_exist",
                max_categories=data.max_categories or None,
                min_frequency=data.min_frequency if data.min_frequency > 1 else None,
                sparse_output=False,
                dtype="float32",
            ),
        )
    ]
    if data.missing == "impute":
        numeric_steps.insert(0, ("impute", SimpleImputer(strategy="median")))
        categorical_steps.insert(0, ("impute", SimpleImputer(strategy="most_frequent")))
    return ColumnTransformer(
        [
            ("numeric", Pipeline(numeric_steps), numeric),
            ("categorical", Pipeline(categorical_steps), categorical),
        ],
        verbose_feature_names_out=False,  # "age", "colour_red" rather than "numeric__age"
    )


def _scaler(data: DataParams, train_rows: int) -> Any:
    """``data.scaling``: standard (Gorishniy et al. 2021's baselines), robust (median and
    interquartile range: heavy tails do not squash the bulk; RealMLP's choice, Holzmüller et
    al. 2024) or quantile (each value's rank mapped to a standard normal; Gorishniy et al.
    2021's default), seeded by ``data.split_seed`` where it subsamples."""
    if data.scaling == "robust":
        return RobustScaler()
    if data.scaling == "quantile":
        return QuantileTransformer(
            n_quantiles=max(1, min(QUANTILES, train_rows)),
            output_distribution="normal",
            random_state=data.split_seed,
        )
    return StandardScaler()


def _model_inputs(part: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Numbers as float64, categories as Python objects with NaN for missing (what
    scikit-learn's imputer and encoder expect, whatever pandas dtype the file gave)."""
    out = part[numeric].astype("float64")
    for column in categorical:
        values = part[column].astype("object")
        out[column] = values.where(part[column].notna(), np.nan)
    return out[[*numeric, *categorical]]


def _transformed(
    part: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    transformer: ColumnTransformer,
    names: list[str],
    target: str,
) -> pd.DataFrame:
    if part.empty:  # scikit-learn refuses to transform zero rows
        values: Any = np.empty((0, len(names)), dtype="float32")
    else:
        values = transformer.transform(_model_inputs(part, numeric, categorical))
    out = pd.DataFrame(np.asarray(values, dtype="float32"), columns=names)
    return out.assign(**{target: part[target].to_numpy()})

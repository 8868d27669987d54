"""Read the raw table, split it train / val / test, scale it. No Keras here: the validate
and prepare stages must not pay for importing TensorFlow."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nntune import artifacts
from nntune.errors import NntuneError
from nntune.metrics import Task
from nntune.params import DataParams

SPLITS = ("train", "val", "test")
UNLABELED = "unlabeled"  # rows without a label: features only, for pretraining
META_FILE = "meta.json"


class DataError(NntuneError):
    pass


def read_table(path: str | Path, delimiter: str = "auto") -> pd.DataFrame:
    """Read a CSV (delimiter sniffed unless given) or Parquet file; raise ``DataError``
    saying what is wrong and how to fix it. The file is only ever opened for reading."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found; check data.source in params.yaml")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; point data.source at a table with a header row")
    try:
        if path.suffix.lower() == ".csv":
            sep = sniff_delimiter(path) if delimiter == "auto" else delimiter
            header = next(csv.reader([_head(path).splitlines()[0]], delimiter=sep))
            frame = pd.read_csv(path, sep=sep)
        else:
            frame = pd.read_parquet(path)
            header = [str(c) for c in frame.columns]
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot be read as {path.suffix.lstrip('.')}: {exc}") from exc
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:  # pandas would silently rename the second one "name.1"
        raise DataError(f"{path}: duplicate column names {twice}; rename them so each is unique")
    if frame.empty:
        raise DataError(f"{path}: has a header but no data rows")
    return frame


def sniff_delimiter(path: Path) -> str:
    """The CSV delimiter among , ; tab and |, guessed from the first 64 KiB."""
    try:
        lines = _head(path).rsplit("\n", 1)[0]  # whole lines only
        return csv.Sniffer().sniff(lines, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","  # one column, or nothing to tell: the CSV default


def _head(path: Path, size: int = 65536) -> str:
    with path.open("rb") as stream:
        return stream.read(size).decode("utf-8", errors="replace")


def check_validated(report_path: str | Path, source: str) -> None:
    """Refuse to prepare data the validate stage rejected (or never saw): running
    ``dvc repro prepare --single-item`` must not slip bad data past validation."""
    path = Path(report_path)
    if not path.is_file():
        raise DataError(f"{path}: no validation report; run the validate stage first")
    report = json.loads(path.read_text(encoding="utf-8"))
    if report.get("source") != source or not report.get("valid"):
        raise DataError(
            f"{path}: {source} has not passed validation; fix the data and run "
            "`dvc repro validate` (the report lists every failure)"
        )


def file_md5(path: str | Path) -> str:
    """MD5 of the file's bytes: the hash DVC 3 writes for a file dependency in dvc.lock,
    so a run's lineage can be matched to the exact data version."""
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digits_frame() -> pd.DataFrame:
    """The handwritten-digits set bundled inside scikit-learn (no network needed)."""
    from sklearn.datasets import load_digits

    frame: pd.DataFrame = load_digits(as_frame=True).frame
    return frame.astype("int64")


def export_digits(path: str | Path) -> None:
    """Write the embedded default data set; ``data/digits.csv`` was made by this."""
    artifacts.write_csv(path, digits_frame())


@dataclass(frozen=True)
class Prepared:
    """What prepare writes and train / evaluate read: scaled splits plus their metadata."""

    splits: dict[str, pd.DataFrame]  # train / val / test, features scaled, target encoded
    features: list[str]
    target: str
    task: Task
    classes: list[Any]  # original labels; the encoded target is the index into this list
    scaler_mean: list[float]
    scaler_scale: list[float]
    source_md5: str | None = None  # the raw file's hash, as DVC records it in dvc.lock

    def xy(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        frame = self.splits[split]
        dtype = "float32" if self.task == "regression" else "int64"
        return self.x(split), frame[self.target].to_numpy(dtype=dtype)

    def x(self, split: str) -> np.ndarray:
        """The split's features alone (the only thing the unlabeled split has)."""
        return self.splits[split][self.features].to_numpy(dtype="float32")

    def meta(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "target": self.target,
            "task": self.task,
            "classes": self.classes,
            "rows": {name: len(frame) for name, frame in self.splits.items()},
            "scaler": {"mean": self.scaler_mean, "scale": self.scaler_scale},
            "source_md5": self.source_md5,
        }


def feature_columns(frame: pd.DataFrame, data: DataParams) -> list[str]:
    """``data.features``, or every column but the target and ``data.exclude``."""
    if data.features is not None:
        return list(data.features)
    return [c for c in frame.columns if c != data.target and c not in data.exclude]


def categorical_columns(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Columns that are not numbers (strings, categories, mixed objects): one-hot encoded.
    Booleans count as numbers (0 / 1)."""
    return [c for c in columns if not pd.api.types.is_numeric_dtype(frame[c])]


def prepare(frame: pd.DataFrame, data: DataParams, source_md5: str | None = None) -> Prepared:
    """Split (stratified for classification), then fit the preprocessing on the training
    split only (imputation, standard scaling of numbers, one-hot encoding of categories) and
    apply it to all three, so nothing about val / test leaks into training."""
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
    transformer = _preprocessor(numeric, categorical, data.missing == "impute")
    # Fitted on the whole training split, labels kept or not: features only, no leak.
    transformer.fit(_model_inputs(whole_train, numeric, categorical))
    names = [str(n) for n in transformer.get_feature_names_out()]
    splits = {
        name: _transformed(part, numeric, categorical, transformer, names, data.target)
        for name, part in zip((*SPLITS, UNLABELED), (train, val, test, unlabeled), strict=True)
    }
    scaler = transformer.named_transformers_["numeric"].named_steps["scale"] if numeric else None
    return Prepared(
        splits=splits,
        features=names,
        target=data.target,
        task=data.task,
        classes=classes,
        scaler_mean=[float(v) for v in scaler.mean_] if scaler is not None else [],
        scaler_scale=[float(v) for v in scaler.scale_] if scaler is not None else [],
        source_md5=source_md5,
    )


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


def _preprocessor(numeric: list[str], categorical: list[str], impute: bool) -> ColumnTransformer:
    numeric_steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
    categorical_steps: list[tuple[str, Any]] = [
        # Categories come from the training split; one unseen later becomes all zeros.
        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype="float32"))
    ]
    if impute:
        numeric_steps.insert(0, ("impute", SimpleImputer(strategy="median")))
        categorical_steps.insert(0, ("impute", SimpleImputer(strategy="most_frequent")))
    return ColumnTransformer(
        [
            ("numeric", Pipeline(numeric_steps), numeric),
            ("categorical", Pipeline(categorical_steps), categorical),
        ],
        verbose_feature_names_out=False,  # "age", "colour_red" rather than "numeric__age"
    )


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


def write_prepared(prepared: Prepared, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    for name, frame in prepared.splits.items():
        artifacts.write_parquet(out_dir / f"{name}.parquet", frame)
    artifacts.write_json(out_dir / META_FILE, prepared.meta())


def read_prepared(out_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> Prepared:
    """Read back what ``write_prepared`` wrote; only the named splits are loaded."""
    out_dir = Path(out_dir)
    meta_path = out_dir / META_FILE
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: not found; run the prepare stage first (dvc repro prepare)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return Prepared(
        splits={name: pd.read_parquet(out_dir / f"{name}.parquet") for name in splits},
        features=meta["features"],
        target=meta["target"],
        task=meta["task"],
        classes=meta["classes"],
        scaler_mean=meta["scaler"]["mean"],
        scaler_scale=meta["scaler"]["scale"],
        source_md5=meta.get("source_md5"),
    )

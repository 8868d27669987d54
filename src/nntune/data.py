"""Read the raw table, split it train / val / test, scale it. No Keras here: the validate
and prepare stages must not pay for importing TensorFlow."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from nntune import artifacts
from nntune.errors import NntuneError
from nntune.metrics import Task
from nntune.params import DataParams

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"


class DataError(NntuneError):
    pass


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file; raise ``DataError`` saying what is wrong and how to fix it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found; check data.source in params.yaml")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; point data.source at a table with a header row")
    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot be read as {path.suffix.lstrip('.')}: {exc}") from exc
    if frame.empty:
        raise DataError(f"{path}: has a header but no data rows")
    return frame


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
        x = frame[self.features].to_numpy(dtype="float32")
        dtype = "float32" if self.task == "regression" else "int64"
        return x, frame[self.target].to_numpy(dtype=dtype)

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


def prepare(frame: pd.DataFrame, data: DataParams, source_md5: str | None = None) -> Prepared:
    """Split (stratified for classification) and standardise with statistics of the
    training split only, so nothing about val / test leaks into training."""
    features = [c for c in frame.columns if c != data.target]
    target = frame[data.target]
    classes: list[Any] = []
    if data.task != "regression":
        classes = sorted(target.unique().tolist())
        target = target.map({label: code for code, label in enumerate(classes)})
    table = frame[features].assign(**{data.target: target})

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
    scaler = StandardScaler().fit(train[features].to_numpy(dtype="float64"))
    parts = (train, val, test)
    splits = {
        name: _scaled(part, features, scaler) for name, part in zip(SPLITS, parts, strict=True)
    }
    return Prepared(
        splits=splits,
        features=features,
        target=data.target,
        task=data.task,
        classes=classes,
        scaler_mean=[float(v) for v in scaler.mean_],
        scaler_scale=[float(v) for v in scaler.scale_],
        source_md5=source_md5,
    )


def _scaled(part: pd.DataFrame, features: list[str], scaler: StandardScaler) -> pd.DataFrame:
    scaled = scaler.transform(part[features].to_numpy(dtype="float64")).astype("float32")
    out = pd.DataFrame(scaled, columns=features)
    return out.assign(**{c: part[c].to_numpy() for c in part.columns if c not in features})


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

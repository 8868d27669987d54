"""Read the raw table, and write / read the prepared splits (``Prepared``). Neither Keras nor
scikit-learn here: every stage imports this, and the split itself is ``nntune.stage.preprocess``."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nntune.config.metrics import Task
from nntune.errors import NntuneError
from nntune.stage import artifacts

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
    # The fitted preprocessing, column by column (see preprocess.preprocessing_spec): what
    # `nntune predict` applies to new rows and `nntune export` builds into the model.
    preprocessing: dict[str, Any] = field(default_factory=dict)
    test_rows: list[int] = field(default_factory=list)  # the test split's rows in the table
    # The validation split's rows in the table: what a fold's out-of-fold predictions are
    # keyed by (stage.crossval). Not written to meta.json: no stage reads it back.
    val_rows: list[int] = field(default_factory=list)

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
            "preprocessing": self.preprocessing,
            "test_rows": self.test_rows,
        }


def write_prepared(prepared: Prepared, out_dir: str | Path) -> None:
    """Every split and ``meta.json``, replacing ``out_dir`` as a whole: a prepare stage
    killed half-way leaves the old splits or the new ones, never some of each."""
    with artifacts.atomic_dir(out_dir) as tmp:
        for name, frame in prepared.splits.items():
            artifacts.write_parquet(tmp / f"{name}.parquet", frame)
        artifacts.write_json(tmp / META_FILE, prepared.meta())


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
        preprocessing=meta.get("preprocessing", {}),
        test_rows=meta.get("test_rows", []),
    )

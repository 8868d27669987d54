"""Columns a model should not read as they are: identifiers (a value per row) and columns of
many categories. ``nntune init`` excludes the identifiers it finds, the validate stage warns
about the ones still used, and the inferred schema does not enumerate thousands of values.

A unique value per row carries no pattern that holds for new rows: one-hot encoded it makes
one input per training row that every new row leaves at zero (a 20,000-row table with a
``customer_id`` became 12,005 inputs). Gorishniy et al. 2021 and Grinsztajn et al. 2022 both
drop such columns before any model sees the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

# A column is id-like when its distinct values are at least this share of its non-missing
# rows. Continuous floats are exempt (measurements are naturally almost all distinct).
ID_UNIQUE_SHARE = 0.9
ID_MIN_ROWS = 20  # fewer rows tell nothing
# An integer column is an identifier only when it is also named like one or numbers the rows
# (consecutive values): a unique count or amount is a legitimate feature.
ID_NAME = re.compile(r"(^|[^a-z])(id|ids|uuid|guid|key|index|idx)($|[^a-z])", re.IGNORECASE)
CAMEL_ID = re.compile(r"[a-z0-9](Id|ID)$")  # customerId, orderID
# The inferred schema lists a categorical column's allowed values up to this many; beyond
# it only the column's type is checked (new values then reach the model as unseen ones).
MAX_ENUMERATED = 100


@dataclass(frozen=True)
class IdLike:
    column: str
    distinct: int
    rows: int

    def reason(self) -> str:
        return (
            f"{self.distinct} distinct values in {self.rows} rows "
            f"({self.distinct / self.rows:.0%}): looks like an identifier, which no new row "
            "shares"
        )


def id_like_columns(frame: pd.DataFrame, target: str) -> list[IdLike]:
    """The columns other than ``target`` whose values are (nearly) unique per row: text or
    categories, and integers that are named like an id or number the rows."""
    found = []
    for column in frame.columns:
        if column == target:
            continue
        values = frame[column].dropna()
        rows = len(values)
        if rows < ID_MIN_ROWS or pd.api.types.is_bool_dtype(values):
            continue
        integer = pd.api.types.is_integer_dtype(values)
        if pd.api.types.is_numeric_dtype(values) and not integer:
            continue
        distinct = int(values.nunique())
        if distinct < ID_UNIQUE_SHARE * rows:
            continue
        named = ID_NAME.search(str(column)) or CAMEL_ID.search(str(column))
        numbering = integer and int(values.max()) - int(values.min()) + 1 == distinct
        if integer and not (named or numbering):
            continue
        found.append(IdLike(str(column), distinct, rows))
    return found

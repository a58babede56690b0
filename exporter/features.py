"""Feature value types: what a request sends, what the model receives, and how categories are compared.

The model was trained on the reference as pandas reads it, so each feature's column in the reference frame says
what the model expects: its dtype (``int64`` codes, ``float64`` codes with gaps, ``bool``, text ``object``) and its
missing value (``NaN``). Each categorical feature has one JSON value type, ``string``, ``integer`` or ``boolean``,
taken from the reference or declared in the config (``features.category_types``, which also tells pandas how to
read the column). Requests must send that JSON type; records are turned into a frame with the reference's dtypes, and
nulls become the missing value the reference holds. Pure: no HTTP, SQL or Prometheus here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

NUMBER = "number"
STRING = "string"
INTEGER = "integer"
BOOLEAN = "boolean"
CATEGORY_TYPES = (STRING, INTEGER, BOOLEAN)

# How pandas is told to read a column of a declared type: the nullable dtypes keep integer codes with gaps integers.
_READ_AS = {STRING: "string", INTEGER: "Int64", BOOLEAN: "boolean"}


class FeatureTypeError(ValueError):
    """A reference column that cannot serve as the configured feature; the message names the feature."""


def category_text(value: Any) -> str:
    """One text per category, whatever container it came in: 3, 3.0, np.int64(3) -> "3"; True -> "True".

    Drift and quality compare categories, labels and predictions by this text, so integer codes read as floats
    (a column with gaps) still equal the integers that requests and the model give."""
    if isinstance(value, bool | np.bool_):
        return "True" if value else "False"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _integral(numbers: np.ndarray) -> bool:
    """Whole numbers that int64 holds exactly (integer codes, possibly read as float)."""
    return bool(np.all(np.isfinite(numbers)) and np.all(np.mod(numbers, 1) == 0) and np.all(np.abs(numbers) < 2**53))


def category_texts(col: pd.Series) -> pd.Series:
    """:func:`category_text` over a column, missing values kept missing (None); vectorised where the dtype allows."""
    present = col.notna()
    out = col.astype(object).where(present, None)
    if not present.any():
        return out
    values = col[present]
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "string":
        return out
    whole_floats = pd.api.types.is_float_dtype(values.dtype) and _integral(values.to_numpy(dtype=float))
    if pd.api.types.is_integer_dtype(values.dtype) or whole_floats:
        out[present] = values.astype("int64").astype(str)
    else:
        out[present] = values.map(category_text)
    return out


def infer_category_type(name: str, col: pd.Series) -> str:
    """The JSON type of a categorical reference column: booleans, integer codes (also when read as float because of
    gaps), or text."""
    values = col.dropna()
    if values.empty:
        return STRING
    if pd.api.types.is_bool_dtype(values.dtype):
        return BOOLEAN
    if pd.api.types.is_integer_dtype(values.dtype):
        return INTEGER
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "boolean":
        return BOOLEAN
    if kind == "integer":
        return INTEGER
    if kind in ("floating", "mixed-integer-float"):
        if _integral(values.to_numpy(dtype=float)):
            return INTEGER
        raise FeatureTypeError(
            f"categorical feature {name!r} holds non-integer numbers (such as {values.iloc[0]!r}): "
            "list it under features.numerical, or declare it in features.category_types"
        )
    if kind in ("string", "empty"):
        return STRING
    raise FeatureTypeError(
        f"categorical feature {name!r} holds values of several types ({kind}, such as {values.iloc[0]!r}): "
        "declare its type in features.category_types (string, integer or boolean)"
    )


def read_reference(path: Path, declared: Mapping[str, str]) -> pd.DataFrame:
    """The reference as pandas reads it (what the model was trained on), declared category types applied."""
    dtypes = {name: _READ_AS[kind] for name, kind in declared.items()}
    if path.suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
        present = {k: v for k, v in dtypes.items() if k in frame.columns}
        return frame.astype(present) if present else frame
    return pd.read_csv(path, dtype=dtypes or None)


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    value_type: str  # number, string, integer or boolean: what a request sends
    dtype: Any  # the reference column's dtype: what the model receives


class FeatureTypes:
    """Per feature: the JSON type requests send and the dtype the model receives."""

    def __init__(self, specs: Iterable[FeatureSpec]) -> None:
        self.specs = {s.name: s for s in specs}

    @classmethod
    def from_reference(
        cls, frame: pd.DataFrame, numerical: list[str], categorical: list[str], declared: Mapping[str, str]
    ) -> FeatureTypes:
        specs = [FeatureSpec(name, NUMBER, frame[name].dtype) for name in numerical]
        for name in categorical:
            kind = declared.get(name) or infer_category_type(name, frame[name])
            specs.append(FeatureSpec(name, kind, frame[name].dtype))
        return cls(specs)

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def value_types(self) -> dict[str, str]:
        return {name: s.value_type for name, s in self.specs.items()}

    def model_frame(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        """Request records (validated, so each value has its feature's JSON type or is None) as the frame the model
        was trained on: the reference's dtypes, with the reference's missing value for nulls."""
        return pd.DataFrame({name: _column([r[name] for r in records], spec) for name, spec in self.specs.items()})

    def request_value(self, name: str, value: Any) -> Any:
        """A reference value as a client sends it in JSON (None for missing)."""
        if value is None or value is pd.NA or (not isinstance(value, str) and pd.isna(value)):
            return None
        kind = self.specs[name].value_type
        if kind == NUMBER:
            return float(value)
        if kind == INTEGER:
            return int(value)
        if kind == BOOLEAN:
            return bool(value)
        return str(value)


def _column(values: list[Any], spec: FeatureSpec) -> Any:
    """One feature's request values (its JSON type, or None) as the reference holds them; built with numpy
    directly, as this runs on every request."""
    dtype = spec.dtype
    has_null = any(v is None for v in values)
    filled = [np.nan if v is None else v for v in values] if has_null else values
    if spec.value_type == NUMBER:
        # float32 stays float32; a number sent for an int64 column is not truncated; None -> NaN
        return np.array(filled, dtype=dtype if isinstance(dtype, np.dtype) and dtype.kind == "f" else float)
    if isinstance(dtype, np.dtype):
        if dtype.kind == "f":
            return np.array(filled, dtype=dtype)  # integer codes read as float because of gaps
        if dtype.kind in "iu":
            return np.array(filled, dtype=float if has_null else dtype)  # as pandas reads codes with gaps
        if dtype.kind == "b":
            return np.array(filled, dtype=object if has_null else bool)  # as pandas reads booleans with gaps
        return np.array(filled, dtype=object)  # text: read_csv's missing value is NaN, not None
    if isinstance(dtype, pd.CategoricalDtype):
        return np.array(filled, dtype=object)
    return pd.array(values, dtype=dtype)  # nullable extension dtypes (Int64, boolean, string, Float64): <NA>

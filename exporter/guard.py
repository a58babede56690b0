"""Start-up guard: reference rows sent through the request path must get the model's own answers.

A request travels as JSON, is validated by the request schema and becomes a frame for the model. If any step
changes what the model sees (a category code turned into text, a null that is not the pipeline's missing value),
the model answers something else than it would on its training data, and nothing says so. So at start-up, reference
rows take that path and are compared with the reference frame given to the model directly; a difference refuses
to start, naming the feature and both types. This also calls the model at start-up whether or not the reference
carries its predictions, so a model that does not fit the configured columns never starts.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from exporter.model import Model, Predictions

GUARD_ROWS = 256


class RequestPathError(Exception):
    """The request path does not give the model what the reference gives it; the message says where."""


def sample_rows(frame: pd.DataFrame, features: list[str], limit: int = GUARD_ROWS) -> pd.DataFrame:
    """Up to ``limit`` rows, those with missing values first (they exercise the null path), then evenly spread."""
    with_gaps = frame.index[frame[features].isna().any(axis=1)][: limit // 2]
    rest = frame.index.difference(with_gaps)
    step = max(1, len(rest) // max(1, limit - len(with_gaps)))
    chosen = with_gaps.append(rest[::step][: limit - len(with_gaps)])
    return frame.loc[chosen]


def check_request_path(model: Model, record: type[BaseModel], frame: pd.DataFrame) -> int:
    """Send reference rows through JSON, the request schema and the model's frame; compare with the model on the
    reference frame itself. Returns the number of rows compared; raises RequestPathError on a difference."""
    features = model.features
    rows = sample_rows(frame, features)
    records: list[dict[str, Any]] = []
    kept: list[Any] = []
    refused: str | None = None
    for index, row in rows[features].iterrows():
        body = json.loads(json.dumps({f: model.types.request_value(f, row[f]) for f in features}))
        try:
            records.append(record.model_validate(body).model_dump())
            kept.append(index)
        except ValidationError as exc:  # e.g. a null in a feature not listed as nullable: no client can send it
            refused = refused or _first_error(exc)
    if not records:
        raise RequestPathError(f"no reference row passes the request schema (first problem: {refused})")
    direct_frame = rows.loc[kept, features]
    try:
        direct = model.predict_frame(direct_frame)
    except Exception as exc:
        raise RequestPathError(
            f"the model cannot predict on the reference's configured features: {type(exc).__name__}: {_line(exc)}"
        ) from exc
    via_frame = model.frame(records)
    try:
        via = model.predict_frame(via_frame)
    except Exception as exc:
        raise RequestPathError(
            f"{_difference(direct_frame, via_frame)}; the model refuses such requests: "
            f"{type(exc).__name__}: {_line(exc)}"
        ) from exc
    differs = _first_difference(direct, via)
    if differs is not None:
        raise RequestPathError(f"{_difference(direct_frame, via_frame)}; {differs}")
    return len(records)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _first_difference(direct: Predictions, via: Predictions) -> str | None:
    for i, (a, b) in enumerate(zip(direct.values, via.values, strict=True)):
        if not _same(a, b):
            return f"reference row {i}: the model predicts {a!r} on the reference but {b!r} through a request"
    if direct.probabilities is not None and via.probabilities is not None:
        for i, (p, q) in enumerate(zip(direct.probabilities, via.probabilities, strict=True)):
            if any(not math.isclose(p[k], q[k], rel_tol=1e-9, abs_tol=1e-12) for k in p):
                return f"reference row {i}: probabilities {p} on the reference but {q} through a request"
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # e.g. pd.NA, whose truth value is ambiguous
        return False


def _difference(direct: pd.DataFrame, via: pd.DataFrame) -> str:
    """Which feature the request path gives the model differently, with both types."""
    for name in direct.columns:
        ref, req = direct[name].reset_index(drop=True), via[name].reset_index(drop=True)
        if ref.dtype != req.dtype or not _equal_values(ref, req):
            return (
                f"feature {name!r}: requests reach the model as {_describe(req)}, "
                f"but the reference (what the model was trained on) holds {_describe(ref)}"
            )
    return "the model answers differently on the same values (is it deterministic?)"


def _equal_values(a: pd.Series, b: pd.Series) -> bool:
    both_missing = a.isna().to_numpy() & b.isna().to_numpy()
    same = np.array([both_missing[i] or _same(x, y) for i, (x, y) in enumerate(zip(a, b, strict=True))])
    return bool(same.all())


def _describe(col: pd.Series) -> str:
    present = col.dropna()
    example = f" such as {present.iloc[0]!r} ({type(present.iloc[0]).__name__})" if len(present) else ""
    missing = col[col.isna()]
    gap = f", missing as {missing.iloc[0]!r}" if len(missing) else ""
    return f"{col.dtype} values{example}{gap}"

"""Request and response models built from the configured feature schema.

Numbers are strict (a string such as "3.5" is rejected, not coerced) and finite; each categorical feature takes
its own JSON type (string, integer or boolean, see ``exporter.features``), strictly, so "3" for an integer code is a
422 rather than an unknown category; unknown fields are rejected, so a typo in a feature name is a 422 naming the
field rather than a silently missing value.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
)

from exporter.config import FeaturesSection
from exporter.db import REQUEST_ID_LENGTH
from exporter.features import BOOLEAN, INTEGER, NUMBER, STRING

Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]  # accepts ints, rejects "1.5" and true
MAX_TEXT = 256  # characters of a category or a string label: longer is a client's mistake, not a class


def _encodable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("string is not valid Unicode (lone surrogate)") from exc
    return value


Category = Annotated[StrictStr, Field(max_length=MAX_TEXT), AfterValidator(_encodable)]
Code = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]  # an integer category code (int64)
VALUE_TYPES: dict[str, Any] = {NUMBER: Number, STRING: Category, INTEGER: Code, BOOLEAN: StrictBool}
Label = StrictInt | Number | Category | bool


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


def record_model(features: FeaturesSection, value_types: dict[str, str]) -> type[BaseModel]:
    """One prediction request: an object of feature name -> value of that feature's JSON type."""
    fields: dict[str, Any] = {}
    for name in features.all:
        kind: Any = VALUE_TYPES[value_types[name]]
        if name in features.nullable:
            fields[name] = (kind | None, None)
        else:
            fields[name] = (kind, ...)
    return create_model("PredictionRecord", __base__=_Record, **fields)


MAX_REQUEST_ID = 100  # characters of a caller's request_id; with ":<i>" it fits the column (db.REQUEST_ID_LENGTH)
RequestId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_REQUEST_ID), AfterValidator(_encodable)]


def log_models(record: type[BaseModel], task: str, max_records: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """One prediction made elsewhere (/log) and a batch of them (/log/batch): the features as /predict takes them,
    the prediction, optionally the class probabilities, the caller's request_id and when it was predicted."""
    prediction: Any = Number if task == "regression" else Label
    logged = create_model(
        "LoggedPrediction",
        __base__=_Record,
        features=(record, ...),
        prediction=(prediction, ...),
        probabilities=(dict[Category, Number] | None, None),
        request_id=(RequestId | None, None),
        timestamp=(AwareDatetime | None, Field(default=None, description="When it was predicted (RFC 3339); "
                                               "default: now. At most a minute ahead.")),
    )
    batch = create_model(
        "LoggedPredictionBatch",
        __base__=_Record,
        records=(list[logged], Field(min_length=1, max_length=max_records)),  # type: ignore[valid-type]
    )
    return logged, batch


class LogAccepted(BaseModel):
    request_id: str


class LogBatchAccepted(BaseModel):
    request_ids: list[str]


def batch_model(record: type[BaseModel], max_records: int) -> type[BaseModel]:
    return create_model(
        "PredictionBatch",
        __base__=_Record,
        records=(list[record], Field(min_length=1, max_length=max_records)),  # type: ignore[valid-type]
    )


class PredictionResponse(BaseModel):
    request_id: str
    prediction: float | int | str | bool
    probabilities: dict[str, float] | None = None
    model_version: str


class BatchPredictionResponse(BaseModel):
    predictions: list[PredictionResponse]


class FeedbackAccepted(BaseModel):
    accepted: int


def feedback_models(task: str, max_records: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """One label (/feedback) and a batch of them (/feedback/batch); a regression label is a finite number, a
    classification label a class as /predict answers it (strict, as features are)."""
    label_type: Any = Number if task == "regression" else Label
    feedback = create_model(
        "Feedback",
        __config__=ConfigDict(extra="forbid"),
        request_id=(str, Field(min_length=1, max_length=REQUEST_ID_LENGTH)),
        label=(label_type, ...),
    )
    batch = create_model(
        "FeedbackBatch",
        __config__=ConfigDict(extra="forbid"),
        labels=(list[feedback], Field(min_length=1, max_length=max_records)),  # type: ignore[valid-type]
    )
    return feedback, batch

"""Request and response models built from the configured feature schema.

Numbers are strict (a string such as "3.5" is rejected, not coerced) and finite; categories are strings; unknown
fields are rejected, so a typo in a feature name is a 422 naming the field rather than a silently missing value.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, create_model

from exporter.config import FeaturesSection

Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]  # accepts ints, rejects "1.5" and true
def _encodable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("string is not valid Unicode (lone surrogate)") from exc
    return value


Category = Annotated[StrictStr, Field(max_length=256), AfterValidator(_encodable)]
Label = StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)] | Annotated[StrictStr, AfterValidator(_encodable)] | bool


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


def record_model(features: FeaturesSection) -> type[BaseModel]:
    """One prediction request: an object of feature name -> value."""
    fields: dict[str, Any] = {}
    for name in features.all:
        kind: Any = Number if name in features.numerical else Category
        if name in features.nullable:
            fields[name] = (kind | None, None)
        else:
            fields[name] = (kind, ...)
    return create_model("PredictionRecord", __base__=_Record, **fields)


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

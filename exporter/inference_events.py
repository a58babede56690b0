"""Reading the CloudEvents that payload loggers post for models served elsewhere: KServe's InferenceService
``logger:`` (the agent's ``pkg/logger``) and Seldon Core v1's request logger (the executor's ``executor/logger``).

Pure: headers and body in, records out; no I/O. What the loggers send, read from their source (see
``tests/fixtures/inference_events/README.md``):

- both post binary-mode CloudEvents 1.0 whose body is the model's request or response as it went over the wire,
  with the *client's* Content-Type (``curl -d`` makes that ``application/x-www-form-urlencoded``), so the body is
  read as JSON whatever its Content-Type says;
- KServe gives a request and its response the same ``ce-id`` (the client's ``Ce-Id`` header, else a UUID) and
  names the component in ``ce-component``;
- Seldon gives every event a fresh ``ce-id``: the request and its response share ``ce-requestid`` (the
  Seldon-Puid) and the graph node in ``ce-modelid``. Its default ("seldon") protocol is the SeldonMessage
  (``{"data": {"names", "ndarray" | "tensor"}}``); with ``protocol: tensorflow`` or ``v2`` it is V1 or V2.

So a request and its response are matched by ``InferenceEvent.pair_key`` (component, request id), not by ``ce-id``.
Every refusal is an ``EventError`` whose one-line message is meant for the sender.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.common import get_event_factory_for_version
from cloudevents.core.bindings.http import HTTPMessage, from_binary, from_structured
from cloudevents.core.exceptions import BaseCloudEventException, CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat

REQUEST: Final = "request"
RESPONSE: Final = "response"

KSERVE_REQUEST: Final = "org.kubeflow.serving.inference.request"
KSERVE_RESPONSE: Final = "org.kubeflow.serving.inference.response"
SELDON_REQUEST: Final = "io.seldon.serving.inference.request"
SELDON_RESPONSE: Final = "io.seldon.serving.inference.response"

EVENT_TYPES: Final[Mapping[str, str]] = {
    KSERVE_REQUEST: REQUEST,
    KSERVE_RESPONSE: RESPONSE,
    SELDON_REQUEST: REQUEST,
    SELDON_RESPONSE: RESPONSE,
}

# The single output of a V1 response and of a SeldonMessage response, by the key it lives under: the names that
# log.prediction_output / log.probabilities_output give them.
V1_OUTPUT: Final = "predictions"
SELDON_OUTPUT: Final = "data"

STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"


class EventError(ValueError):
    """An event or payload this module refuses; the message is one line for the sender (an HTTP 4xx body)."""


@dataclass(frozen=True)
class InferenceEvent:
    event_id: str  # ce-id: KServe's request and response share it, Seldon's never do
    kind: str  # REQUEST or RESPONSE
    type: str  # ce-type
    source: str  # ce-source
    request_id: str  # what a request and its response share: KServe ce-id, Seldon ce-requestid
    component: str  # KServe ce-component, Seldon ce-modelid (its graph node); "" when absent
    time: datetime | None  # ce-time
    data: dict[str, Any]  # the decoded JSON body

    @property
    def pair_key(self) -> tuple[str, str]:
        """A request and its response have the same key; the component keeps a Seldon graph's nodes apart."""
        return (self.component, self.request_id)


@dataclass(frozen=True)
class Decoding:
    """How payloads map to features and predictions: the ``log`` section and the reference's classes."""

    input_columns: list[str] | None = None
    prediction_output: str | None = None
    probabilities_output: str | None = None
    classes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# CloudEvents


class _RawData(JSONFormat):
    """The SDK's JSON format with the binary-mode body left as bytes: it is decoded here, once, after the type
    check, and as JSON whatever Content-Type the logger copied from the client."""

    def read_data(self, body: bytes, datacontenttype: str | None) -> bytes:
        return body


_FORMAT: Final = _RawData()
# What the SDK raises on malformed input besides its own exceptions (json, isoparse, base64, a non-object event).
_SDK_ERRORS: Final = (BaseCloudEventException, ValueError, TypeError, AttributeError, OverflowError, RecursionError)


def parse_event(headers: Mapping[str, str], body: bytes) -> InferenceEvent:
    """One HTTP CloudEvent, binary mode (``ce-*`` headers and the payload as body) or structured mode
    (``content-type: application/cloudevents+json``), with an accepted type and a JSON object as data."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    content_type = lowered.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/cloudevents-batch+json":
        raise EventError("batched CloudEvents are not supported: send one event per request")
    # the content type decides the mode (CloudEvents HTTP binding 3.1), not the presence of ce-* headers
    is_structured = content_type == STRUCTURED_CONTENT_TYPE
    if not is_structured and not any(k.startswith("ce-") for k in lowered):
        raise EventError(
            f"not a CloudEvent: no ce-* headers (binary mode) and content-type is {_q(content_type or None)}, "
            f"not {STRUCTURED_CONTENT_TYPE} (structured mode)"
        )
    sent: dict[str, Any] = {}

    def factory(attributes: dict[str, Any], data: dict[str, Any] | str | bytes | None) -> BaseCloudEvent:
        # The SDK's events invent what is missing (a random id, the time now, a specversion): a random id would
        # never pair, so refuse, and keep what the sender did send.
        sent.update(attributes)
        missing = [name for name in ("id", "specversion") if name not in attributes]
        if missing:
            where = "" if is_structured else f" (header ce-{missing[0]})"
            raise EventError(f"invalid CloudEvent: no {' or '.join(missing)}{where}")
        return get_event_factory_for_version(str(attributes["specversion"]))(dict(attributes), data)

    try:
        read = from_structured if is_structured else from_binary
        event = read(HTTPMessage(headers=lowered, body=body), _FORMAT, factory)
    except EventError:
        raise
    except CloudEventValidationError as exc:
        problems = "; ".join(f"{_q(name)}: {_clip(str(errs[0]) if errs else 'invalid')}"
                             for name, errs in list(exc.errors.items())[:4])
        raise EventError(f"invalid CloudEvent: {problems}") from exc
    except _SDK_ERRORS as exc:
        raise EventError(f"invalid CloudEvent: {_clip(str(exc)) or type(exc).__name__}") from exc

    event_type = event.get_type()
    kind = EVENT_TYPES.get(event_type)
    if kind is None:
        raise EventError(f"unknown event type {_q(event_type)}; accepted: {', '.join(EVENT_TYPES)}")
    event_id = event.get_id()
    if event_type.startswith("io.seldon."):
        request_id = _extension(event, "requestid") or event_id
        component = _extension(event, "modelid")
    else:
        request_id, component = event_id, _extension(event, "component")
    return InferenceEvent(
        event_id=event_id,
        kind=kind,
        type=event_type,
        source=event.get_source(),
        request_id=request_id,
        component=component,
        time=event.get_time() if "time" in sent else None,
        data=_object(event.get_data(), event.get_datacontenttype()),
    )


def _extension(event: BaseCloudEvent, name: str) -> str:
    value = event.get_extension(name)
    if value is None:
        return ""
    if isinstance(value, str | int) and not isinstance(value, bool):  # structured mode may carry an integer
        return str(value)
    raise EventError(f"CloudEvent extension {name!r} is {_kind(value)}, not a string")


def _object(data: Any, content_type: str | None) -> dict[str, Any]:
    """The event's data as a JSON object: binary mode and ``data_base64`` give bytes, structured ``data`` JSON."""
    if isinstance(data, bytes | bytearray):
        if not data:
            raise EventError("the event has no data: expected the inference request or response as JSON")
        if content_type and "protobuf" in content_type.lower():
            raise EventError(f"the body is {_q(content_type)}: gRPC payloads cannot be read, log REST traffic")
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise EventError(f"the body is not JSON: {_clip(str(exc))}") from exc
    if data is None:
        raise EventError("the event has no data: expected the inference request or response as JSON")
    if not isinstance(data, dict):
        raise EventError(f"the event's data is {_kind(data)}, not a JSON object")
    return data


# ---------------------------------------------------------------------------------------------------------------
# Requests


def decode_request(data: Any, decoding: Decoding) -> list[dict[str, Any]]:
    """One record (feature -> raw JSON value) per instance of a V1, V2 or SeldonMessage request body."""
    if not isinstance(data, dict):
        raise EventError(f"the request is {_kind(data)}, not a JSON object")
    if "instances" in data:
        records = _v1_request(data["instances"], decoding)
    elif "inputs" in data:
        records = _v2_request(data["inputs"], decoding)
    elif "data" in data:
        records = _seldon_request(data["data"], decoding)
    else:
        _refuse_other_seldon(data)
        raise EventError(
            "the request has no 'instances' (V1), 'inputs' (V2) or 'data' (SeldonMessage); "
            f"its keys: {_names(data)}"
        )
    if not records:
        raise EventError("the request has no instances")
    return records


def _v1_request(instances: Any, decoding: Decoding) -> list[dict[str, Any]]:
    if not isinstance(instances, list):
        raise EventError(f"'instances' is {_kind(instances)}, not a list")
    records = []
    for i, instance in enumerate(instances):
        if isinstance(instance, dict):
            records.append(dict(instance))
        elif isinstance(instance, list):
            records.append(_positional(instance, decoding, f"instance {i}"))
        else:
            raise EventError(
                f"instance {i} is {_kind(instance)}: an instance is an object (feature -> value) or a list of values"
            )
    return records


def _positional(values: list[Any], decoding: Decoding, what: str) -> dict[str, Any]:
    columns = decoding.input_columns or []
    if len(values) != len(columns):
        raise EventError(_width_message(what, len(values), len(columns)))
    return dict(zip(columns, values, strict=True))


def _width_message(what: str, width: int, configured: int) -> str:
    return f"{what} has {width} positional values but log.input_columns names {configured}"


def _v2_request(inputs: Any, decoding: Decoding) -> list[dict[str, Any]]:
    tensors = _tensors(inputs, "inputs")
    if len(tensors) == 1 and len(tensors[0].shape) == 2 and (decoding.input_columns or tensors[0].shape[1] != 1):
        # one [n, k] tensor: positional columns ([n, 1] too when input_columns is configured)
        tensor = tensors[0]
        columns = decoding.input_columns or []
        if tensor.shape[1] != len(columns):
            raise EventError(_width_message(f"input tensor {_q(tensor.name)}", tensor.shape[1], len(columns)))
        return [dict(zip(columns, row, strict=True)) for row in tensor.rows()]
    # one tensor per feature, [n] or [n, 1]: the tensor's name is the feature's
    columns_by_name: dict[str, list[Any]] = {}
    for tensor in tensors:
        if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
            raise EventError(
                f"input tensor {_q(tensor.name)} has shape {list(tensor.shape)}: a request is one [n, k] tensor "
                "or one [n] / [n, 1] tensor per feature"
            )
        columns_by_name[tensor.name] = tensor.values
    lengths = {name: len(values) for name, values in columns_by_name.items()}
    if len(set(lengths.values())) > 1:
        counts = ", ".join(f"{_q(name)}: {n}" for name, n in list(lengths.items())[:6])
        raise EventError(f"the input tensors have different numbers of rows ({counts})")
    n = next(iter(lengths.values()))
    return [{name: values[i] for name, values in columns_by_name.items()} for i in range(n)]


def _seldon_request(message: Any, decoding: Decoding) -> list[dict[str, Any]]:
    table = _seldon_table(message, "request")
    if not table.rows:
        raise EventError("the request has no instances")
    if table.width is None:
        raise EventError("the SeldonMessage request's data is one-dimensional: send a list of rows")
    if table.columns is None:
        return [_positional(row, decoding, f"row {i}") for i, row in enumerate(table.rows)]
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def _refuse_other_seldon(data: dict[str, Any]) -> None:
    for key in ("jsonData", "strData", "binData"):
        if key in data:
            raise EventError(f"SeldonMessage {key} payloads cannot be read: send data.ndarray or data.tensor")


# ---------------------------------------------------------------------------------------------------------------
# Responses


def decode_response(data: Any, decoding: Decoding) -> tuple[list[Any], list[dict[str, float]] | None]:
    """The predictions of a V1, V2 or SeldonMessage response body, and the class probabilities (class -> p) when
    ``probabilities_output`` is set. When the probabilities are the response's only output (Seldon's sklearn server
    answers predict_proba by default), the predictions are their most probable classes."""
    outputs = _outputs(data)
    prediction = _select(outputs, decoding.prediction_output, "log.prediction_output", "predictions")
    probabilities = None
    if decoding.probabilities_output is not None:
        table = _select(outputs, decoding.probabilities_output, "log.probabilities_output", "probabilities")
        probabilities = _probabilities(table, decoding.classes)
        if table is prediction:
            # rows keep the classes' order, so a tie goes to the first class, as numpy's argmax does
            return [max(row, key=row.__getitem__) for row in probabilities], probabilities
    return _predictions(prediction), probabilities


@dataclass(frozen=True)
class _Table:
    """One output, or a SeldonMessage's data: rows of scalars (width None) or of lists of width values."""

    name: str
    rows: list[Any]
    width: int | None
    columns: list[str] | None = None  # a SeldonMessage's names


def _outputs(data: Any) -> dict[str, _Table]:
    if not isinstance(data, dict):
        raise EventError(f"the response is {_kind(data)}, not a JSON object")
    if "predictions" in data:
        predictions = data["predictions"]
        if not isinstance(predictions, list):
            raise EventError(f"'predictions' is {_kind(predictions)}, not a list")
        return {V1_OUTPUT: _Table(V1_OUTPUT, predictions, None)}  # rows checked when used: V1 allows anything
    if "outputs" in data:
        return {t.name: t.table() for t in _tensors(data["outputs"], "outputs")}
    if "data" in data:
        return {SELDON_OUTPUT: _seldon_table(data["data"], "response")}
    _refuse_other_seldon(data)
    raise EventError(
        f"the response has no 'predictions' (V1), 'outputs' (V2) or 'data' (SeldonMessage); its keys: {_names(data)}"
    )


def _select(outputs: dict[str, _Table], name: str | None, option: str, holding: str) -> _Table:
    if name is not None:
        if name not in outputs:
            raise EventError(f"the response has no output {_q(name)} (set by {option}); its outputs: {_names(outputs)}")
        return outputs[name]
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    raise EventError(
        f"the response has {len(outputs)} outputs ({_names(outputs)}): set {option} to the one holding {holding}"
    )


def _predictions(table: _Table) -> list[Any]:
    predictions = []
    for i, value in enumerate(table.rows):
        if isinstance(value, list) and len(value) == 1:  # [n, 1]
            value = value[0]
        if isinstance(value, list):
            raise EventError(
                f"output {_q(table.name)} holds {len(value)} values per prediction: name the output of predictions "
                "with log.prediction_output, or of class probabilities with log.probabilities_output"
            )
        if isinstance(value, dict):
            raise EventError(f"prediction {i} of output {_q(table.name)} is an object, not a value")
        predictions.append(value)
    return predictions


def _probabilities(table: _Table, classes: Sequence[str]) -> list[dict[str, float]]:
    if not classes:
        raise EventError("log.probabilities_output is set but the reference has no classes")
    order = list(range(len(classes)))
    if table.columns is not None and sorted(table.columns) == sorted(classes):
        # a SeldonMessage naming its columns by the classes themselves: map by name, not position
        order = [table.columns.index(c) for c in classes]
    result = []
    for i, row in enumerate(table.rows):
        if not isinstance(row, list):  # [n]: one probability per row, for a reference with one class
            row = [row]
        width = len(row)
        if width != len(classes):
            raise EventError(
                f"output {_q(table.name)} has {width} probabilities per row but the reference has "
                f"{len(classes)} classes"
            )
        probabilities = {}
        for c, j in zip(classes, order, strict=True):
            p = row[j]
            if isinstance(p, bool) or not isinstance(p, int | float):
                raise EventError(f"probability {j} of row {i} in output {_q(table.name)} is {_kind(p)}, not a number")
            probabilities[c] = _finite(p, f"probability {j} of row {i} in output {_q(table.name)}")
        result.append(probabilities)
    return result


def _finite(value: int | float, what: str) -> float:
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise EventError(f"{what} is not a finite number")
    return number


# ---------------------------------------------------------------------------------------------------------------
# Pairing


def request_ids(event_id: str, n: int) -> list[str]:
    """The ids of a request's records: the event's own for one instance, ``<id>:<i>`` for several."""
    return [event_id] if n == 1 else [f"{event_id}:{i}" for i in range(n)]


def check_counts(instances: int, predictions: int) -> None:
    if instances != predictions:
        raise EventError(f"the request has {instances} instances but the response has {predictions} predictions")


def pair(
    request: InferenceEvent, response: InferenceEvent, decoding: Decoding
) -> tuple[list[str], list[dict[str, Any]], list[Any], list[dict[str, float]] | None]:
    """Ids, records, predictions and probabilities of one request and its response."""
    if request.kind != REQUEST or response.kind != RESPONSE:
        raise EventError(f"cannot pair a {request.kind} with a {response.kind}: expected a request and its response")
    if request.pair_key != response.pair_key:
        raise EventError(
            f"the response {_q(response.request_id)} does not answer the request {_q(request.request_id)}"
        )
    records = decode_request(request.data, decoding)
    predictions, probabilities = decode_response(response.data, decoding)
    check_counts(len(records), len(predictions))
    return request_ids(request.request_id, len(records)), records, predictions, probabilities


# ---------------------------------------------------------------------------------------------------------------
# Tensors: V2 (Open Inference Protocol) and SeldonMessage


class _Bad(Exception):
    """An element that its datatype does not allow."""


def _as_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad
    return v


def _as_str(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad
    return v


def _as_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _Bad
    try:
        return float(v)
    except OverflowError as exc:
        raise _Bad from exc


def _as_int(low: int, high: int) -> Callable[[Any], int]:
    def convert(v: Any) -> int:
        if isinstance(v, float) and v.is_integer():  # 3.0 from a JSON encoder that writes every number as float
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise _Bad
        return v

    return convert


_CONVERTERS: Final[dict[str, Callable[[Any], Any]]] = {
    "BOOL": _as_bool,
    "BYTES": _as_str,  # in JSON a BYTES element is a string: the categorical features
    "FP16": _as_float,
    "BF16": _as_float,
    "FP32": _as_float,
    "FP64": _as_float,
    **{f"INT{b}": _as_int(-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)},
    **{f"UINT{b}": _as_int(0, 2**b - 1) for b in (8, 16, 32, 64)},
}


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    values: list[Any]  # flat, row-major, converted to the datatype's Python type

    def rows(self) -> list[list[Any]]:
        k = self.shape[1]
        return [self.values[i * k : (i + 1) * k] for i in range(self.shape[0])]

    def table(self) -> _Table:
        if len(self.shape) == 1:
            return _Table(self.name, self.values, None)
        if len(self.shape) == 2:
            return _Table(self.name, self.rows(), self.shape[1])
        raise EventError(
            f"output tensor {_q(self.name)} has shape {list(self.shape)}: outputs are [n] or [n, k] tensors"
        )


def _tensors(items: Any, key: str) -> list[_Tensor]:
    if not isinstance(items, list):
        raise EventError(f"{key!r} is {_kind(items)}, not a list of tensors")
    if not items:
        raise EventError(f"{key!r} is empty")
    tensors = [_tensor(item, f"{key}[{i}]") for i, item in enumerate(items)]
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise EventError(f"{key!r} names a tensor more than once: {_names(duplicated)}")
    return tensors


def _tensor(item: Any, where: str) -> _Tensor:
    if not isinstance(item, dict):
        raise EventError(f"{where} is {_kind(item)}, not a tensor object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise EventError(f"{where} has no name")
    shape = _shape(item.get("shape"), f"tensor {_q(name)}")
    datatype = item.get("datatype")
    convert = _CONVERTERS.get(datatype) if isinstance(datatype, str) else None
    if convert is None:
        raise EventError(
            f"tensor {_q(name)} has unknown datatype {_q(datatype)}; expected one of {', '.join(_CONVERTERS)}"
        )
    if "data" not in item:
        raise EventError(f"tensor {_q(name)} has no data (binary tensor data cannot be read: send JSON data)")
    flat = _flatten(item["data"], f"tensor {_q(name)}")
    _check_count(flat, shape, f"tensor {_q(name)}")
    values = []
    for i, v in enumerate(flat):
        try:
            values.append(convert(v))
        except _Bad:
            raise EventError(f"tensor {_q(name)} element {i} is {_kind(v)} {_q(v)}, not {datatype}") from None
    return _Tensor(name, shape, values)


def _shape(shape: Any, what: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise EventError(f"{what} has no valid shape: expected a list of non-negative integers, got {_q(shape)}")
    return tuple(shape)


def _check_count(flat: list[Any], shape: tuple[int, ...], what: str) -> None:
    expected = math.prod(shape)
    if len(flat) != expected:
        raise EventError(f"{what} has {len(flat)} elements but its shape {list(shape)} holds {expected}")


def _flatten(data: Any, what: str) -> list[Any]:
    """Row-major elements of flat or nested lists; nested ones must be regular (no ragged rows)."""
    if not isinstance(data, list):
        raise EventError(f"{what} has data that is {_kind(data)}, not a list")
    level = data
    while level and any(isinstance(x, list) for x in level):  # level by level: no recursion on sender's depth
        if not all(isinstance(x, list) and len(x) == len(level[0]) for x in level):
            raise EventError(f"{what} has ragged nested data: its lists differ in length or mix lists and values")
        level = [y for x in level for y in x]
    return level


def _seldon_table(message: Any, what: str) -> _Table:
    """A SeldonMessage's DefaultData: ``ndarray`` (rows, or one value per instance) or ``tensor`` (shape and flat
    values), with optional column ``names``."""
    if not isinstance(message, dict):
        raise EventError(f"the SeldonMessage {what}'s 'data' is {_kind(message)}, not an object")
    if "ndarray" in message:
        ndarray = message["ndarray"]
        if not isinstance(ndarray, list):
            raise EventError(f"data.ndarray is {_kind(ndarray)}, not a list")
        if any(isinstance(row, list) for row in ndarray):
            if not all(isinstance(row, list) for row in ndarray):
                raise EventError("data.ndarray mixes rows (lists) and single values")
            widths = {len(row) for row in ndarray}
            if len(widths) > 1:
                raise EventError(f"data.ndarray has rows of different lengths: {sorted(widths)[:6]}")
            rows: list[Any] = ndarray
            width: int | None = widths.pop()
        else:
            rows, width = ndarray, None
    elif "tensor" in message:
        tensor = message["tensor"]
        if not isinstance(tensor, dict):
            raise EventError(f"data.tensor is {_kind(tensor)}, not an object")
        shape = _shape(tensor.get("shape"), "data.tensor")
        values = tensor.get("values")
        if not isinstance(values, list) or any(isinstance(v, list | dict) for v in values):
            raise EventError("data.tensor.values is not a flat list of values")
        _check_count(values, shape, "data.tensor")
        if len(shape) == 1:
            rows, width = values, None
        elif len(shape) == 2:
            rows, width = [values[i * shape[1] : (i + 1) * shape[1]] for i in range(shape[0])], shape[1]
        else:
            raise EventError(f"data.tensor has shape {list(shape)}: only [n] and [n, k] tensors can be read")
    else:
        raise EventError(
            f"the SeldonMessage {what} has neither data.ndarray nor data.tensor; its keys: {_names(message)}"
        )
    names = message.get("names") or None
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise EventError("data.names is not a list of strings")
        expected = 1 if width is None else width
        if len(names) != expected:
            raise EventError(f"data.names has {len(names)} names but the rows have {expected} values")
        if len(set(names)) != len(names):
            raise EventError("data.names names a column more than once")
    return _Table(SELDON_OUTPUT, rows, width, names)


# ---------------------------------------------------------------------------------------------------------------
# Messages: one line, sender-supplied text quoted and clipped

_CONTROL: Final = re.compile(r"\s+")


def _clip(text: str, limit: int = 160) -> str:
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _q(value: Any) -> str:
    """A sender's value in a message: repr (escapes newlines), clipped."""
    return _clip(repr(value), 60)


def _names(items: Any) -> str:
    names = list(items)
    shown = ", ".join(_q(n) for n in names[:8])
    return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "") if names else "none"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"

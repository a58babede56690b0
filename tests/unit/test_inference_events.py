"""The payload loggers' CloudEvents as KServe and Seldon Core send them (tests/fixtures/inference_events, built from
their source), in binary and structured mode, V1, V2 and SeldonMessage bodies; and every refusal an EventError
with a message for the sender, never a KeyError or TypeError, whatever JSON comes in."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.inference_events import (
    EVENT_TYPES,
    REQUEST,
    RESPONSE,
    Decoding,
    EventError,
    InferenceEvent,
    check_counts,
    decode_request,
    decode_response,
    pair,
    parse_event,
    request_ids,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "inference_events"
KSERVE = json.loads((FIXTURES / "kserve.json").read_text())
SELDON = json.loads((FIXTURES / "seldon.json").read_text())
STRUCTURED = json.loads((FIXTURES / "structured.json").read_text())

IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
PENGUINS = ["Adelie", "Chinstrap", "Gentoo"]
FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def binary(fixture: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    return dict(fixture["headers"]), fixture["body"].encode()


def structured(fixture: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """The same event in structured mode, converted by hand from the binary headers (not by the SDK)."""
    headers = {k.lower(): v for k, v in fixture["headers"].items()}
    event: dict[str, Any] = {k[3:]: v for k, v in headers.items() if k.startswith("ce-")}
    content_type = headers.get("content-type")
    if content_type:
        event["datacontenttype"] = content_type
    if content_type == "application/json":
        event["data"] = json.loads(fixture["body"])
    else:  # not JSON by its type: the bytes travel as data_base64
        event["data_base64"] = base64.b64encode(fixture["body"].encode()).decode()
    return {"content-type": "application/cloudevents+json"}, json.dumps(event).encode()


MODES = pytest.mark.parametrize("mode", [binary, structured], ids=["binary", "structured"])


def event(fixture: dict[str, Any], mode: Any = binary) -> InferenceEvent:
    return parse_event(*mode(fixture))


def header(fixture: dict[str, Any], name: str) -> str:
    return next(v for k, v in fixture["headers"].items() if k.lower() == name)


def body(fixture: dict[str, Any]) -> Any:
    return json.loads(fixture["body"])


def message(excinfo: pytest.ExceptionInfo[EventError]) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and text, text  # one line for an HTTP body
    return text


# --- KServe ---------------------------------------------------------------------------------------------------


@MODES
def test_kserve_v1_positional_pair(mode: Any) -> None:
    req, resp = KSERVE["v1_request"], KSERVE["v1_response"]
    request, response = event(req, mode), event(resp, mode)
    assert (request.kind, response.kind) == (REQUEST, RESPONSE)
    assert request.event_id == response.event_id == header(req, "ce-id")  # KServe: one id for both
    assert request.request_id == header(req, "ce-id")
    assert request.component == header(req, "ce-component")
    assert request.source == header(req, "ce-source")
    assert request.pair_key == response.pair_key
    assert request.time is not None and request.time.isoformat().startswith("2021-04-10T00:23:26.078952")

    ids, records, predictions, probabilities = pair(request, response, Decoding(input_columns=IRIS))
    instances = body(req)["instances"]
    assert ids == [f"{header(req, 'ce-id')}:{i}" for i in range(len(instances))]
    assert records == [dict(zip(IRIS, row, strict=True)) for row in instances]
    assert predictions == body(resp)["predictions"]
    assert probabilities is None


@MODES
def test_kserve_curl_content_type_is_still_json(mode: Any) -> None:
    # curl -d sends application/x-www-form-urlencoded, and the agent forwards the client's content type
    req, resp = KSERVE["v1_curl_request"], KSERVE["v1_curl_response"]
    assert header(req, "content-type") == "application/x-www-form-urlencoded"
    _, records, predictions, _ = pair(event(req, mode), event(resp, mode), Decoding(input_columns=IRIS))
    assert [list(r.values()) for r in records] == body(req)["instances"]
    assert predictions == body(resp)["predictions"]


@MODES
def test_kserve_v2_one_tensor_is_positional(mode: Any) -> None:
    req, resp = KSERVE["v2_request"], KSERVE["v2_response"]
    ids, records, predictions, _ = pair(event(req, mode), event(resp, mode), Decoding(input_columns=IRIS))
    tensor = body(req)["inputs"][0]
    assert tensor["shape"] == [2, 4] and isinstance(tensor["data"][0], list)  # nested data
    assert records == [dict(zip(IRIS, row, strict=True)) for row in tensor["data"]]
    assert len(ids) == 2
    # the README's response is FP32 with integers written as 1 and 2: floats come out
    assert predictions == [float(v) for v in body(resp)["outputs"][0]["data"]]
    assert all(type(p) is float for p in predictions)


@MODES
def test_kserve_v2_named_tensors_and_outputs(mode: Any) -> None:
    req, resp = KSERVE["v2_named_request"], KSERVE["v2_named_response"]
    decoding = Decoding(prediction_output="predict", probabilities_output="predict_proba", classes=PENGUINS)
    _, records, predictions, probabilities = pair(event(req, mode), event(resp, mode), decoding)

    inputs = {t["name"]: t["data"] for t in body(req)["inputs"]}
    flat = {name: [v[0] if isinstance(v, list) else v for v in data] for name, data in inputs.items()}
    assert records == [{name: flat[name][i] for name in inputs} for i in range(3)]
    assert [type(records[0][n]) for n in inputs] == [float, int, str, bool]

    outputs = {t["name"]: t["data"] for t in body(resp)["outputs"]}
    assert predictions == outputs["predict"]
    proba = outputs["predict_proba"]
    assert probabilities == [dict(zip(PENGUINS, proba[i * 3 : i * 3 + 3], strict=True)) for i in range(3)]


def test_kserve_v2_several_outputs_need_a_name() -> None:
    data = body(KSERVE["v2_named_response"])
    with pytest.raises(EventError) as excinfo:
        decode_response(data, Decoding())
    assert "2 outputs ('predict', 'predict_proba')" in message(excinfo)
    assert "log.prediction_output" in message(excinfo)
    with pytest.raises(EventError) as excinfo:
        decode_response(data, Decoding(prediction_output="label"))
    assert "no output 'label'" in message(excinfo) and "'predict', 'predict_proba'" in message(excinfo)
    predictions, _ = decode_response(data, Decoding(prediction_output="predict"))
    assert predictions == [t["data"] for t in data["outputs"] if t["name"] == "predict"][0]


def test_kserve_v2_probabilities_width_and_unknown_name() -> None:
    data = body(KSERVE["v2_named_response"])
    with pytest.raises(EventError) as excinfo:
        decode_response(data, Decoding(None, "predict", "predict_proba", classes=["a", "b"]))
    assert "3 probabilities per row but the reference has 2 classes" in message(excinfo)
    with pytest.raises(EventError) as excinfo:
        decode_response(data, Decoding(None, "predict", "proba", classes=PENGUINS))
    assert "no output 'proba' (set by log.probabilities_output)" in message(excinfo)


# --- Seldon Core ----------------------------------------------------------------------------------------------


@MODES
def test_seldon_pairs_by_request_id_not_ce_id(mode: Any) -> None:
    req, resp = SELDON["request"], SELDON["response"]
    request, response = event(req, mode), event(resp, mode)
    assert request.event_id == header(req, "ce-id") != response.event_id == header(resp, "ce-id")
    assert request.request_id == response.request_id == header(req, "ce-requestid")
    assert request.component == header(req, "ce-modelid")
    assert request.pair_key == response.pair_key

    ids, records, predictions, probabilities = pair(request, response, Decoding(input_columns=["a", "b", "c"]))
    assert ids == [header(req, "ce-requestid")]  # one instance: the id itself
    assert records == [dict(zip("abc", body(req)["data"]["ndarray"][0], strict=True))]
    assert predictions == [body(resp)["data"]["ndarray"][0][0]]  # names ["proba"], one column
    assert probabilities is None


def test_seldon_structured_data_base64() -> None:
    fixture = STRUCTURED["seldon_response_base64"]
    response = parse_event(fixture["headers"], fixture["body"].encode())
    assert response.data == body(SELDON["response"])
    assert response.request_id == header(SELDON["response"], "ce-requestid")


def test_time_is_what_was_sent() -> None:
    headers, body = _with(KSERVE["v1_request"], drop="ce-time")
    assert parse_event(headers, body).time is None  # not the SDK's "now"
    headers, body = _with(KSERVE["v1_request"], Ce_Time="2024-01-02T03:04:05.123456789+02:00")
    assert parse_event(headers, body).time == datetime(2024, 1, 2, 1, 4, 5, 123456, tzinfo=UTC)


def test_structured_fixture_matches_binary() -> None:
    fixture = STRUCTURED["kserve_v1_request"]
    from_structured = parse_event(fixture["headers"], fixture["body"].encode())
    assert from_structured == event(KSERVE["v1_request"])


@MODES
def test_seldon_names_map_columns_and_default_predict_proba(mode: Any) -> None:
    req, resp = SELDON["sklearn_request"], SELDON["sklearn_response"]
    classes = ["setosa", "versicolor", "virginica"]
    decoding = Decoding(probabilities_output="data", classes=classes)
    ids, records, predictions, probabilities = pair(event(req, mode), event(resp, mode), decoding)
    message_in = body(req)["data"]
    assert records == [dict(zip(message_in["names"], row, strict=True)) for row in message_in["ndarray"]]
    rows = body(resp)["data"]["ndarray"]
    assert probabilities == [dict(zip(classes, row, strict=True)) for row in rows]
    # SKLEARN_SERVER answers predict_proba only: the prediction is the most probable class
    assert predictions == [classes[row.index(max(row))] for row in rows]
    assert ids == [f"{header(req, 'ce-requestid')}:{i}" for i in range(2)]


def test_seldon_probabilities_by_class_name() -> None:
    data = {"data": {"names": ["virginica", "setosa"], "ndarray": [[0.8, 0.2], [0.1, 0.9]]}}
    predictions, probabilities = decode_response(data, Decoding(probabilities_output="data",
                                                                classes=["setosa", "virginica"]))
    assert probabilities == [{"setosa": 0.2, "virginica": 0.8}, {"setosa": 0.9, "virginica": 0.1}]
    assert predictions == ["virginica", "setosa"]


@MODES
def test_seldon_tensor_positional(mode: Any) -> None:
    req, resp = SELDON["tensor_request"], SELDON["tensor_response"]
    _, records, predictions, _ = pair(event(req, mode), event(resp, mode), Decoding(input_columns=IRIS))
    values = body(req)["data"]["tensor"]["values"]
    assert records == [dict(zip(IRIS, values[:4], strict=True)), dict(zip(IRIS, values[4:], strict=True))]
    assert predictions == body(resp)["data"]["tensor"]["values"]


@MODES
def test_seldon_v2_protocol(mode: Any) -> None:
    req, resp = SELDON["v2_request"], SELDON["v2_response"]
    assert header(req, "ce-protocol") == "v2"
    ids, records, predictions, _ = pair(event(req, mode), event(resp, mode), Decoding(input_columns=IRIS))
    assert ids == [header(req, "ce-requestid")]
    assert records == [dict(zip(IRIS, body(req)["inputs"][0]["data"][0], strict=True))]
    assert predictions == body(resp)["outputs"][0]["data"]
    assert type(predictions[0]) is int


def test_seldon_feedback_is_refused() -> None:
    with pytest.raises(EventError) as excinfo:
        event(SELDON["feedback"])
    assert "unknown event type 'io.seldon.serving.feedback'" in message(excinfo)
    assert all(t in message(excinfo) for t in EVENT_TYPES)


# --- ids, counts, pairing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5])
def test_request_ids(n: int) -> None:
    ids = request_ids("abc", n)
    assert len(ids) == len(set(ids)) == n
    assert ids == (["abc"] if n == 1 else [f"abc:{i}" for i in range(n)])


def test_counts_must_match() -> None:
    check_counts(3, 3)
    with pytest.raises(EventError) as excinfo:
        check_counts(2, 3)
    assert "2 instances" in message(excinfo) and "3 predictions" in message(excinfo)
    request = event(KSERVE["v1_request"])
    short = InferenceEvent(**{**event(KSERVE["v1_response"]).__dict__, "data": {"predictions": [1]}})
    with pytest.raises(EventError) as excinfo:
        pair(request, short, Decoding(input_columns=IRIS))
    assert "2 instances but the response has 1 predictions" in message(excinfo)


def test_pair_refuses_strangers_and_swapped_kinds() -> None:
    request, response = event(KSERVE["v1_request"]), event(KSERVE["v1_response"])
    other = event(KSERVE["v1_curl_response"])
    with pytest.raises(EventError) as excinfo:
        pair(request, other, Decoding(input_columns=IRIS))
    assert other.request_id in message(excinfo) and request.request_id in message(excinfo)
    with pytest.raises(EventError) as excinfo:
        pair(response, request, Decoding(input_columns=IRIS))
    assert "cannot pair a response with a request" in message(excinfo)


# --- request mapping ----------------------------------------------------------------------------------------------


def test_v1_named_instances_keep_raw_values() -> None:
    instances = [{"island": "Biscoe", "bill_length_mm": 39.1, "sex": None}, {"island": "Dream", "extra": [1, 2]}]
    assert decode_request({"instances": instances}, Decoding()) == instances


@pytest.mark.parametrize(
    ("data", "columns", "expected"),
    [
        ({"instances": [[1, 2, 3]]}, ["a", "b"], "instance 0 has 3 positional values but log.input_columns names 2"),
        ({"instances": [[1, 2]]}, None, "instance 0 has 2 positional values but log.input_columns names 0"),
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, ["a"],
         "input tensor 'x' has 3 positional values but log.input_columns names 1"),
        ({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]}]}, None,
         "input tensor 'x' has 2 positional values but log.input_columns names 0"),
        ({"data": {"ndarray": [[1, 2]]}}, ["a", "b", "c"],
         "row 0 has 2 positional values but log.input_columns names 3"),
        ({"data": {"names": ["a"], "ndarray": [[1, 2]]}}, None, "data.names has 1 names but the rows have 2 values"),
    ],
)
def test_width_mismatch_names_both_numbers(data: Any, columns: list[str] | None, expected: str) -> None:
    with pytest.raises(EventError) as excinfo:
        decode_request(data, Decoding(input_columns=columns))
    assert expected in message(excinfo)


def test_v2_single_feature_tensor_is_named_unless_columns_configured() -> None:
    data = {"inputs": [{"name": "age", "shape": [2, 1], "datatype": "INT32", "data": [[30], [41]]}]}
    assert decode_request(data, Decoding()) == [{"age": 30}, {"age": 41}]
    assert decode_request(data, Decoding(input_columns=["years"])) == [{"years": 30}, {"years": 41}]
    flat = {"inputs": [{"name": "age", "shape": [2], "datatype": "INT32", "data": [30, 41]}]}
    assert decode_request(flat, Decoding(input_columns=["years"])) == [{"age": 30}, {"age": 41}]


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        ({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]},
         "tensor 'x' has 3 elements but its shape [2, 2] holds 4"),
        ({"name": "x", "shape": [2], "datatype": "FLOAT", "data": [1, 2]}, "tensor 'x' has unknown datatype 'FLOAT'"),
        ({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]},
         "tensor 'x' has ragged nested data"),
        ({"name": "x", "shape": [3], "datatype": "FP32", "data": [[1, 2], 3]}, "tensor 'x' has ragged nested data"),
        ({"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", 1]}, "tensor 'x' element 1 is a number 1"),
        ({"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}, "element 0 is a number 300, not INT8"),
        ({"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}, "element 0 is a number 1, not BOOL"),
        ({"name": "x", "shape": [1], "datatype": "FP64", "data": [True]}, "element 0 is a boolean True, not FP64"),
        ({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}, "tensor 'x' has no valid shape"),
        ({"name": "x", "shape": [1], "datatype": "FP32"}, "tensor 'x' has no data"),
        ({"shape": [1], "datatype": "FP32", "data": [1]}, "inputs[0] has no name"),
        ({"name": "x", "shape": [1, 1, 2], "datatype": "FP32", "data": [1, 2]}, "has shape [1, 1, 2]"),
    ],
)
def test_malformed_tensors(tensor: dict[str, Any], expected: str) -> None:
    with pytest.raises(EventError) as excinfo:
        decode_request({"inputs": [tensor]}, Decoding(input_columns=["a", "b"]))
    assert expected in message(excinfo)


def test_v2_named_tensors_must_agree() -> None:
    data = {"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                       {"name": "b", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}
    with pytest.raises(EventError) as excinfo:
        decode_request(data, Decoding())
    assert "different numbers of rows ('a': 2, 'b': 3)" in message(excinfo)
    data["inputs"][1] = {"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]}
    with pytest.raises(EventError) as excinfo:
        decode_request(data, Decoding())
    assert "names a tensor more than once: 'a'" in message(excinfo)


def test_integral_floats_in_int_tensors() -> None:
    data = {"inputs": [{"name": "n", "shape": [2], "datatype": "INT64", "data": [3.0, 4]}]}
    assert [type(r["n"]) for r in decode_request(data, Decoding())] == [int, int]
    data["inputs"][0]["data"] = [3.5, 4]
    with pytest.raises(EventError) as excinfo:
        decode_request(data, Decoding())
    assert "element 0 is a number 3.5, not INT64" in message(excinfo)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"instances": "x"}, "'instances' is a string, not a list"),
        ({"instances": []}, "the request has no instances"),
        ({"instances": [3]}, "instance 0 is a number"),
        ({"inputs": []}, "'inputs' is empty"),
        ({"inputs": {"x": [1]}}, "'inputs' is an object, not a list of tensors"),
        ({"predictions": [1]}, "the request has no 'instances' (V1), 'inputs' (V2) or 'data' (SeldonMessage)"),
        ({"jsonData": {"a": 1}}, "SeldonMessage jsonData payloads cannot be read"),
        ({"data": {"ndarray": [1, 2]}}, "one-dimensional"),
        ({"data": {"tftensor": {}}}, "neither data.ndarray nor data.tensor"),
        ({"data": {"tensor": {"shape": [2, 2], "values": [1, 2, 3]}}}, "data.tensor has 3 elements but its shape"),
        ([{"instances": []}], "the request is a list, not a JSON object"),
    ],
)
def test_request_refusals(data: Any, expected: str) -> None:
    with pytest.raises(EventError) as excinfo:
        decode_request(data, Decoding(input_columns=["a", "b"]))
    assert expected in message(excinfo)


@pytest.mark.parametrize(
    ("data", "decoding", "expected"),
    [
        ({"instances": [1]}, Decoding(), "the response has no 'predictions' (V1), 'outputs' (V2) or 'data'"),
        ({"outputs": []}, Decoding(), "'outputs' is empty"),
        ({"predictions": {"a": 1}}, Decoding(), "'predictions' is an object, not a list"),
        ({"predictions": [[0.1, 0.9]]}, Decoding(), "holds 2 values per prediction"),
        ({"predictions": [{"label": 1}]}, Decoding(), "prediction 0 of output 'predictions' is an object"),
        ({"predictions": [[0.1, 0.9]]}, Decoding(probabilities_output="predictions"), "the reference has no classes"),
        ({"predictions": [["a", 0.9]]}, Decoding(probabilities_output="predictions", classes=["x", "y"]),
         "probability 0 of row 0 in output 'predictions' is a string"),
        ({"outputs": [{"name": "p", "shape": [1, 1, 1], "datatype": "FP32", "data": [1]}]}, Decoding(),
         "output tensor 'p' has shape [1, 1, 1]"),
        ({"data": {"names": ["a", "a"], "ndarray": [[1, 2]]}}, Decoding(), "names a column more than once"),
    ],
)
def test_response_refusals(data: Any, decoding: Decoding, expected: str) -> None:
    with pytest.raises(EventError) as excinfo:
        decode_response(data, decoding)
    assert expected in message(excinfo)


def test_v1_probabilities_and_unwrapped_columns() -> None:
    predictions, probabilities = decode_response({"predictions": [[1], [0]]}, Decoding())
    assert predictions == [1, 0]
    predictions, probabilities = decode_response(
        {"predictions": [[0.25, 0.75], [0.5, 0.5]]}, Decoding(probabilities_output="predictions", classes=["0", "1"])
    )
    assert probabilities == [{"0": 0.25, "1": 0.75}, {"0": 0.5, "1": 0.5}]
    assert predictions == ["1", "0"]  # a tie goes to the first class, as argmax does


# --- CloudEvents refusals -------------------------------------------------------------------------------------


def _with(fixture: dict[str, Any], drop: str = "", **headers: str) -> tuple[dict[str, str], bytes]:
    h, b = binary(fixture)
    h = {k: v for k, v in h.items() if k.lower() != drop}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return h, b


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        (_with(KSERVE["v1_request"], Ce_Type="com.example.other")[0], b"{}", "unknown event type 'com.example.other'"),
        (_with(KSERVE["v1_request"])[0], b"{not json", "the body is not JSON"),
        (_with(KSERVE["v1_request"])[0], b"\xff\xfe", "the body is not JSON"),
        (_with(KSERVE["v1_request"])[0], b"[1, 2]", "the event's data is a list, not a JSON object"),
        (_with(KSERVE["v1_request"])[0], b"", "the event has no data"),
        (_with(KSERVE["v1_request"])[0], b"[" * 5000, "the body is not JSON"),
        (_with(KSERVE["v1_request"], drop="ce-id")[0], b"{}", "invalid CloudEvent: no id (header ce-id)"),
        (_with(KSERVE["v1_request"], drop="ce-specversion")[0], b"{}", "invalid CloudEvent: no specversion"),
        (_with(KSERVE["v1_request"], Ce_Id="")[0], b"{}", "invalid CloudEvent: 'id'"),
        (_with(KSERVE["v1_request"], drop="ce-source")[0], b"{}", "invalid CloudEvent: 'source'"),
        (_with(KSERVE["v1_request"], Ce_Time="yesterday")[0], b"{}", "invalid CloudEvent"),
        (_with(KSERVE["v1_request"], Ce_Specversion="0.9")[0], b"{}", "invalid CloudEvent: 'specversion'"),
        (_with(SELDON["request"], **{"content-type": "application/protobuf"})[0], b"\x0a\x03abc",
         "gRPC payloads cannot be read"),
        ({"content-type": "application/json"}, b'{"instances": [[1]]}', "not a CloudEvent: no ce-* headers"),
        ({}, b"{}", "not a CloudEvent: no ce-* headers (binary mode) and content-type is None"),
        ({"content-type": "application/cloudevents-batch+json"}, b"[]", "batched CloudEvents are not supported"),
        ({"content-type": "application/cloudevents+json"}, b"[]", "invalid CloudEvent"),
        ({"content-type": "application/cloudevents+json"}, b"[" * 5000, "invalid CloudEvent"),
        ({"content-type": "application/cloudevents+json"}, b'{"specversion": "1.0", "type": "x"}',
         "invalid CloudEvent: no id"),
        ({"content-type": "application/cloudevents+json", "ce-id": "x"}, b'{"id": "1", "type": "x"}',
         "invalid CloudEvent: no specversion"),  # structured by its content type, whatever ce-* headers come along
    ],
)
def test_event_refusals(headers: dict[str, str], body: bytes, expected: str) -> None:
    with pytest.raises(EventError) as excinfo:
        parse_event(headers, body)
    assert expected in message(excinfo)


def test_structured_data_must_be_an_object() -> None:
    doc = json.loads(STRUCTURED["kserve_v1_request"]["body"])
    for data, expected in (("{\"instances\": [[1]]}", "a string"), (None, "has no data")):
        with pytest.raises(EventError) as excinfo:
            parse_event({"content-type": "application/cloudevents+json"}, json.dumps({**doc, "data": data}).encode())
        assert expected in message(excinfo)
    with pytest.raises(EventError) as excinfo:
        parse_event({"content-type": "application/cloudevents+json"},
                    json.dumps({**doc, "requestid": {"a": 1}, "type": "io.seldon.serving.inference.request"}).encode())
    assert "extension 'requestid' is an object, not a string" in message(excinfo)


def test_sender_text_stays_on_one_clipped_line() -> None:
    name = "evil\nname" + "x" * 500
    with pytest.raises(EventError) as excinfo:
        decode_response({"outputs": [{"name": name, "shape": [1], "datatype": "FP32", "data": [1]}]},
                        Decoding(prediction_output="other"))
    assert len(message(excinfo)) < 300


# --- fuzz: whatever JSON comes in, only EventError comes out -------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6)
keys = st.sampled_from(["instances", "inputs", "outputs", "predictions", "data", "name", "shape", "datatype",
                        "names", "ndarray", "tensor", "values", "jsonData", "p", "a"])
datatypes = st.sampled_from(["FP32", "INT8", "UINT8", "INT64", "BOOL", "BYTES", "FP16", "X"])
json_values = st.recursive(
    scalars | datatypes,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys | st.text(max_size=3), children, max_size=4),
    max_leaves=12,
)
ELEMENTS = {"FP32": st.floats(allow_nan=False) | st.integers(-9, 9), "INT64": st.integers(-9, 9),
            "BOOL": st.booleans(), "BYTES": st.text(max_size=3)}


@st.composite
def near_valid_tensors(draw: st.DrawFn) -> dict[str, Any]:
    """A tensor whose shape, datatype and data agree, then now and then one field replaced: the checks past the
    first ones are reached too."""
    n, k, rank = draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.sampled_from([1, 2]))
    datatype = draw(st.sampled_from(sorted(ELEMENTS)))
    count = n * k if rank == 2 else n
    flat = draw(st.lists(ELEMENTS[datatype], min_size=count, max_size=count))
    nested = rank == 2 and draw(st.booleans())
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["a", "b", "p", "predictions"])),
        "shape": [n, k] if rank == 2 else [n],
        "datatype": datatype,
        "data": [flat[i * k : (i + 1) * k] for i in range(n)] if nested else flat,
    }
    if draw(st.integers(0, 3)) == 0:
        tensor[draw(st.sampled_from(sorted(tensor)))] = draw(json_values)  # type: ignore[arg-type]
    return tensor


rows = st.integers(0, 3).flatmap(lambda k: st.lists(st.lists(scalars, min_size=k, max_size=k), max_size=3))
tensors = near_valid_tensors() | st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "p", "predictions"]), "shape": st.lists(st.integers(-1, 3), max_size=3),
     "datatype": datatypes, "data": json_values},
)
bodies = (
    json_values
    | st.fixed_dictionaries({"instances": rows | st.lists(json_values, max_size=3)})
    | st.fixed_dictionaries({"inputs": st.lists(tensors, max_size=3)})
    | st.fixed_dictionaries({"outputs": st.lists(tensors, max_size=3)})
    | st.fixed_dictionaries({"predictions": rows | st.lists(json_values, max_size=3)})
    | st.fixed_dictionaries({"data": st.fixed_dictionaries({}, optional={
        "names": st.lists(st.sampled_from(["x", "y", "z", "t:0"]), max_size=3) | json_values,
        "ndarray": rows | json_values, "tensor": json_values})})
)
decodings = st.builds(
    Decoding,
    input_columns=st.none() | st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
    prediction_output=st.none() | st.sampled_from(["p", "a", "data", "predictions"]),
    probabilities_output=st.none() | st.sampled_from(["p", "b", "data", "predictions"]),
    classes=st.lists(st.sampled_from(["x", "y", "z"]), max_size=3, unique=True),
)
PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any) -> bool:
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return isinstance(value, PLAIN)


@FUZZ
@given(data=bodies, decoding=decodings)
def test_fuzz_decode_raises_only_event_error(data: Any, decoding: Decoding) -> None:
    try:
        records = decode_request(data, decoding)
    except EventError as exc:
        assert "\n" not in str(exc)
    else:
        assert records and all(isinstance(r, dict) and _plain(r) for r in records)
    try:
        predictions, probabilities = decode_response(data, decoding)
    except EventError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(isinstance(p, PLAIN) for p in predictions)
        if probabilities is not None:
            assert all(list(p) == decoding.classes and all(math.isfinite(v) for v in p.values())
                       for p in probabilities)


ce_headers = st.dictionaries(
    st.sampled_from(["ce-id", "ce-type", "ce-source", "ce-specversion", "ce-time", "ce-requestid", "ce-modelid",
                     "ce-Bad_Name", "content-type", "Ce-Component"]),
    st.sampled_from(["", "1.0", "0.3", "x", "%zz", "2021-04-10T00:23:26Z", "application/json",
                     "application/cloudevents+json", *EVENT_TYPES]),
    max_size=8,
)
event_bodies = st.binary(max_size=40) | json_values.map(lambda v: json.dumps(v).encode())
structured_events = st.dictionaries(
    st.sampled_from(["id", "type", "source", "specversion", "time", "data", "data_base64", "datacontenttype",
                     "requestid", "modelid", "component", "Bad"]),
    json_values | st.sampled_from([*EVENT_TYPES, "1.0", "0.3", "2021-04-10T00:23:26Z", "eyJ9"]),
    max_size=9,
).map(lambda doc: json.dumps(doc).encode())


@FUZZ
@given(headers=ce_headers, body=event_bodies)
def test_fuzz_binary_events_raise_only_event_error(headers: dict[str, str], body: bytes) -> None:
    try:
        parsed = parse_event(headers, body)
    except EventError as exc:
        assert "\n" not in str(exc)
    else:
        assert parsed.type in EVENT_TYPES and isinstance(parsed.data, dict)


@FUZZ
@given(body=structured_events)
def test_fuzz_structured_events_raise_only_event_error(body: bytes) -> None:
    try:
        parsed = parse_event({"content-type": "application/cloudevents+json"}, body)
    except EventError as exc:
        assert "\n" not in str(exc)
    else:
        assert parsed.type in EVENT_TYPES and isinstance(parsed.data, dict)

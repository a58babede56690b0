"""What the model receives: category codes of every type, nulls, codes with gaps, the start-up guard, model
versions. Pipelines are trained on the reference as pandas reads it, as a user trains them, and the service's
answers are held against the model's own on the same rows. The app runs in process; a test that needs a drift
run ticks the job once its rows are written. (The refusal to start of a model that does not fit the columns is
about the CLI's exit: tests/process/test_startup_errors.py.)"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder

from exporter.demo import CATEGORICAL, NUMERICAL, Traffic
from tests.helpers import app_client, config_folder, drift_run, parse_metrics, population, quiet, sample, write_config


def coded_pipeline(categorical: list[str], impute: bool = False) -> Pipeline:
    steps: list[Any] = [OneHotEncoder(handle_unknown="ignore")]
    if impute:
        steps.insert(0, SimpleImputer(strategy="most_frequent"))
    pre = ColumnTransformer([("num", "passthrough", ["x"]), ("cat", make_pipeline(*steps), categorical)])
    return Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=1000))])


def records_of(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    """Rows as a client sends them: plain JSON numbers, integers and booleans, null for missing."""
    out = []
    for row in frame[columns].itertuples(index=False):
        record = {}
        for name, value in zip(columns, row, strict=True):
            if pd.isna(value):
                record[name] = None
            elif name == "x":
                record[name] = float(value)
            elif name == "flag":
                record[name] = bool(value)
            else:
                record[name] = int(value)
        out.append(record)
    return out


def test_integer_and_boolean_codes_reach_the_model_as_it_was_trained(tmp_path: Path) -> None:
    reference = population(600, seed=1)
    reference.to_csv(tmp_path / "ref.csv", index=False)
    read = pd.read_csv(tmp_path / "ref.csv")  # as a user trains: int64 grade, bool flag
    assert str(read["grade"].dtype) == "int64" and str(read["flag"].dtype) == "bool"
    model = coded_pipeline(["grade", "flag"]).fit(read[["x", "grade", "flag"]], read["label"])
    joblib.dump(model, tmp_path / "model.joblib")
    fresh = population(300, seed=2)  # new rows of the same population
    expected = model.predict_proba(fresh[["x", "grade", "flag"]])

    with app_client(write_config(tmp_path)) as client:
        one = client.post("/predict", json={"x": 0.0, "grade": 3, "flag": True})
        assert one.status_code == 200, one.text
        truth = model.predict_proba(pd.DataFrame({"x": [0.0], "grade": [3], "flag": [True]}))[0]
        assert one.json()["probabilities"] == pytest.approx(dict(zip(["0", "1"], truth, strict=True)), abs=1e-12)

        # the JSON type of the reference is required: a text code would be an unknown category to the model
        text = client.post("/predict", json={"x": 0.0, "grade": "3", "flag": True})
        assert text.status_code == 422 and text.json()["detail"][0]["loc"][-1] == "grade", text.text
        assert client.post("/predict", json={"x": 0.0, "grade": 3, "flag": "true"}).status_code == 422
        assert client.post("/predict", json={"x": 0.0, "grade": 3.5, "flag": True}).status_code == 422

        answers = client.post("/predict/batch", json={"records": records_of(fresh, ["x", "grade", "flag"])})
        assert answers.status_code == 200, answers.text
        got = np.array([[a["probabilities"]["0"], a["probabilities"]["1"]] for a in answers.json()["predictions"]])
        np.testing.assert_allclose(got, expected, atol=1e-12)

        metrics = drift_run(client)
    assert sample(metrics, "model_drift_window_rows") == 301  # the three refused requests are not logged
    # integer and boolean codes are the reference's categories, not unseen ones
    assert sample(metrics, "model_feature_unseen_share", feature="grade") == 0
    assert sample(metrics, "model_feature_unseen_share", feature="flag") == 0


def test_null_category_reaches_the_model_as_its_missing_value(demo_dir: Path, tmp_path: Path) -> None:
    model = joblib.load(demo_dir / "model.joblib")
    records, _ = Traffic("none", seed=3).records(40)
    for record in records:
        record["sex"] = None
    frame = pd.DataFrame.from_records(records, columns=NUMERICAL + CATEGORICAL)
    as_read = frame.copy()
    as_read["sex"] = pd.Series(np.nan, index=frame.index, dtype=object)  # how read_csv gives a missing text value
    with_nan = model.predict_proba(as_read)
    with_none = model.predict_proba(frame)  # what the service passed before: None, which the imputer does not see
    assert np.abs(with_nan - with_none).max() > 0.05, "the demo model must tell None from NaN for this test to bite"

    config = config_folder(demo_dir, tmp_path, **quiet())
    with app_client(config) as client:
        resp = client.post("/predict/batch", json={"records": records})
    assert resp.status_code == 200, resp.text
    classes = [str(c) for c in model.classes_]
    got = np.array([[p["probabilities"][c] for c in classes] for p in resp.json()["predictions"]])
    np.testing.assert_allclose(got, with_nan, atol=1e-12)


def test_integer_codes_with_gaps_stay_integers_for_drift_and_quality(tmp_path: Path) -> None:
    reference = population(800, seed=4, gaps=True)
    reference.to_csv(tmp_path / "ref.csv", index=False)
    read = pd.read_csv(tmp_path / "ref.csv")
    assert str(read["grade"].dtype) == "float64" and str(read["label"].dtype) == "float64"  # pandas' reading
    labelled = read[read["label"].notna()]
    model = coded_pipeline(["grade"], impute=True).fit(labelled[["x", "grade"]], labelled["label"].astype(int))
    joblib.dump(model, tmp_path / "model.joblib")
    reference_accuracy = accuracy_score(labelled["label"].astype(int), model.predict(labelled[["x", "grade"]]))

    fresh = population(400, seed=5, gaps=True)
    records = records_of(fresh, ["x", "grade"])
    expected = model.predict(fresh[["x", "grade"]])
    config = write_config(tmp_path, categorical="[grade]", nullable="[grade]")
    with app_client(config) as client:
        answers = client.post("/predict/batch", json={"records": records})
        assert answers.status_code == 200, answers.text
        predictions = [a["prediction"] for a in answers.json()["predictions"]]
        assert predictions == expected.tolist()  # integer classes, as the model gives them
        truth = fresh["label"].fillna(0).astype(int).tolist()
        body = {"labels": [{"request_id": a["request_id"], "label": y}
                           for a, y in zip(answers.json()["predictions"], truth, strict=True)]}
        assert client.post("/feedback/batch", json=body).status_code == 202
        metrics = drift_run(client)
    assert sample(metrics, "model_quality_window_rows") == 400
    # the float-read target equals the integer predictions: the reference baseline is the model's real accuracy
    assert sample(metrics, "model_quality_reference", metric="accuracy") == pytest.approx(reference_accuracy)
    assert reference_accuracy > 0.6
    assert sample(metrics, "model_quality", metric="accuracy") == pytest.approx(accuracy_score(truth, predictions))
    # the window's integer codes are the reference's float-read codes, not unseen categories
    assert sample(metrics, "model_feature_unseen_share", feature="grade") == 0
    assert sample(metrics, "model_feature_missing_share", feature="grade") == pytest.approx(
        fresh["grade"].isna().mean()
    )


def test_guard_names_the_feature_and_both_types_when_the_request_path_differs(tmp_path: Path) -> None:
    """The guard against a request path that changes what the model sees: here the path sends integer codes as
    text, as the service did before category types existed."""
    from exporter.config import FeaturesSection
    from exporter.features import STRING, FeatureSpec, FeatureTypes
    from exporter.guard import RequestPathError, check_request_path
    from exporter.model import Model
    from exporter.schema import record_model

    reference = population(300, seed=7)
    model = coded_pipeline(["grade", "flag"]).fit(reference[["x", "grade", "flag"]], reference["label"])
    section = FeaturesSection(numerical=["x"], categorical=["grade", "flag"])
    right = FeatureTypes.from_reference(reference, ["x"], ["grade", "flag"], {})
    assert check_request_path(Model(model, right, "classification"), record_model(section, right.value_types()),
                              reference) > 200
    specs = dict(right.specs)
    specs["grade"] = FeatureSpec("grade", STRING, np.dtype(object))
    wrong = FeatureTypes(specs.values())
    with pytest.raises(RequestPathError) as caught:
        check_request_path(Model(model, wrong, "classification"), record_model(section, wrong.value_types()),
                           reference)
    message = str(caught.value)
    assert "feature 'grade'" in message and "object values such as '" in message and "int64 values such as" in message


def test_model_refusing_valid_input_is_counted_and_its_internals_stay_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reference = population(300, seed=8)
    reference["colour"] = np.where(reference["grade"] == 3, "red", "blue")
    reference.to_csv(tmp_path / "ref.csv", index=False)
    pre = ColumnTransformer([("num", "passthrough", ["x"]), ("cat", OneHotEncoder(handle_unknown="error"), ["colour"])])
    model = Pipeline([("pre", pre), ("clf", LogisticRegression())]).fit(reference[["x", "colour"]], reference["label"])
    joblib.dump(model, tmp_path / "model.joblib")
    caplog.set_level(logging.WARNING, logger="exporter")
    with app_client(write_config(tmp_path, categorical="[colour]"), **quiet()) as client:
        ok = client.post("/predict", json={"x": 0.1, "colour": "red"})
        refused = client.post("/predict", json={"x": 0.1, "colour": "green"})
        metrics = parse_metrics(client.get("/metrics").text)
    log = caplog.text  # the service's log, as an operator reads it
    assert ok.status_code == 200, ok.text
    assert refused.status_code == 422
    assert "Found unknown categories" not in refused.text and "the model cannot predict" in refused.text
    assert "Found unknown categories" in log  # the details are for the operator
    assert sample(metrics, "model_prediction_errors_total") == 1
    assert sample(metrics, "model_predictions_total") == 1


def test_window_and_quality_hold_the_serving_versions_rows_only(tmp_path: Path) -> None:
    reference = population(600, seed=9)
    reference.to_csv(tmp_path / "ref.csv", index=False)
    model = coded_pipeline(["grade", "flag"]).fit(reference[["x", "grade", "flag"]], reference["label"])
    joblib.dump(model, tmp_path / "model.joblib")
    config = write_config(tmp_path)
    old = population(200, seed=10)
    old["x"] += 3  # the old version's traffic drifted far
    new = population(150, seed=11)
    with app_client(config) as client:
        answers = client.post("/predict/batch", json={"records": records_of(old, ["x", "grade", "flag"])}).json()
        wrong = [{"request_id": a["request_id"], "label": 1 - a["prediction"]} for a in answers["predictions"]]
        assert client.post("/feedback/batch", json={"labels": wrong}).status_code == 202
        before = drift_run(client)
    # version 1's run saw its rows and its wrong labels
    assert sample(before, "model_quality_window_rows") == 200 and sample(before, "model_drift_window_rows") == 200
    assert sample(before, "model_quality", metric="accuracy") == 0.0
    config.write_text(config.read_text().replace('version: "1"', 'version: "2"'))
    with app_client(config) as client:  # the same database, the next version
        answers = client.post("/predict/batch", json={"records": records_of(new, ["x", "grade", "flag"])}).json()
        right = [{"request_id": a["request_id"], "label": a["prediction"]} for a in answers["predictions"]]
        assert client.post("/feedback/batch", json={"labels": right}).status_code == 202
        metrics = drift_run(client)
        drift = client.get("/drift").json()
    assert sample(metrics, "model_quality_window_rows") == 150
    assert sample(metrics, "model_drift_window_rows") == 150  # not the 350 rows of both versions
    assert sample(metrics, "model_quality", metric="accuracy") == 1.0  # the old version's wrong labels are not in
    assert drift["model"]["version"] == "2" and drift["result"]["window_rows"] == 150
    assert drift["result"]["features"]["x"]["unseen_share"] < 0.05  # the old version's shifted rows are not in

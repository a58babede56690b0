"""What the model receives: category codes of every type, nulls, codes with gaps, the start-up guard, model
versions. Pipelines are trained on the reference as pandas reads it, as a user trains them, and the service's
answers are held against the model's own on the same rows."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
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
from tests.helpers import config_folder, live_server, sample

DRIFT = "drift: {window_size: 1000, min_rows: 50, interval_seconds: 1, report: false}"


def population(n: int, seed: int, gaps: bool = False) -> pd.DataFrame:
    """x ~ N(0, 1); grade in 1..3 and flag boolean drive the label; with ``gaps``, 5 % of grades are missing."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    grade = rng.integers(1, 4, size=n)
    flag = rng.random(n) < 0.4
    logit = 1.5 * (grade == 3) - 1.0 * (grade == 1) + 1.2 * flag + 0.5 * x
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"x": x, "grade": grade.astype(float), "flag": flag, "label": label.astype(float)})
    if gaps:
        frame.loc[rng.random(n) < 0.05, "grade"] = np.nan
        frame.loc[rng.random(n) < 0.02, "label"] = np.nan  # a few reference rows without a label
    else:
        frame["grade"] = frame["grade"].astype(int)
        frame["label"] = frame["label"].astype(int)
    return frame


def coded_pipeline(categorical: list[str], impute: bool = False) -> Pipeline:
    steps: list[Any] = [OneHotEncoder(handle_unknown="ignore")]
    if impute:
        steps.insert(0, SimpleImputer(strategy="most_frequent"))
    pre = ColumnTransformer([("num", "passthrough", ["x"]), ("cat", make_pipeline(*steps), categorical)])
    return Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=1000))])


def write_config(folder: Path, extra: str = "", categorical: str = "[grade, flag]", target: str = "label",
                 nullable: str = "[]") -> Path:
    config = folder / "config.yaml"
    config.write_text(textwrap.dedent(f"""\
        model: {{path: model.joblib, name: coded, version: "1"}}
        reference: {{path: ref.csv}}
        features: {{numerical: [x], categorical: {categorical}, nullable: {nullable}}}
        target: {target}
        database_url: sqlite:///log.db
        {DRIFT}
    """) + extra)
    return config


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

    with live_server(write_config(tmp_path)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
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

        metrics = server.wait_for(lambda m: m if sample(m, "model_drift_window_rows") == 301 else None)
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

    config = config_folder(demo_dir, tmp_path, drift={"interval_seconds": 3600})
    with live_server(config) as server:
        resp = httpx.post(f"{server.url}/predict/batch", json={"records": records}, timeout=30)
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
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        answers = client.post("/predict/batch", json={"records": records})
        assert answers.status_code == 200, answers.text
        predictions = [a["prediction"] for a in answers.json()["predictions"]]
        assert predictions == expected.tolist()  # integer classes, as the model gives them
        truth = fresh["label"].fillna(0).astype(int).tolist()
        body = {"labels": [{"request_id": a["request_id"], "label": y}
                           for a, y in zip(answers.json()["predictions"], truth, strict=True)]}
        assert client.post("/feedback/batch", json=body).status_code == 202
        metrics = server.wait_for(lambda m: m if sample(m, "model_quality_window_rows") == 400 else None)
    # the float-read target equals the integer predictions: the reference baseline is the model's real accuracy
    assert sample(metrics, "model_quality_reference", metric="accuracy") == pytest.approx(reference_accuracy)
    assert reference_accuracy > 0.6
    assert sample(metrics, "model_quality", metric="accuracy") == pytest.approx(accuracy_score(truth, predictions))
    # the window's integer codes are the reference's float-read codes, not unseen categories
    assert sample(metrics, "model_feature_unseen_share", feature="grade") == 0
    assert sample(metrics, "model_feature_missing_share", feature="grade") == pytest.approx(
        fresh["grade"].isna().mean()
    )


def _serve_fails(config: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config), "--port", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("exporter: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_model_that_does_not_fit_the_columns_refuses_to_start_with_prediction_column(tmp_path: Path) -> None:
    reference = population(300, seed=6)
    other = reference.rename(columns={"x": "size"})  # trained on other column names
    model = make_pipeline(ColumnTransformer([("num", "passthrough", ["size"])]), LogisticRegression())
    joblib.dump(model.fit(other[["size"]], other["label"]), tmp_path / "model.joblib")
    reference["prediction"] = model.predict(other[["size"]])
    reference.to_csv(tmp_path / "ref.csv", index=False)
    config = write_config(tmp_path, extra="", categorical="[grade]")
    text = config.read_text().replace("reference: {path: ref.csv}",
                                      "reference: {path: ref.csv, prediction_column: prediction}")
    config.write_text(text)
    error = _serve_fails(config)
    assert "the model cannot predict on the reference's configured features" in error and "size" in error


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


def test_model_refusing_valid_input_is_counted_and_its_internals_stay_in_the_log(tmp_path: Path) -> None:
    reference = population(300, seed=8)
    reference["colour"] = np.where(reference["grade"] == 3, "red", "blue")
    reference.to_csv(tmp_path / "ref.csv", index=False)
    pre = ColumnTransformer([("num", "passthrough", ["x"]), ("cat", OneHotEncoder(handle_unknown="error"), ["colour"])])
    model = Pipeline([("pre", pre), ("clf", LogisticRegression())]).fit(reference[["x", "colour"]], reference["label"])
    joblib.dump(model, tmp_path / "model.joblib")
    with live_server(write_config(tmp_path, categorical="[colour]")) as server:
        ok = httpx.post(f"{server.url}/predict", json={"x": 0.1, "colour": "red"}, timeout=30)
        refused = httpx.post(f"{server.url}/predict", json={"x": 0.1, "colour": "green"}, timeout=30)
        metrics = server.metrics()
        log = server.log()
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
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        answers = client.post("/predict/batch", json={"records": records_of(old, ["x", "grade", "flag"])}).json()
        wrong = [{"request_id": a["request_id"], "label": 1 - a["prediction"]} for a in answers["predictions"]]
        assert client.post("/feedback/batch", json={"labels": wrong}).status_code == 202
        server.wait_for(lambda m: sample(m, "model_quality_window_rows") == 200)
    config.write_text(config.read_text().replace('version: "1"', 'version: "2"'))
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        answers = client.post("/predict/batch", json={"records": records_of(new, ["x", "grade", "flag"])}).json()
        right = [{"request_id": a["request_id"], "label": a["prediction"]} for a in answers["predictions"]]
        assert client.post("/feedback/batch", json={"labels": right}).status_code == 202
        metrics = server.wait_for(lambda m: m if sample(m, "model_quality_window_rows") == 150 else None)
        drift = client.get("/drift").json()
    assert sample(metrics, "model_drift_window_rows") == 150  # not the 350 rows of both versions
    assert sample(metrics, "model_quality", metric="accuracy") == 1.0  # the old version's wrong labels are not in
    assert drift["model"]["version"] == "2" and drift["result"]["window_rows"] == 150
    assert drift["result"]["features"]["x"]["unseen_share"] < 0.05  # the old version's shifted rows are not in

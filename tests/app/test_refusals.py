"""Configs that would start but could not work are refused at start with one line naming the key: every case's
message, checked in process as `exporter serve` builds the service (tests/process/test_config_refusals.py runs
three of them through the real CLI)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import joblib
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge

from exporter.config import ConfigError, load_settings
from exporter.startup import StartupError, build, open_database
from tests.helpers import config_folder


def refusal(config: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None) -> str:
    """The line `exporter serve` would print for ``config``: its settings, parts and database, built as it builds
    them; fails when the config is accepted."""
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    try:
        settings = load_settings(config)
        build(settings)
        open_database(settings).dispose()
    except (ConfigError, StartupError) as exc:
        line = f"exporter: error: {exc}"
        assert "\n" not in line, line  # one line, as the CLI prints it
        return line
    raise AssertionError("the config was accepted")


@pytest.mark.parametrize(
    ("changes", "env", "expected"),
    [
        pytest.param({"drift": {"per_feature": {"bill_length_mm": {"method": "kss"}}}}, {},
                     ["drift.per_feature.bill_length_mm.method", "'kss'", "numerical", "anderson", "ks,", "psi",
                      "wasserstein", "!chisquare", "!TVD"], id="unknown-method"),
        pytest.param({"drift": {"per_feature": {"bill_length_mm": {"method": "chisquare"}}}}, {},
                     ["drift.per_feature.bill_length_mm.method", "'chisquare'", "numerical", "wasserstein"],
                     id="categorical-method-on-a-number"),
        pytest.param({"drift": {"per_feature": {"island": {"method": "ks", "threshold": 0.1}}}}, {},
                     ["drift.per_feature.island.method", "'ks'", "categorical", "chisquare", "jensenshannon"],
                     id="numerical-method-on-a-category"),
        pytest.param({"drift": {"prediction": {"method": "wasserstein"}}}, {},
                     ["drift.prediction.method", "'wasserstein'", "categorical", "classification"],
                     id="numerical-method-on-class-predictions"),
        pytest.param({"drift": {"window_size": 50, "min_rows": 100}}, {},
                     ["drift.min_rows", "drift.window_size", "100", "50"], id="min-rows-over-window"),
        pytest.param({"max_batch_records": 500, "prediction_log": {"queue_size": 100}}, {},
                     ["max_batch_records", "prediction_log.queue_size", "500", "100"], id="batch-over-queue"),
        pytest.param({"batching": {"max_batch_size": 0}}, {},
                     ["batching.max_batch_size", "greater than or equal to 1"], id="batch-size-zero"),
        pytest.param({}, {"EXPORTER_BATCHING__MAX_WAIT_MS": "500"},
                     ["batching.max_wait_ms", "less than or equal to 100"], id="batch-wait-too-long"),
        pytest.param({}, {"EXPORTER_AUTH__TOKEN": ""},
                     ["auth.token is empty: unset it to turn authentication off, or set a token"],
                     id="empty-token-env"),
        pytest.param({"auth": {"token": "  "}}, {},
                     ["auth.token is empty: unset it to turn authentication off, or set a token"],
                     id="blank-token-file"),
        pytest.param({"auth": {"protect_metrics": True}}, {},
                     ["auth.protect_metrics", "auth.token"], id="protect-metrics-without-token"),
        pytest.param({"database_url": "sqlite:///:memory:"}, {},
                     ["database_url", "in-memory", "sqlite:///predictions.db"], id="sqlite-memory"),
        pytest.param({}, {"EXPORTER_DATABASE_URL": "sqlite://"},
                     ["database_url", "in-memory", "sqlite:///predictions.db"], id="sqlite-empty-path-env"),
        pytest.param({"database_url": "sqlite:///reference.csv/predictions.db"}, {},
                     ["database_url", "EXPORTER_DATABASE_URL", "reference.csv/predictions.db", "writable location"],
                     id="sqlite-parent-is-a-file"),
        pytest.param({"model": {"path": None}}, {},
                     ["reference.prediction_column is required without model.path"], id="monitor-only-no-predictions"),
        pytest.param({"log": {"input_columns": ["bill_length_mm", "beak"]}}, {},
                     ["log.input_columns names unknown features: beak"], id="input-column-unknown"),
        pytest.param({"drift": {"segments": ["bill_length_mm"]}}, {},
                     ["drift.segments names features that are not categorical: bill_length_mm"],
                     id="segment-by-a-number"),
        pytest.param({"drift": {"segments": ["island"], "segment_min_rows": 5000}}, {},
                     ["drift.segment_min_rows (5000) is greater than drift.window_size"],
                     id="segments-never-judged"),
        pytest.param({"model": {"path": None}, "reference": {"prediction_column": "species",
                                                             "probability_columns": {"Adelie": "bill_length_mm"}}},
                     {}, ["reference.probability_columns: no column for class(es) Chinstrap, Gentoo"],
                     id="probability-column-missing-for-a-class"),
        pytest.param({"model": {"path": None}, "reference": {
                         "prediction_column": "species",
                         "probability_columns": {"Adelie": "p_a", "Chinstrap": "p_c", "Gentoo": "p_g"}}},
                     {}, ["reference data lacks probability column(s): p_a, p_c, p_g"], id="probability-column-absent"),
    ],
)
def test_refused_at_start(demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any],
                          env: dict[str, str], expected: list[str]) -> None:
    line = refusal(config_folder(demo_dir, tmp_path, **changes), monkeypatch, env)
    for part in expected:  # "!name": must not be in the line
        assert (part[1:] not in line) if part.startswith("!") else (part in line), (part, line)


def test_prediction_method_follows_the_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression predictions are numbers: a numerical test is accepted, a categorical one refused."""
    data = load_diabetes(as_frame=True).frame
    features = [c for c in data.columns if c != "target"]
    joblib.dump(Ridge().fit(data[features], data["target"]), tmp_path / "ridge.joblib")
    data.to_csv(tmp_path / "train.csv", index=False)

    def config(method: str) -> Path:
        path = tmp_path / f"config-{method}.yaml"
        path.write_text(textwrap.dedent(f"""\
            model: {{path: ridge.joblib, task: regression}}
            reference: {{path: train.csv}}
            features: {{numerical: [{', '.join(features)}]}}
            database_url: sqlite:///log.db
            drift: {{prediction: {{method: {method}}}}}
        """))
        return path

    line = refusal(config("chisquare"), monkeypatch)
    assert "drift.prediction.method" in line and "numerical" in line and "regression" in line, line
    assert "wasserstein" in line
    build(load_settings(config("psi")))  # accepted

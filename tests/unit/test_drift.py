"""drift.py against Evidently's own Report on the same data: same scores, same flags."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pandas as pd
import pytest
from evidently import DataDefinition, Dataset, Report
from evidently.metrics.column_statistics import ValueDriftCalculation
from evidently.presets import DataDriftPreset

from exporter.demo import CATEGORICAL, NUMERICAL, load_dataset
from exporter.drift import MethodOverride, Reference, compute_drift


def evidently_scores(
    ref: pd.DataFrame, cur: pd.DataFrame, num: list[str], cat: list[str], **preset_args: object
) -> dict[str, tuple[str, float, float]]:
    """{column: (method display name, score, threshold)} from Report([DataDriftPreset()]).

    No widget is built: the preset's render() (which recomputes every column for its dataset table) and each
    ValueDrift's plots are most of a run's cost, and nothing here reads them. The scores, methods and thresholds are
    those of the preset's per-column ValueDrift metrics, computed by the report as in a full run."""
    definition = DataDefinition(numerical_columns=num, categorical_columns=cat)
    with (
        mock.patch.object(DataDriftPreset, "render", lambda self, context, child_widgets=None: []),
        mock.patch.object(ValueDriftCalculation, "_render", lambda self, result, options, color_options: []),
    ):
        snapshot = Report([DataDriftPreset(**preset_args)]).run(  # type: ignore[arg-type]
            current_data=Dataset.from_pandas(cur[num + cat], data_definition=definition),
            reference_data=Dataset.from_pandas(ref[num + cat], data_definition=definition),
        )
    out = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            out[config["column"]] = (config["method"], float(metric["value"]), float(config["threshold"]))
    return out


def detected(method: str, score: float, threshold: float) -> bool:
    return score < threshold if "p_value" in method else score >= threshold


def assert_same_as_evidently(
    ref: pd.DataFrame, cur: pd.DataFrame, num: list[str], cat: list[str], **kw: object
) -> None:
    overrides = kw.pop("overrides", {})
    expected = evidently_scores(
        ref, cur, num, cat,
        per_column_method={k: v.method for k, v in overrides.items() if v.method} or None,  # type: ignore[attr-defined]
        per_column_threshold={  # type: ignore[attr-defined]
            k: v.threshold for k, v in overrides.items() if v.threshold is not None
        } or None,
    )
    result = compute_drift(Reference(ref, num, cat), cur, per_feature=overrides)  # type: ignore[arg-type]
    assert set(result.features) == set(expected)
    for name, (method, score, threshold) in expected.items():
        ours = result.features[name]
        assert ours.error is None, ours.error
        assert method in (ours.stat_test_display, ours.stat_test), name
        assert ours.score == pytest.approx(score, abs=1e-12, rel=0), name
        assert ours.threshold == threshold, name
        assert ours.detected == detected(method, score, threshold), name


def test_penguins_small_reference_stationary_and_shifted() -> None:
    ref = load_dataset()
    rng = np.random.default_rng(3)
    cur = ref.sample(600, replace=True, random_state=4).reset_index(drop=True)
    assert_same_as_evidently(ref, cur, NUMERICAL, CATEGORICAL)
    shifted = cur.copy()
    shifted["bill_length_mm"] += 4.0
    shifted.loc[rng.random(len(shifted)) < 0.5, "island"] = "Dream"
    assert_same_as_evidently(ref, shifted, NUMERICAL, CATEGORICAL)
    result = compute_drift(Reference(ref, NUMERICAL, CATEGORICAL), shifted)
    assert result.features["bill_length_mm"].detected is True
    assert result.features["island"].detected is True


def test_large_reference_uses_distance_tests_with_missing_values() -> None:
    rng = np.random.default_rng(7)
    n = 4000
    ref = pd.DataFrame({
        "a": rng.normal(0, 1, n), "b": rng.exponential(2, n), "c": rng.choice(["x", "y", "z"], n),
        "d": rng.integers(0, 4, n).astype(float),  # few distinct values: Evidently picks a categorical-style test
    })
    cur = pd.DataFrame({
        "a": rng.normal(0.5, 1, 2000), "b": rng.exponential(2, 2000),
        "c": rng.choice(["x", "y", "z"], 2000, p=[.6, .2, .2]),
        "d": rng.integers(0, 4, 2000).astype(float),
    })
    cur.loc[rng.random(2000) < 0.1, "b"] = np.nan
    assert_same_as_evidently(ref, cur, ["a", "b", "d"], ["c"])
    result = compute_drift(Reference(ref, ["a", "b", "d"], ["c"]), cur)
    assert result.features["a"].stat_test == "wasserstein"
    assert result.features["c"].stat_test == "jensenshannon"
    assert result.features["b"].missing_share == pytest.approx(float(cur["b"].isna().mean()))


def test_per_feature_method_and_threshold_override() -> None:
    ref = load_dataset()
    cur = ref.sample(500, replace=True, random_state=1).reset_index(drop=True)
    cur["body_mass_g"] *= 1.05
    overrides = {"body_mass_g": MethodOverride("psi", 0.05), "island": MethodOverride(None, 0.2)}
    assert_same_as_evidently(ref, cur, NUMERICAL, CATEGORICAL, overrides=overrides)
    result = compute_drift(Reference(ref, NUMERICAL, CATEGORICAL), cur, per_feature=overrides)
    assert result.features["body_mass_g"].stat_test == "psi"
    assert result.features["island"].threshold == 0.2


def test_dataset_drift_share_and_min_rows() -> None:
    ref = load_dataset()
    reference = Reference(ref, NUMERICAL, CATEGORICAL)
    small = compute_drift(reference, ref.head(50), min_rows=100)
    assert small.skipped_reason and small.window_rows == 50 and not small.features
    cur = ref.sample(400, replace=True, random_state=2).reset_index(drop=True)
    for col in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm"):
        cur[col] = cur[col] * 1.3
    result = compute_drift(reference, cur, min_rows=100, drift_share=0.5)
    assert result.drifted_features == 3
    assert result.drift_share == pytest.approx(0.5)
    assert result.dataset_drift is True
    assert compute_drift(reference, cur, drift_share=0.6).dataset_drift is False


def test_unseen_values_and_broken_feature_do_not_hide_others() -> None:
    ref = load_dataset()
    reference = Reference(ref, NUMERICAL, CATEGORICAL)
    cur = ref.sample(200, replace=True, random_state=5).reset_index(drop=True)
    cur.loc[:49, "island"] = "Atlantis"          # a category never seen in training
    cur.loc[:19, "flipper_length_mm"] = 1000.0   # outside the reference range
    cur["sex"] = None                             # all missing
    result = compute_drift(reference, cur)
    assert result.features["island"].unseen_share == pytest.approx(0.25)
    assert result.features["flipper_length_mm"].unseen_share == pytest.approx(0.10)
    assert result.features["sex"].missing_share == 1.0
    assert result.features["sex"].detected is None and result.features["sex"].error
    assert result.features["bill_length_mm"].detected is not None
    assert len(result.evaluated) == 5


def test_fast_paths_match_evidently_with_ties_ints_and_threshold_override() -> None:
    rng = np.random.default_rng(11)
    n = 5000
    ref = pd.DataFrame({
        "rounded": rng.normal(10, 2, n).round(1),          # many ties: the merge-based CDF must match scipy's
        "ints": rng.integers(0, 50, n).astype(float),
        "few": rng.choice([1.0, 2.0, 3.0], n),             # few distinct numbers: Jensen-Shannon path
        "cat": rng.choice(list("abcdefgh"), n),
    })
    cur = pd.DataFrame({
        "rounded": rng.normal(10.3, 2, 3000).round(1),
        "ints": rng.integers(0, 55, 3000).astype(float),
        "few": rng.choice([1.0, 2.0, 3.0, 4.0], 3000),     # a value never seen in the reference
        "cat": rng.choice(list("abcdefghz"), 3000),
    })
    num, cat = ["rounded", "ints", "few"], ["cat"]
    assert_same_as_evidently(ref, cur, num, cat)
    overrides = {"rounded": MethodOverride(None, 0.01), "cat": MethodOverride(None, 0.5)}
    assert_same_as_evidently(ref, cur, num, cat, overrides=overrides)
    result = compute_drift(Reference(ref, num, cat), cur, per_feature=overrides)
    assert result.features["rounded"].stat_test == "wasserstein" and result.features["rounded"].threshold == 0.01
    assert result.features["few"].stat_test == "jensenshannon"

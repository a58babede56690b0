"""Feature importance (exporter.importance) on a population whose truth is known: the label depends on x1 strongly,
on the category c and x2 less, on x3 not at all."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from exporter.importance import setup, source_feature

FEATURES = ["x1", "x2", "x3", "c"]
ORDER = ["x1", "c", "x2", "x3"]  # the truth, strongest first


def population(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    frame = pd.DataFrame({"x1": rng.normal(0, 1, rows), "x2": rng.normal(5, 10, rows),  # x2 unscaled: sd 10
                          "x3": rng.normal(0, 1, rows), "c": rng.choice(["a", "b", "c"], rows)})
    logit = 3.0 * frame["x1"] + 0.08 * (frame["x2"] - 5) + frame["c"].map({"a": -1.5, "b": 0.0, "c": 1.5})
    frame["y"] = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    frame["v"] = 3.0 * frame["x1"] + 0.08 * frame["x2"] + frame["c"].map({"a": -1.5, "b": 0.0, "c": 1.5}) \
        + rng.normal(0, 0.5, rows)
    return frame


def pipeline(final: object) -> Pipeline:
    pre = ColumnTransformer([("num", StandardScaler(), ["x1", "x2", "x3"]),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), ["c"])])
    return Pipeline([("pre", pre), ("model", final)])


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    return population(4000, rng), population(8000, rng)  # training rows, reference rows (held out)


def ranking(values: dict[str, float]) -> list[str]:
    return sorted(values, key=lambda f: -values[f])


@pytest.mark.parametrize("final", [LogisticRegression(max_iter=2000), GradientBoostingClassifier(random_state=0)],
                         ids=["logistic", "boosting"])
def test_permutation_importance_ranks_the_features_as_the_truth(data: tuple[pd.DataFrame, pd.DataFrame],
                                                                final: object) -> None:
    train, reference = data
    model = pipeline(final).fit(train[FEATURES], train["y"])
    got = setup(model, "classification", FEATURES, reference, "y").compute()
    assert got is not None and got.method == "permutation" and got.rows == 5000  # bounded: 8000 sampled to 5000
    assert ranking(got.values) == ORDER, got.values
    assert abs(got.values["x3"]) < 0.005 < got.values["x2"], got.values


def test_permutation_importance_of_a_regressor() -> None:
    rng = np.random.default_rng(1)
    train, reference = population(3000, rng), population(3000, rng)
    model = pipeline(GradientBoostingRegressor(random_state=0)).fit(train[FEATURES], train["v"])
    got = setup(model, "regression", FEATURES, reference, "v").compute()
    assert got is not None and ranking(got.values) == ORDER, got.values


def test_native_importance_maps_scaled_and_one_hot_columns_back(data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, reference = data
    for final in (LogisticRegression(max_iter=2000), GradientBoostingClassifier(random_state=0)):
        model = pipeline(final).fit(train[FEATURES], train["y"])
        got = setup(model, "classification", FEATURES, reference, None).compute()
        assert got is not None and got.method == "native" and set(got.values) == set(FEATURES)
        assert ranking(got.values) == ORDER, (type(final).__name__, got.values)
    # without a pipeline: |coef| times the raw column's sd, so x2's unscaled sd of 10 is not mistaken for weakness
    bare = LogisticRegression(max_iter=5000).fit(train[["x1", "x2", "x3"]], train["y"])
    got = setup(bare, "classification", ["x1", "x2", "x3"], reference, None).compute()
    assert got is not None and ranking(got.values) == ["x1", "x2", "x3"], got.values


def test_a_model_without_importances_has_none(data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    train, reference = data
    model = pipeline(KNeighborsClassifier()).fit(train[FEATURES], train["y"])
    assert setup(model, "classification", FEATURES, reference, None).compute() is None


def test_source_feature_takes_the_longest_name() -> None:
    names = ["island", "island_size", "x"]
    assert source_feature("cat__island_size_big", names) == "island_size"
    assert source_feature("cat__island_Dream", names) == "island"
    assert source_feature("num__x", names) == "x"
    assert source_feature("num__y", names) is None

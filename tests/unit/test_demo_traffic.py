"""The demo's traffic: fresh rows of the reference's population (never the reference replayed), and scenarios that
change exactly what they say on top of them."""

from __future__ import annotations

import argparse
import json
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest

from exporter.cli import build_parser
from exporter.demo import CATEGORICAL, NULLABLE, NUMERICAL, SCENARIOS, TARGET, Traffic, load_dataset

N = 20_000


@cache
def reference() -> pd.DataFrame:
    return load_dataset()


@cache
def drawn(scenario: str, seed: int = 11) -> pd.DataFrame:
    """A large sample of a scenario's traffic, with the true species as a column."""
    records, labels = Traffic(scenario, seed=seed, reference=reference()).records(N)
    return pd.DataFrame(records, columns=NUMERICAL + CATEGORICAL).assign(**{TARGET: labels})


def within_group_corr(frame: pd.DataFrame, a: str, b: str) -> pd.Series:
    return frame.groupby([TARGET, "sex"])[[a, b]].apply(lambda g: g[a].corr(g[b]))


def test_scenarios_are_the_public_contract_and_listed_in_the_cli_help() -> None:
    assert SCENARIOS == ("none", "shift", "small-shift", "categories", "missing", "correlation")
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    option = next(a for a in commands.choices["simulate"]._actions if "--scenario" in a.option_strings)
    assert f"one of: {', '.join(SCENARIOS)} " in str(option.help)
    with pytest.raises(ValueError, match="unknown scenario 'sideways'"):
        Traffic("sideways")


def test_none_has_the_reference_marginals_and_correlations() -> None:
    ref, got = reference(), drawn("none")
    for name in NUMERICAL:
        sd = ref[name].std()
        se = sd / np.sqrt(N)  # the population mean is the reference's: only the sample's error counts
        assert abs(got[name].mean() - ref[name].mean()) < 4 * se, name
        assert got[name].std() == pytest.approx(sd, rel=0.03), name
    corr_ref, corr_got = ref[NUMERICAL].corr(), got[NUMERICAL].corr()
    assert corr_got.loc["bill_length_mm", "flipper_length_mm"] == pytest.approx(0.65, abs=0.03)
    assert np.abs(corr_got - corr_ref).to_numpy().max() < 0.03
    for name in CATEGORICAL + [TARGET]:
        shares_ref = ref[name].value_counts(normalize=True)
        shares_got = got[name].value_counts(normalize=True).reindex(shares_ref.index, fill_value=0.0)
        tolerance = 4 * np.sqrt(shares_ref * (1 - shares_ref) / N) + 0.002
        assert (np.abs(shares_got - shares_ref) < tolerance).all(), (name, shares_got, shares_ref)
    # the joint of the categories too: every species lives on its islands only
    assert set(got.groupby(TARGET)["island"].unique().explode()) <= set(ref["island"])
    assert set(map(tuple, got[[TARGET, "island"]].drop_duplicates().to_numpy())) == set(
        map(tuple, ref[[TARGET, "island"]].drop_duplicates().to_numpy()))


def test_none_draws_fresh_rows_rounded_like_the_data_not_the_reference_replayed() -> None:
    ref, got = reference(), drawn("none")
    known = set(map(tuple, ref[NUMERICAL].to_numpy()))
    replayed = np.mean([tuple(row) in known for row in got[NUMERICAL].to_numpy()])
    assert replayed < 0.01
    assert got[NUMERICAL].drop_duplicates().shape[0] > 0.95 * N
    assert (got["body_mass_g"] % 25 == 0).all()  # the data's 25 g steps
    assert (got["flipper_length_mm"] % 1 == 0).all()
    for name in ("bill_length_mm", "bill_depth_mm"):
        assert np.allclose(got[name] * 10, np.round(got[name] * 10))
    assert got[NUMERICAL + CATEGORICAL].notna().all().all()  # the demo reference has no missing values


def test_records_are_plain_json_values_and_the_label_is_the_drawn_species() -> None:
    records, labels = Traffic("missing", seed=5).records(200)
    assert len(records) == len(labels) == 200
    json.dumps(records)
    for record in records:
        assert list(record) == NUMERICAL + CATEGORICAL
        assert all(type(record[k]) is float or (k in NULLABLE and record[k] is None) for k in NUMERICAL)
        assert all(type(record[k]) is str or (k in NULLABLE and record[k] is None) for k in CATEGORICAL)
    assert all(type(label) is str for label in labels)
    assert set(labels) == set(reference()[TARGET])
    # the label goes with the row: Gentoo are the heavy ones
    frame = pd.DataFrame(records).assign(species=labels)
    assert frame.groupby("species")["body_mass_g"].mean().idxmax() == "Gentoo"


def test_seeded_traffic_is_deterministic() -> None:
    for scenario in SCENARIOS:
        assert Traffic(scenario, seed=3).records(50) == Traffic(scenario, seed=3).records(50)
    assert Traffic("none", seed=3).records(50) != Traffic("none", seed=4).records(50)


class CountingRng:
    """A numpy Generator that records every draw: (method, number of values drawn)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.draws: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.rng, name)

        def draw(*args: Any, **kwargs: Any) -> Any:
            out = method(*args, **kwargs)
            self.draws.append((name, int(np.size(out))))
            return out

        return draw


def test_records_are_drawn_in_numpy_blocks_not_row_by_row() -> None:
    """What makes a thousand records cost milliseconds: each call of ``records`` draws every random value of its
    rows in a fixed number of numpy calls, whatever the number of rows, instead of once per row."""
    for scenario in SCENARIOS:
        traffic = Traffic(scenario, seed=1)
        calls = {}
        for n in (7, 1000):
            traffic.rng = CountingRng(np.random.default_rng(1))  # type: ignore[assignment]
            records, labels = traffic.records(n)
            assert len(records) == len(labels) == n
            draws = traffic.rng.draws  # type: ignore[attr-defined]
            assert draws and all(size % n == 0 and size >= n for _, size in draws), (scenario, n, draws)
            calls[n] = [name for name, _ in draws]
        assert calls[7] == calls[1000], (scenario, calls)


def test_the_reference_missing_rate_is_kept() -> None:
    ref = reference().copy()
    rng = np.random.default_rng(0)
    ref.loc[rng.random(len(ref)) < 0.2, "bill_depth_mm"] = np.nan
    ref.loc[rng.random(len(ref)) < 0.1, "sex"] = np.nan
    records, _ = Traffic("none", seed=2, reference=ref).records(N)
    got = pd.DataFrame(records)
    for name in ("bill_depth_mm", "sex"):
        rate = ref[name].isna().mean()
        assert abs(got[name].isna().mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / N) + 0.005, name
    required = [c for c in NUMERICAL + CATEGORICAL if c not in NULLABLE]
    assert got[required].notna().all().all()


@pytest.mark.parametrize(("scenario", "sds"), [("shift", 2.0), ("small-shift", 0.1)])
def test_shift_moves_bill_length_alone(scenario: str, sds: float) -> None:
    base, got = drawn("none"), drawn(scenario)
    sd = reference()["bill_length_mm"].std()
    # the same seed draws the same rows: the difference is the shift itself, up to rounding
    assert (got["bill_length_mm"] - base["bill_length_mm"]).mean() == pytest.approx(sds * sd, abs=0.06)
    pd.testing.assert_frame_equal(got.drop(columns="bill_length_mm"), base.drop(columns="bill_length_mm"))
    assert np.allclose(got["bill_length_mm"] * 10, np.round(got["bill_length_mm"] * 10))


def test_categories_and_missing_change_what_they_say_on_the_same_fresh_rows() -> None:
    ref, base = reference(), drawn("none")
    categories = drawn("categories")
    torgersen = 0.8 + 0.2 * (ref["island"] == "Torgersen").mean()
    assert (categories["island"] == "Torgersen").mean() == pytest.approx(torgersen, abs=0.015)
    pd.testing.assert_frame_equal(categories.drop(columns="island"), base.drop(columns="island"))
    missing = drawn("missing")
    for name in NULLABLE:
        assert missing[name].isna().mean() == pytest.approx(0.3, abs=0.015)
        kept = missing[name].notna()
        assert missing.loc[kept, name].equals(base.loc[kept, name])
    pd.testing.assert_frame_equal(missing.drop(columns=NULLABLE), base.drop(columns=NULLABLE))


def test_correlation_keeps_every_marginal_and_flips_the_joint() -> None:
    base, got = drawn("none"), drawn("correlation", seed=12)
    for name in NUMERICAL:
        sd = base[name].std()
        assert abs(got[name].mean() - base[name].mean()) < 4 * sd * np.sqrt(2 / N), name
        assert got[name].std() == pytest.approx(sd, rel=0.03), name
    for name in CATEGORICAL + [TARGET]:
        shares = base[name].value_counts(normalize=True)
        assert np.abs(got[name].value_counts(normalize=True).reindex(shares.index) - shares).max() < 0.02, name
    # the within-group correlation of bill length and depth changes sign, the others stay
    before = within_group_corr(base, "bill_length_mm", "bill_depth_mm")
    after = within_group_corr(got, "bill_length_mm", "bill_depth_mm")
    assert before.mean() > 0.15 and after.mean() < -0.15, (before, after)
    assert (np.sign(after[before.abs() > 0.1]) == -np.sign(before[before.abs() > 0.1])).all()
    kept = within_group_corr(got, "flipper_length_mm", "body_mass_g")
    assert np.abs(kept - within_group_corr(base, "flipper_length_mm", "body_mass_g")).max() < 0.1
    overall = base[NUMERICAL].corr().loc["bill_length_mm", "bill_depth_mm"]
    assert got[NUMERICAL].corr().loc["bill_length_mm", "bill_depth_mm"] < overall - 0.04


def test_a_flip_that_is_not_a_valid_covariance_is_shrunk_until_it_is() -> None:
    from exporter.demo.population import Gaussian

    # with 0.6 between the others, correlations of 0 and 1 below -0.28 are impossible: -0.6 is shrunk to about that
    corr = np.array([[1.0, 0.6, 0.6], [0.6, 1.0, 0.6], [0.6, 0.6, 1.0]])
    flipped = Gaussian.of(np.zeros(3), corr * 4.0).with_covariance(0, 1, -1.0)
    assert np.all(np.linalg.eigvalsh(flipped.cov) > 0)
    assert np.allclose(np.diag(flipped.cov), 4.0)  # the marginals stay
    assert -0.28 * 4.0 < flipped.cov[0, 1] < -0.25 * 4.0
    assert flipped.cov[0, 2] == flipped.cov[1, 2] == 0.6 * 4.0

"""Drift per segment (exporter.segments) on populations whose truth is known: fresh rows for "no drift", a shift
confined to one segment, the budget shared by the segments, the cardinality cap and segments too small to judge."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from exporter.drift import DriftResult, Reference, compute_drift
from exporter.metrics import drift_families
from exporter.segments import OTHER, SegmentReference, SegmentSpec

NUMERICAL, CATEGORICAL = ["x1", "x2"], ["c", "k"]
SEGMENT_SHARES = {"a": 0.4, "b": 0.2, "c": 0.2, "d": 0.1, "e": 0.1}


def draw(rows: int, rng: np.random.Generator, *, shift: float = 0.0, shifted: str | None = None,
         levels: dict[str, float] | None = None) -> pd.DataFrame:
    """Fresh rows of one population: x1 ~ N(segment mean, 1), x2 ~ N(0, 1), k 3 levels; ``shift`` moves x1 by that
    many sd in segment ``shifted`` (every segment when None and shift != 0)."""
    shares = levels or SEGMENT_SHARES
    c = rng.choice(list(shares), size=rows, p=list(shares.values()))
    means = {v: 0.3 * i for i, v in enumerate(shares)}
    x1 = np.array([means[v] for v in c]) + rng.normal(size=rows)
    if shift:
        x1 = x1 + shift * ((c == shifted) if shifted is not None else 1.0)
    return pd.DataFrame({"x1": x1, "x2": rng.normal(size=rows), "c": c,
                         "k": rng.choice(["p", "q", "r"], size=rows, p=[0.5, 0.3, 0.2])})


def setup(rows: int = 5000, seed: int = 0, **spec: int) -> tuple[Reference, SegmentReference]:
    reference = Reference(draw(rows, np.random.default_rng([seed, 1])), NUMERICAL, CATEGORICAL,
                          multivariate_method="pca_reconstruction")
    return reference, SegmentReference(reference, SegmentSpec(("c",), **spec))


def test_a_shift_confined_to_a_small_segment_is_found_there_and_hides_in_the_pool() -> None:
    reference, segments = setup()
    alpha = 2.3e-7  # the default budget's per-run alpha
    window = draw(3000, np.random.default_rng(7), shift=1.0, shifted="e")  # e: 10 % of the rows
    pooled = compute_drift(reference, window, alpha=alpha)
    assert not pooled.features["x1"].detected
    judged = segments.judge(window, alpha)
    found = {(s.segment, f) for s in judged for f in s.drifted}
    assert found == {("e", "x1")}
    # plain bools, as the stored run's JSON needs (a numpy bool from a Wasserstein comparison is not JSON)
    verdicts = [f.detected for s in judged for f in s.features.values()] + [
        f.detected for f in pooled.features.values()]
    assert {type(v) for v in verdicts} == {bool}


def test_the_segmenting_feature_is_not_tested_in_its_own_segments() -> None:
    _, segments = setup()
    judged = [s for s in segments.judge(draw(3000, np.random.default_rng(3)), 2.3e-7) if not s.too_small]
    assert judged and all(set(s.features) == {"x1", "x2", "k"} for s in judged)


def test_segments_share_the_features_budget() -> None:
    """Stationary traffic at a per-run alpha large enough to count: a feature's false segment flags per run,
    summed over its segments, stay within alpha (the union bound), and each segment's test gets alpha / 5."""
    alpha = 0.05
    runs, flags = 0, {name: 0 for name in ("x1", "x2", "k")}
    for seed in range(4):
        _, segments = setup(seed=seed)
        assert segments.alpha("x1", alpha) == pytest.approx(alpha / 5)
        rng = np.random.default_rng([seed, 2])
        for _ in range(40):
            runs += 1
            for seg in segments.judge(draw(3000, rng), alpha):
                for name in seg.drifted:
                    flags[name] += 1
    for name, count in flags.items():
        # at most alpha per run: more than the 99.9 % Poisson bound of alpha * runs is a budget overrun
        assert count <= stats.poisson.ppf(0.999, alpha * runs), (name, count, runs)


def test_a_shift_of_every_segment_is_found_by_the_pooled_test_too() -> None:
    reference, segments = setup()
    window = draw(3000, np.random.default_rng(11), shift=0.3)
    assert compute_drift(reference, window, alpha=2.3e-7).features["x1"].detected


def test_segments_below_min_rows_are_reported_too_small_without_a_verdict() -> None:
    reference, segments = setup(min_rows=200)
    window = draw(1000, np.random.default_rng(5))  # d and e: ~100 rows each
    result = segments.judge(window, 2.3e-7)
    small = {s.segment for s in result if s.too_small}
    assert {"d", "e"} <= small and "a" not in small
    assert all(not s.features for s in result if s.too_small)
    drift = compute_drift(reference, window, alpha=2.3e-7)
    published = DriftResult.from_dict({**drift.to_dict(), "segments": [s.__dict__ | {
        "features": {k: v.__dict__ for k, v in s.features.items()}} for s in result]})
    samples = {(m.name, tuple(sorted(x.labels.items()))): x.value
               for m in drift_families(published) for x in m.samples}
    rows = {k: v for k, v in samples.items() if k[0] == "model_segment_window_rows"}
    assert {dict(k[1])["segment"] for k in rows} >= {"a", "d", "e"}
    verdicts = {dict(k[1])["segment"] for k in samples if k[0] == "model_segment_feature_drift_detected"}
    assert "a" in verdicts and not verdicts & small


def test_a_segment_feature_of_100_values_is_capped_at_max_segments_plus_other() -> None:
    levels = {f"v{i:03d}": 1.0 for i in range(100)}
    total = sum(levels.values())
    levels = {k: v / total for k, v in levels.items()}
    reference = Reference(draw(20_000, np.random.default_rng(1), levels=levels), NUMERICAL, CATEGORICAL,
                          multivariate_method="pca_reconstruction")
    segments = SegmentReference(reference, SegmentSpec(("c",), max_segments=20, min_rows=100))
    window = draw(3000, np.random.default_rng(2), levels=levels)
    window.loc[:9, "c"] = "never-seen"
    result = segments.judge(window, 2.3e-7)
    names = {s.segment for s in result}
    assert len(names) == 21 and OTHER in names
    other = next(s for s in result if s.segment == OTHER)
    assert other.window_rows == int((~window["c"].isin(segments.levels["c"])).sum())
    assert sum(s.window_rows for s in result) == len(window)  # every row in exactly one segment


# --- quality per segment --------------------------------------------------------------------------------------------


def labelled(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """The segment population with a binary label drawn from a calibrated model's probability: the model knows
    every cause (x1, x2 and the segment), so its calibration holds within each segment, whose accuracies differ."""
    frame = draw(rows, rng, levels={"a": 0.5, "b": 0.3, "c": 0.2})
    bonus = frame["c"].map({"a": 0.0, "b": 1.0, "c": -1.5}).to_numpy()
    p = 1 / (1 + np.exp(-(1.5 * frame["x1"].to_numpy() - frame["x2"].to_numpy() + bonus)))
    return frame.assign(p=p, y=np.where(rng.random(rows) < p, "1", "0"), prediction=np.where(p >= 0.5, "1", "0"))


def test_the_segment_estimate_is_unbiased_and_its_band_holds() -> None:
    """The honesty tests' standard per segment: over many windows, estimate minus realized averages about 0 and
    the realized value falls inside the 99 % band in at least 96.5 % of them (each segment's rows a window)."""
    from exporter.estimation import LABEL, PROBABILITIES, setup_from_reference
    from exporter.quality import quality

    rng = np.random.default_rng(21)
    ref = labelled(6000, rng)
    reference = Reference(ref, NUMERICAL, CATEGORICAL, multivariate_method="pca_reconstruction")
    segments = SegmentReference(reference, SegmentSpec(("c",), min_rows=200))
    setup = setup_from_reference("classification", ["0", "1"], ref, "y", ref["prediction"],
                                 [{"0": 1 - p, "1": p} for p in ref["p"]], NUMERICAL, CATEGORICAL)
    assert setup is not None
    diffs: dict[str, list[float]] = {"accuracy": [], "roc_auc": []}
    inside: dict[str, list[bool]] = {"accuracy": [], "roc_auc": []}
    for _ in range(60):
        window = labelled(2000, rng)
        rows = window.assign(**{PROBABILITIES: [{"0": 1 - p, "1": p} for p in window["p"]], LABEL: None})
        judged = segments.with_estimates(segments.judge(window, 2.3e-7), setup, rows)
        for seg in judged:
            if seg.too_small:
                continue
            part = window[window["c"] == seg.segment]
            truth = quality("classification", part["y"].tolist(), part["prediction"].tolist(),
                            [{"0": 1 - p, "1": p} for p in part["p"]], ["0", "1"]).metrics
            for m in diffs:
                band = seg.estimated[m]
                diffs[m].append(band["value"] - truth[m])
                inside[m].append(band["lower"] <= truth[m] <= band["upper"])
    for m in diffs:
        d = np.array(diffs[m])
        assert len(d) == 180, m  # 3 segments judged in each window
        bias, se = d.mean(), d.std(ddof=1) / np.sqrt(len(d))
        print(f"{m}: mean(estimate - realized) {bias:+.4f} (se {se:.4f}), in band {np.mean(inside[m]):.3f}")
        assert abs(bias) < max(4 * se, 0.003), (m, bias, se)
        assert np.mean(inside[m]) >= 0.965, (m, np.mean(inside[m]))


def test_realized_segment_quality_is_scikit_learns_on_the_segments_labelled_rows() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(4)
    ref = labelled(4000, rng)
    reference = Reference(ref, NUMERICAL, CATEGORICAL, multivariate_method="pca_reconstruction")
    segments = SegmentReference(reference, SegmentSpec(("c",), min_rows=200),
                                quality_of=lambda mask: {"accuracy": float(accuracy_score(ref["y"][mask],
                                                                                          ref["prediction"][mask]))})
    window = labelled(1500, rng)
    judged = segments.judge(window, 2.3e-7)
    got = segments.with_quality(judged, "classification", ["0", "1"], window["y"].tolist(),
                                window["prediction"].tolist(), None, window[["c", "x1"]].to_dict("records"))
    for seg in got:
        part = window[window["c"] == seg.segment]
        assert seg.quality_rows == len(part)
        assert seg.quality["accuracy"] == pytest.approx(accuracy_score(part["y"], part["prediction"]))
        assert seg.quality["f1_macro"] == pytest.approx(f1_score(part["y"], part["prediction"], average="macro"))
        mask = (ref["c"] == seg.segment).to_numpy()
        assert seg.quality_reference["accuracy"] == pytest.approx(accuracy_score(ref["y"][mask],
                                                                                 ref["prediction"][mask]))

"""Feature distributions published beside the drift scores: quantiles of numbers and shares of categories, in the
window and the reference, from the same run; bounded label sets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from exporter.drift import QUANTILES, Reference, compute_drift
from exporter.metrics import drift_families
from exporter.segments import SegmentReference, SegmentSpec


def frame(rows: int, rng: np.random.Generator, levels: int = 4) -> pd.DataFrame:
    out = pd.DataFrame({"x": rng.lognormal(0, 1, rows), "c": rng.choice([f"v{i}" for i in range(levels)], rows,
                                                                         p=np.arange(levels, 0, -1) / np.arange(
                                                                             levels, 0, -1).sum())})
    out.loc[rng.random(rows) < 0.05, "x"] = np.nan  # missing values are left out of the quantiles and shares
    return out


def samples(result: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(m.name, tuple(sorted(s.labels.items()))): s.value for m in drift_families(result) for s in m.samples}


def test_quantiles_are_numpys_and_shares_the_counts() -> None:
    rng = np.random.default_rng(0)
    ref, window = frame(4000, rng), frame(1500, rng)
    reference = Reference(ref, ["x"], ["c"], multivariate_method="pca_reconstruction")
    got = samples(compute_drift(reference, window, alpha=2.3e-7))
    for source, data in (("window", window), ("reference", ref)):
        expected = np.quantile(data["x"].dropna(), QUANTILES)
        for q, value in zip(QUANTILES, expected, strict=True):
            key = ("model_feature_quantile", (("feature", "x"), ("quantile", f"{q:g}"), ("source", source)))
            assert got[key] == pytest.approx(value, rel=1e-12), key
        counts = data["c"].value_counts()
        for category, count in counts.items():
            key = ("model_feature_category_share", (("category", category), ("feature", "c"), ("source", source)))
            assert got[key] == pytest.approx(count / counts.sum()), key


def test_a_1000_value_category_keeps_ten_values_and_other() -> None:
    rng = np.random.default_rng(1)
    ref, window = frame(20_000, rng, levels=1000), frame(3000, rng, levels=1000)
    window.loc[:99, "c"] = "never-seen"
    reference = Reference(ref, ["x"], ["c"], multivariate_method="pca_reconstruction")
    segments = SegmentReference(reference, SegmentSpec(("c",), max_segments=20, min_rows=1))
    result = compute_drift(reference, window, alpha=2.3e-7)
    got = samples(result)
    shares = {dict(labels)["category"]: v for (name, labels), v in got.items()
              if name == "model_feature_category_share" and dict(labels)["source"] == "window"}
    assert len(shares) == 11 and "__other__" in shares and "never-seen" not in shares
    top = ref["c"].value_counts().index[:10]
    assert set(shares) - {"__other__"} == set(top)
    assert shares["__other__"] == pytest.approx(1 - window["c"].isin(top).mean())
    assert sum(shares.values()) == pytest.approx(1.0)
    # the same distributions within segments, under the segment labels
    import dataclasses

    with_segments = dataclasses.replace(result, segments=segments.judge(window, 2.3e-7))
    seg = {labels for (name, labels) in samples(with_segments) if name == "model_segment_feature_quantile"}
    assert {dict(labels)["segment"] for labels in seg} <= {*segments.levels["c"], "__other__"}
    assert len(seg) == 21 * len(QUANTILES) * 2  # 21 segments x 5 quantiles x (window, reference)

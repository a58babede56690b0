"""Our expected ROC AUC against NannyML's way of computing it, on windows whose truth is known.

``python -m benchmarks.peers.auc_pairs`` prints the table of docs/peers.md ("Binary, estimated roc_auc").

CBPE estimates a window's ROC AUC from the calibrated probabilities alone. Ours
(``exporter.estimation.expected_auc``) is the expected concordant pairs over the expected positive-negative pairs,
E[C] / E[P N], a row never paired with itself, as the realized metric never pairs one. NannyML 0.13 draws the ROC
curve of the expected counts, which also pairs each row with itself (as a tie): numerator and denominator both gain
a sum of p (1 - p). Here the scores are perfectly calibrated (p is the true probability), the labels are drawn from
p, and each estimate is held against the realized AUC of the drawn labels.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from exporter.estimation import expected_auc

# (rows, slope, intercept) of the true logit a x + b, x standard normal: AUC 0.96 at a = 3, 0.76 at a = 1
CASES = ((5000, 3.0, -2.0), (5000, 1.0, 0.0), (1000, 3.0, -2.0), (500, 2.0, -1.0), (200, 2.0, -2.0),
         (200, 1.0, 1.0))


def self_paired_auc(p: np.ndarray) -> float:
    """NannyML's estimate: every row also paired with itself, ties counting half."""
    s = np.sort(p, kind="mergesort")
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos, neg = np.add.reduceat(s, starts), np.add.reduceat(1 - s, starts)
    below = np.cumsum(neg) - neg
    return float(((pos * below).sum() + 0.5 * (pos * neg).sum()) / (s.sum() * (1 - s).sum()))


def run(windows: int, seed: int = 0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    out = []
    for rows, a, b in CASES:
        ours, theirs = [], []
        while len(ours) < windows:
            p = 1 / (1 + np.exp(-(a * rng.normal(size=rows) + b)))
            y = rng.random(rows) < p
            if y.all() or not y.any():
                continue
            realized = roc_auc_score(y, p)
            ours.append(abs(expected_auc(p, p) - realized))
            theirs.append(abs(self_paired_auc(p) - realized))
        diff = np.subtract(ours, theirs)
        out.append({"rows": rows, "slope": a, "intercept": b, "ours": float(np.mean(ours)),
                    "self_paired": float(np.mean(theirs)), "difference": float(diff.mean()),
                    "difference_se": float(diff.std(ddof=1) / np.sqrt(windows))})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.auc_pairs", description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=2000, help="windows per case")
    args = parser.parse_args(argv)
    print("| rows | true logit | mean abs error, ours | NannyML's way | ours minus NannyML's (se) |")
    print("|---|---|---|---|---|")
    for r in run(args.windows):
        print(f"| {r['rows']} | {r['slope']:g} x {r['intercept']:+g} | {r['ours']:.6f} | {r['self_paired']:.6f} | "
              f"{r['difference']:+.1e} ({r['difference_se']:.0e}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

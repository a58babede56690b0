"""Calibrated drift thresholds: each feature's threshold is the score its stat test reaches under no drift with a
chosen small probability, for this reference and the window's row count.

The false-alarm budget is given in the terms users think in, expected false alerts per feature per month. A run
can only start an alert when it flags the feature, so the expected number of false alerts in a month is at most
(runs per month) x P(a run flags the feature under no drift): whatever the traffic rate and whatever the alert's
``for:``, a per-run false-flag probability of ``budget / runs per month`` keeps the expected false alerts within
the budget (the union bound; real rates are lower, since one alert spans several flagged runs).
"""

from __future__ import annotations

MONTH_SECONDS = 30 * 24 * 3600


def per_run_alpha(false_alerts_per_month: float, interval_seconds: float) -> float:
    """The per-run probability of a false flag that keeps the expected false alerts per month within budget."""
    runs_per_month = MONTH_SECONDS / interval_seconds
    return min(0.5, false_alerts_per_month / runs_per_month)

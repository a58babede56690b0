"""(d) CBPE under covariate shift, on populations whose truth is known (labels drawn from the true probabilities):
the shift-adapted calibration (exporter.shift) against the plain one, on fewer windows than
``python -m benchmarks.estimation_shift``, whose full tables are in docs/estimated-quality.md."""

from __future__ import annotations

from benchmarks.estimation_shift import RegressionWorld, World, compare


def test_shift_adapted_calibration_halves_the_error_and_its_band_holds_where_the_mix_moved() -> None:
    unshifted, shifted = compare(World(2), reference_rows=3000, window_rows=2000, references=2, windows=5,
                                 shifts=(0.0, 1.0))
    # Unshifted windows: the gate never fires, so the estimate is the plain CBPE's, bit for bit (its bias is
    # held within +-0.001 by the honesty tests of test_estimation.py).
    assert unshifted["adapted_share"] == 0
    assert unshifted["plain"] == unshifted["adapted"]
    # Windows whose x3 (a cause the model does not see) moved by 1 sd: every one is recognised, the error is at least
    # halved, and the widened band holds the realized value where the plain band, label noise only, misses it.
    assert shifted["adapted_share"] == 1
    for metric in ("accuracy", "f1_macro"):
        plain, adapted = shifted["plain"][metric], shifted["adapted"][metric]
        assert adapted["mean_abs_error"] <= plain["mean_abs_error"] / 2, metric
        assert abs(adapted["bias"]) <= abs(plain["bias"]) / 2, metric
        assert adapted["in_band"] == 1, metric
    assert shifted["plain"]["accuracy"]["in_band"] < 0.9
    assert shifted["adapted"]["roc_auc"] == shifted["plain"]["roc_auc"]  # a rank metric: not adapted


def test_dle_loss_models_weighted_toward_a_shifted_window_move_toward_the_realized_error() -> None:
    (shifted,) = compare(RegressionWorld(), reference_rows=3000, window_rows=2000, references=1, windows=4,
                         shifts=(1.0,))
    assert shifted["adapted_share"] == 1
    for metric in ("mae", "rmse"):  # the error grows with |x3|: the plain DLE, fitted on the reference's mix, is low
        plain, adapted = shifted["plain"][metric], shifted["adapted"][metric]
        assert plain["bias"] < adapted["bias"] < 0, metric
        assert adapted["mean_abs_error"] < plain["mean_abs_error"] * 0.85, metric

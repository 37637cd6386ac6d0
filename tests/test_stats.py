"""Intervals on known cases (reference values from the closed forms)."""

import math

import pytest

from rm_exps.stats import accuracy_from_rate, accuracy_interval, mean_interval, paired_difference


def test_wilson_interval_of_8_of_10():
    est = accuracy_interval(8, 10)
    assert est.value == 0.8
    # Wilson: (p + z^2/2n ± z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.95996
    z = 1.959963984540054
    centre, denom = 0.8 + z**2 / 20, 1 + z**2 / 10
    spread = z * math.sqrt(0.8 * 0.2 / 10 + z**2 / 400)
    assert est.low == pytest.approx((centre - spread) / denom, abs=1e-9)
    assert est.high == pytest.approx((centre + spread) / denom, abs=1e-9)
    assert (round(est.low, 3), round(est.high, 3)) == (0.49, 0.943)


def test_wilson_interval_at_the_edges_stays_in_0_1_and_is_not_degenerate():
    all_right, all_wrong = accuracy_interval(10, 10), accuracy_interval(0, 10)
    assert all_right.high == pytest.approx(1.0) and all_right.low < 0.75
    assert all_wrong.low == pytest.approx(0.0) and all_wrong.high > 0.25
    assert accuracy_from_rate(0.8, 10) == accuracy_interval(8, 10)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="at least one pair"):
        accuracy_interval(0, 0)
    with pytest.raises(ValueError, match="between 0 and n"):
        accuracy_interval(11, 10)


def test_mean_interval_is_the_t_interval_of_the_mean():
    est = mean_interval([0.5, 0.7, 0.9])
    assert est.value == pytest.approx(0.7) and est.std == pytest.approx(0.2)
    half = 4.302652729911275 * 0.2 / math.sqrt(3)  # t(0.975, 2 dof)
    assert (est.low, est.high) == (pytest.approx(0.7 - half), pytest.approx(0.7 + half))


def test_one_value_has_no_interval():
    est = mean_interval([0.6])
    assert est.value == 0.6 and math.isnan(est.low) and "no interval" in str(est)


def test_difference_of_identical_runs_is_zero_with_zero_width():
    runs = {1: 0.8, 2: 0.6, 3: 0.7}
    est = paired_difference(runs, dict(runs))
    assert (est.value, est.low, est.high, est.n) == (0.0, 0.0, 0.0, 3)


def test_paired_difference_pairs_by_repetition():
    ex_rm = {1: 0.9, 2: 0.8, 3: 0.85, 4: 0.7}
    im_rm = {1: 0.6, 2: 0.5, 3: 0.55}  # repetition 4 missing: not paired
    est = paired_difference(ex_rm, im_rm)
    assert est.n == 3 and est.value == pytest.approx(0.3) and est.half_width == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="share no repetition"):
        paired_difference({1: 0.5}, {2: 0.5})

"""Export cost per expert: marginal costs of a linear cost are constant, a quadratic term is caught."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelopt_fork.bench.scaling import analyse

COUNTS = [8, 32, 128, 256]


@given(fixed=st.floats(0.0, 50.0), per=st.floats(1e-4, 1.0))
def test_linear_cost_is_within_and_recovered(fixed, per):
    s = analyse({e: fixed + per * e for e in COUNTS})
    assert s.within is True and s.trend == "flat"
    assert s.marginal_spread == pytest.approx(0.0, abs=1e-9)
    assert s.fit_slope_ms == pytest.approx(1000 * per, rel=1e-9)
    assert s.fit_fixed_s == pytest.approx(fixed, rel=1e-6, abs=1e-9)
    # the plain ratio falls with the count when there is a fixed part; the marginal cost does not
    if fixed > 1e-3:
        assert s.per_expert_ms[0] > s.per_expert_ms[-1]


def test_quadratic_term_is_caught():
    s = analyse({e: 1.0 + 0.01 * e + 1e-4 * e * e for e in COUNTS})
    assert s.within is False and s.marginal_spread > 0.2 and s.trend == "rising"
    assert s.marginal_ms[0] is None and s.marginal_ms[1] < s.marginal_ms[2] < s.marginal_ms[3]


def test_falling_marginal_cost_is_named():
    s = analyse({8: 1.0, 32: 1.5, 128: 2.5, 256: 3.0})
    assert s.trend == "falling" and s.within is False


def test_noise_within_the_tolerance_passes_and_beyond_fails():
    base = {e: 2.0 + 0.01 * e for e in COUNTS}
    assert analyse({**base, 256: base[256] * 1.02}).within is True
    assert analyse({**base, 256: base[256] * 1.5}).within is False


def test_too_few_points():
    with pytest.raises(ValueError, match="at least two"):
        analyse({8: 1.0})
    s = analyse({8: 1.0, 16: 2.0})
    assert s.within is None and s.notes

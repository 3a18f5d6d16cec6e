"""Fallback actions write into caller buffers and behave as named."""

import numpy as np
import pytest

from runtime.fallback import DecayToZero, HoldLast, SafePolicy, ZeroAction, make_fallback


def test_hold_repeats_the_last_action() -> None:
    out = np.zeros(2)
    HoldLast().fill(out, np.array([0.3, -0.2]), np.zeros(4))
    np.testing.assert_array_equal(out, [0.3, -0.2])


def test_decay_shrinks_geometrically_over_consecutive_fallbacks() -> None:
    fb = DecayToZero(0.5)
    last = np.array([1.0, -2.0])
    out = np.zeros(2)
    for _ in range(3):
        fb.fill(out, last, np.zeros(1))
        last = out.copy()
    np.testing.assert_allclose(out, [0.125, -0.25])


def test_zero_and_safe_policy() -> None:
    out = np.ones(2)
    ZeroAction().fill(out, np.ones(2), np.zeros(1))
    np.testing.assert_array_equal(out, 0.0)
    SafePolicy(lambda s: -2.0 * s[:2]).fill(out, np.ones(2), np.array([0.5, 1.0, 9.0]))
    np.testing.assert_array_equal(out, [-1.0, -2.0])


def test_unknown_fallback_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fallback 'brake'"):
        make_fallback("brake")

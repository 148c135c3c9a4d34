"""Tests for window weighting and offline overlap-add separation."""

import numpy as np
import pytest

from hybridsep_rt.overlap import OverlapAdd, reach_samples, separate_offline, window_weights


class WindowDependentSeparator:
    """Test double whose output for a sample depends on the whole window it sits in.

    Output = gain * tanh(x / level) * level, with ``level`` the window's RMS:
    the same sample comes out differently from different windows, so which
    windows contribute, and with what weights, shows in the result.
    """

    sample_rate = 1000

    def __init__(self, window_samples: int = 64):
        self.window_samples = window_samples
        self.calls = 0

    def separate(self, window: np.ndarray, condition: float) -> np.ndarray:
        assert window.shape[1] == self.window_samples and window.dtype == np.float32
        self.calls += 1
        level = float(np.sqrt(np.mean(window**2))) + 0.05
        return (condition * np.tanh(window / level) * level).astype(np.float32)


class IdentitySeparator:
    sample_rate = 1000

    def __init__(self, window_samples: int):
        self.window_samples = window_samples

    def separate(self, window, condition):
        return window.copy()


def brute_force(mixture, separator, condition, hop, lookahead):
    """Reference: for each window ending at k * hop, add it to the samples the rule allows."""
    channels, total = mixture.shape
    window = separator.window_samples
    reach = window if lookahead is None else min(window, hop + lookahead)
    weights = window_weights(window).astype(np.float64)
    weighted = np.zeros((channels, total))
    weight_sum = np.zeros(total)
    padded = np.concatenate([np.zeros((channels, window)), mixture, np.zeros((channels, window + hop))], axis=1)
    for end in range(hop, total + reach + 1, hop):
        chunk = padded[:, end : end + window].astype(np.float32)  # input [end - W, end)
        separated = separator.separate(chunk, condition).astype(np.float64)
        for i in range(window):
            n = end - window + i
            if 0 <= n < total and end - reach <= n:  # covers n and ends at most `reach` after it
                weighted[:, n] += weights[i] * separated[:, i]
                weight_sum[n] += weights[i]
    assert np.all(weight_sum > 0), "every sample must be covered"
    return weighted / weight_sum


def test_weights_are_positive_symmetric_and_centre_weighted():
    weights = window_weights(101)
    assert weights.dtype == np.float32 and weights.shape == (101,)
    assert np.all(weights > 0)
    np.testing.assert_allclose(weights, weights[::-1], rtol=1e-6)
    assert weights.argmax() == 50 and weights[0] < 0.01 * weights[50]


def test_reach():
    assert reach_samples(100, 25, None) == 100
    assert reach_samples(100, 25, 0) == 25
    assert reach_samples(100, 25, 30) == 55
    assert reach_samples(100, 25, 1000) == 100
    with pytest.raises(ValueError):
        reach_samples(100, 101, 0)
    with pytest.raises(ValueError):
        reach_samples(100, 25, -1)


@pytest.mark.parametrize("hop, lookahead", [(16, None), (16, 0), (16, 16), (16, 7), (64, 0), (5, 40), (40, 100)])
@pytest.mark.parametrize("total", [1, 63, 300])
def test_identity_separator_gives_back_the_input(hop, lookahead, total):
    mixture = np.random.default_rng(total).standard_normal((2, total)).astype(np.float32)
    out = separate_offline(mixture, IdentitySeparator(64), None, hop_samples=hop, lookahead_samples=lookahead)
    np.testing.assert_allclose(out, mixture, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hop, lookahead", [(16, None), (16, 0), (16, 16), (16, 9), (32, 32), (64, None)])
def test_offline_follows_the_contribution_rule(hop, lookahead):
    rng = np.random.default_rng(hop)
    mixture = (rng.standard_normal((2, 257)) * np.linspace(0.1, 2.0, 257)).astype(np.float32)
    separator = WindowDependentSeparator(64)
    out = separate_offline(mixture, separator, 0.7, hop_samples=hop, lookahead_samples=lookahead)
    expected = brute_force(mixture, separator, 0.7, hop, lookahead)
    assert out.shape == mixture.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_lookahead_changes_the_result_with_a_window_dependent_model():
    mixture = (np.random.default_rng(3).standard_normal((1, 400)) * np.linspace(0.1, 2.0, 400)).astype(np.float32)
    separator = WindowDependentSeparator(64)
    short = separate_offline(mixture, separator, 1.0, hop_samples=16, lookahead_samples=0)
    full = separate_offline(mixture, separator, 1.0, hop_samples=16)
    assert np.abs(short - full).max() > 1e-3


def test_remove_is_mixture_minus_extract():
    mixture = np.random.default_rng(4).standard_normal((2, 200)).astype(np.float32)
    separator = WindowDependentSeparator(64)
    target = separate_offline(mixture, separator, 0.5, "extract", hop_samples=16, lookahead_samples=16)
    removed = separate_offline(mixture, separator, 0.5, "remove", hop_samples=16, lookahead_samples=16)
    np.testing.assert_allclose(removed, mixture - target, atol=1e-6)
    with pytest.raises(ValueError):
        separate_offline(mixture, separator, 0.5, "louder", hop_samples=16)


def test_offline_calls_the_model_once_per_needed_window():
    separator = WindowDependentSeparator(64)
    separate_offline(np.zeros((1, 640), np.float32), separator, 1.0, hop_samples=32, lookahead_samples=0)
    assert separator.calls == 640 // 32  # windows ending at 32, 64, ..., 640


def test_overlap_add_pop_reports_uncovered_samples():
    ola = OverlapAdd(1, 8, 16)
    ola.add(np.full((1, 8), 2.0, np.float32), window_end=8, first=4)
    out = np.full((1, 6), 9.0, np.float32)
    assert ola.pop(6, out) == 4  # samples 0..3 were left out by `first`
    np.testing.assert_array_equal(out, [[0, 0, 0, 0, 2, 2]])
    assert ola.start == 6
    with pytest.raises(ValueError):
        ola.add(np.zeros((1, 8), np.float32), window_end=8, first=5)  # before `start`

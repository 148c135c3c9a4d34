"""The separation metrics against values computed by hand on tiny arrays."""

import math

import numpy as np
import pytest

from training.metrics import (
    DCASE_SDR_EPS,
    clap_score,
    clap_score_a,
    frechet_distance,
    oracle_irm,
    sdr,
    sdri,
    si_sdr,
)

REFERENCE = np.array([1.0, -1.0, 1.0, -1.0])  # mean power 1, zero mean
ORTHOGONAL = 0.1 * np.array([1.0, 1.0, -1.0, -1.0])  # zero mean, orthogonal to REFERENCE, mean power 0.01


def test_sdr_of_known_noise():
    assert sdr(REFERENCE, REFERENCE + ORTHOGONAL) == pytest.approx(20.0)
    assert sdr(REFERENCE, REFERENCE + 0.1) == pytest.approx(20.0)  # a constant offset is distortion too


def test_sdr_uses_the_dcase_epsilon():
    assert sdr(REFERENCE, REFERENCE) == pytest.approx(10 * math.log10(1.0 / DCASE_SDR_EPS))
    assert sdr(np.zeros(4), np.zeros(4)) == pytest.approx(0.0)


def test_scaling_changes_sdr_but_not_si_sdr():
    estimate = REFERENCE + ORTHOGONAL
    scaled = 3.0 * estimate
    assert si_sdr(REFERENCE, estimate) == pytest.approx(20.0)
    assert si_sdr(REFERENCE, scaled) == pytest.approx(20.0)
    # error of the scaled estimate: 2 * REFERENCE + 3 * ORTHOGONAL, mean power 4 + 0.09
    assert sdr(REFERENCE, scaled) == pytest.approx(10 * math.log10(1.0 / 4.09))
    assert sdr(REFERENCE, 0.5 * REFERENCE) == pytest.approx(10 * math.log10(1.0 / 0.25))


def test_si_sdr_ignores_a_dc_offset():
    estimate = REFERENCE + ORTHOGONAL
    assert si_sdr(REFERENCE, estimate + 5.0) == pytest.approx(si_sdr(REFERENCE, estimate))
    assert si_sdr(REFERENCE + 2.0, estimate) == pytest.approx(si_sdr(REFERENCE, estimate))


def test_sdri():
    mixture = REFERENCE + 10 * ORTHOGONAL  # error power 1: SDR 0 dB
    estimate = REFERENCE + ORTHOGONAL  # 20 dB
    assert sdri(REFERENCE, mixture, mixture) == 0.0
    assert sdri(REFERENCE, estimate, mixture) == pytest.approx(20.0)


def test_signal_metrics_check_shapes():
    with pytest.raises(ValueError, match="one length"):
        sdr(REFERENCE, REFERENCE[:3])
    with pytest.raises(ValueError, match="1-D"):
        si_sdr(REFERENCE[None], REFERENCE[None])


def test_clap_scores_are_cosines_times_100():
    assert clap_score(np.array([1.0, 0.0]), np.array([3.0, 3.0])) == pytest.approx(100 / math.sqrt(2))
    assert clap_score_a(np.array([0.0, 2.0]), np.array([0.0, 0.5])) == pytest.approx(100.0)
    batch = clap_score(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [-1.0, 0.0]]))
    np.testing.assert_allclose(batch, [0.0, -100.0])
    with pytest.raises(ValueError, match="shape"):
        clap_score(np.ones(3), np.ones(4))


def test_frechet_distance_of_identical_sets_is_zero():
    embeddings = np.random.default_rng(0).standard_normal((200, 8))
    assert frechet_distance(embeddings, embeddings) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_shifted_means_is_the_squared_shift():
    embeddings = np.random.default_rng(1).standard_normal((200, 8))
    shift = np.arange(8) / 4.0
    assert frechet_distance(embeddings, embeddings + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_frechet_distance_of_scaled_covariance():
    # S_b = 4 S_a: Tr(S + 4 S - 2 (4 S^2)^(1/2)) = Tr(S)
    embeddings = np.random.default_rng(2).standard_normal((300, 6)) @ np.diag([1.0, 2.0, 0.5, 1.0, 3.0, 1.5])
    scaled = 2.0 * embeddings
    covariance = np.cov(embeddings, rowvar=False)
    shift = embeddings.mean(axis=0)  # the means differ by one mean
    expected = float(shift @ shift + np.trace(covariance))
    assert frechet_distance(embeddings, scaled) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_refuses_too_few_embeddings():
    few = np.random.default_rng(3).standard_normal((16, 16))
    many = np.random.default_rng(4).standard_normal((100, 16))
    with pytest.raises(ValueError, match=r"N=16 embeddings of size D=16"):
        frechet_distance(few, many)
    with pytest.raises(ValueError, match=r"N=16 embeddings of size D=16"):
        frechet_distance(many, few)


def _two_sources(rate=8000, seconds=1.0):
    rng = np.random.default_rng(5)
    time = np.arange(int(rate * seconds)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * time) * (time < 0.6)
    noise = 0.3 * rng.standard_normal(time.shape)
    return tone, noise


def test_oracle_irm_beats_the_mixture_by_far():
    tone, noise = _two_sources()
    mixture = tone + noise
    estimate = oracle_irm(mixture, tone, n_fft=512, hop=128)
    assert estimate.shape == mixture.shape and estimate.dtype == np.float32
    assert sdr(tone, mixture) < 2.0
    assert sdri(tone, estimate, mixture) > 15.0


def test_oracle_irm_reconstructs_a_lone_target():
    tone, _ = _two_sources()
    np.testing.assert_allclose(oracle_irm(tone, tone, n_fft=512, hop=128), tone, atol=1e-6)
    np.testing.assert_allclose(oracle_irm(tone, np.zeros_like(tone), n_fft=512, hop=128), 0.0, atol=1e-12)


def test_oracle_irm_needs_an_invertible_hop():
    tone, noise = _two_sources()
    with pytest.raises(ValueError, match="hop"):
        oracle_irm(tone + noise, tone, n_fft=512, hop=512)

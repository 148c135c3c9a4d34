"""Separation metrics of the paper's Table 2 (section 3.3) and the oracle ideal-ratio-mask baseline (numpy).

Signal metrics take mono waves of shape (samples,); embedding metrics take CLAP embeddings of shape (D,)
or (B, D).

- `sdr`, `sdri`: the DCASE 2024 task 9 (LASS) SDR and its improvement over the mixture; they live in
  `hybridsep_rt.metrics` (numpy only, so the runtime scores with them too) and are re-exported here.
- `si_sdr`: scale-invariant SDR of Le Roux et al. (2019), on zero-mean signals.
- `clap_score`, `clap_score_a`: cosine similarity x 100 of a separated audio embedding with the query's
  text embedding (CLAPScore, Xiao et al., paper reference [6]) or with the target's audio embedding
  (CLAPScore_A, paper section 3.3).
- `frechet_distance`: the Frechet distance between two sets of embeddings (FAD, paper reference [7]).
- `oracle_irm`: the ideal ratio mask computed from the true sources, the "Oracle IRM" upper bound.
- `oracle_gain`: the mixture at the one scalar gain that is best for it (an oracle volume knob), a query-blind
  baseline: what a separator that only turns the mixture up or down could reach.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.signal import ShortTimeFFT, get_window

from hybridsep_rt.metrics import DCASE_SDR_EPS, power_ratio_db, sdr, sdri, wave_pair

__all__ = ["DCASE_SDR_EPS", "sdr", "sdri", "si_sdr", "clap_score", "clap_score_a", "frechet_distance", "oracle_irm",
           "oracle_gain"]

# Table 2 of the paper reports CLAPScore and CLAPScore_A as cosine similarities times 100.
CLAP_SCORE_SCALE = 100.0
# Offset added to both covariance diagonals when their product has no finite square root.
FRECHET_DIAGONAL_OFFSET = 1e-6
# Largest imaginary part of the covariance square root's diagonal that counts as rounding noise.
FRECHET_MAX_IMAGINARY = 1e-3


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR in dB (Le Roux et al., "SDR - half-baked or well done?", 2019).

    Both signals are made zero-mean; the reference is scaled by the least-squares factor
    alpha = <s_hat, s> / ||s||^2, and the ratio is ||alpha s||^2 / ||s_hat - alpha s||^2.
    """
    reference, estimate = wave_pair(reference, estimate)
    reference = reference - reference.mean()
    estimate = estimate - estimate.mean()
    reference_energy = float(np.dot(reference, reference))
    alpha = float(np.dot(estimate, reference)) / reference_energy if reference_energy > 0.0 else 0.0
    projection = alpha * reference
    return power_ratio_db(np.mean(projection**2), np.mean((estimate - projection) ** 2))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (1, 2):
        raise ValueError(f"embeddings must both be (D,) or (B, D) of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cosine = np.sum(a * b, axis=-1) / np.maximum(norms, np.finfo(np.float64).tiny)
    return float(cosine) if cosine.ndim == 0 else cosine


def clap_score(audio_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray | float:
    """CLAPScore x 100: cosine between separated-audio and query-text embeddings, (D,) -> float, (B, D) -> (B,)."""
    return CLAP_SCORE_SCALE * _cosine(audio_emb, text_emb)


def clap_score_a(sep_emb: np.ndarray, target_emb: np.ndarray) -> np.ndarray | float:
    """CLAPScore_A x 100: cosine between separated-audio and target-audio embeddings."""
    return CLAP_SCORE_SCALE * _cosine(sep_emb, target_emb)


def _mean_and_covariance(embeddings: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2:
        raise ValueError(f"{name} must be (N, D) embeddings, got shape {embeddings.shape}")
    count, size = embeddings.shape
    if count <= size:
        raise ValueError(
            f"FAD needs more embeddings than dimensions for a full-rank covariance: {name} has N={count} "
            f"embeddings of size D={size}; use N > {size}"
        )
    return embeddings.mean(axis=0), np.cov(embeddings, rowvar=False)


def frechet_distance(emb_a: np.ndarray, emb_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sets of embeddings (N_a, D) and (N_b, D).

    d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). Each set needs N > D embeddings
    (a ValueError names N and D otherwise).
    """
    mu_a, cov_a = _mean_and_covariance(emb_a, "emb_a")
    mu_b, cov_b = _mean_and_covariance(emb_b, "emb_b")
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"embedding sizes differ: {mu_a.shape[0]} and {mu_b.shape[0]}")
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(root)):
        offset = FRECHET_DIAGONAL_OFFSET * np.eye(cov_a.shape[0])
        root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(root):
        largest = float(np.max(np.abs(np.diagonal(root).imag)))
        if largest > FRECHET_MAX_IMAGINARY:
            raise ValueError(f"covariance square root has an imaginary component of {largest:.3g}")
        root = root.real
    difference = mu_a - mu_b
    distance = float(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))
    return max(distance, 0.0)


def oracle_irm(mixture: np.ndarray, target: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """The ideal ratio mask estimate of the target, (samples,) float32.

    With T = STFT(target) and R = STFT(mixture - target), the mask |T| / (|T| + |R|) (0 where both vanish)
    multiplies STFT(mixture), and the inverse STFT (Hann window, canonical dual window, so it reconstructs
    perfectly) brings it back to a wave of the mixture's length.
    """
    target, mixture = wave_pair(target, mixture)
    if not 0 < hop <= n_fft // 2:
        raise ValueError(f"hop must lie in 1..n_fft/2 = {n_fft // 2} for an invertible Hann STFT, got {hop}")
    transform = ShortTimeFFT(get_window("hann", n_fft), hop, fs=1.0)
    target_mag = np.abs(transform.stft(target))
    rest_mag = np.abs(transform.stft(mixture - target))
    total = target_mag + rest_mag
    mask = np.divide(target_mag, total, out=np.zeros_like(total), where=total > 0.0)
    estimate = transform.istft(mask * transform.stft(mixture), k1=mixture.shape[0])
    return estimate.astype(np.float32)


def oracle_gain(mixture: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The mixture times the scalar that minimises ||target - g * mixture||^2, g = <target, mixture> / ||mixture||^2:
    the gain of highest SDR (the SDR's error term is that distance). float32 (samples,)."""
    mixture64, target64 = np.asarray(mixture, dtype=np.float64), np.asarray(target, dtype=np.float64)
    energy = float(np.dot(mixture64, mixture64))
    gain = float(np.dot(target64, mixture64)) / energy if energy > 0 else 0.0
    return (gain * mixture64).astype(np.float32)

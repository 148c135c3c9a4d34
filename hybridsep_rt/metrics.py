"""The signal-to-distortion ratio of the paper's Table 2 (section 3.3), numpy only.

Waves are mono, shape (samples,). ``training.metrics`` builds its other metrics on these.

- `sdr`: the signal-to-distortion ratio as the DCASE 2024 task 9 (LASS) evaluator computes it,
  10 * log10(mean(s^2) / mean((s_hat - s)^2)), each mean clipped from below at `DCASE_SDR_EPS`.
- `sdri`: SDR of the estimate minus SDR of the unprocessed mixture.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DCASE_SDR_EPS", "sdr", "sdri", "wave_pair", "power_ratio_db"]

# The DCASE 2024 task 9 baseline (Audio-AGI/dcase2024_task9_baseline, utils.calculate_sdr) clips the mean
# powers of the reference and of the error from below at 1e-10 before taking their ratio.
DCASE_SDR_EPS = 1e-10


def wave_pair(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both waves as float64 (samples,), after checking their shapes agree."""
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if reference.ndim != 1 or reference.shape != estimate.shape:
        raise ValueError(
            f"reference and estimate must be 1-D waves of one length, got {reference.shape} and {estimate.shape}"
        )
    return reference, estimate


def power_ratio_db(signal_power: float, error_power: float) -> float:
    """10 * log10(signal / error), each power clipped from below at DCASE_SDR_EPS."""
    return float(10.0 * np.log10(max(signal_power, DCASE_SDR_EPS) / max(error_power, DCASE_SDR_EPS)))


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """SDR in dB, as the DCASE 2024 LASS evaluator defines it (no projection, no scale invariance)."""
    reference, estimate = wave_pair(reference, estimate)
    return power_ratio_db(np.mean(reference**2), np.mean((estimate - reference) ** 2))


def sdri(reference: np.ndarray, estimate: np.ndarray, mixture: np.ndarray) -> float:
    """SDR improvement in dB: sdr(reference, estimate) - sdr(reference, mixture)."""
    return sdr(reference, estimate) - sdr(reference, mixture)

"""Audio file helpers for the training data: load, resample, check, cut into chunks, write.

Waves are float32 numpy arrays. A mono wave has shape (samples,); a multichannel
wave has shape (channels, samples).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from hybridsep_rt.atomic import atomic_path


class AudioError(ValueError):
    """An audio file that cannot be read, or a wave that holds NaN or Inf."""


def check_finite(wave: np.ndarray, what: str = "wave") -> np.ndarray:
    """Return `wave` unchanged, or raise AudioError when it holds NaN or Inf."""
    if not np.all(np.isfinite(wave)):
        bad = int(np.size(wave) - np.count_nonzero(np.isfinite(wave)))
        raise AudioError(f"{what} holds {bad} NaN or Inf samples")
    return wave


def resample(wave: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample along the last axis with soxr; shape (..., samples) -> (..., new_samples)."""
    if source_rate == target_rate:
        return wave.astype(np.float32, copy=False)
    frames_first = np.ascontiguousarray(wave.T)  # soxr wants (frames, channels)
    out = soxr.resample(frames_first, source_rate, target_rate, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int, mono: bool = True) -> np.ndarray:
    """Read any format libsndfile knows, convert channels and resample.

    Returns float32 of shape (samples,) when `mono`, else (channels, samples).
    Raises AudioError naming the file when it cannot be read or holds NaN/Inf.
    """
    path = Path(path)
    try:
        frames, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioError(f"cannot read audio file {path}: {error}") from error
    if frames.shape[0] == 0:
        raise AudioError(f"audio file {path} holds no samples")
    wave = frames.mean(axis=1) if mono else frames.T
    check_finite(wave, f"audio file {path}")
    return resample(wave, file_rate, sample_rate)


def fit_length(wave: np.ndarray, samples: int) -> np.ndarray:
    """Trim or zero-pad the last axis to exactly `samples`."""
    have = wave.shape[-1]
    if have >= samples:
        return wave[..., :samples]
    pad = [(0, 0)] * (wave.ndim - 1) + [(0, samples - have)]
    return np.pad(wave, pad)


def chunks(
    wave: np.ndarray, sample_rate: int, seconds: float = 10.0, pad_last: bool = True
) -> list[np.ndarray]:
    """Cut the last axis into consecutive chunks of `seconds`.

    The last, shorter chunk is zero-padded when `pad_last`, dropped otherwise.
    Each chunk has shape (..., round(seconds * sample_rate)).
    """
    check_finite(wave)
    size = int(round(seconds * sample_rate))
    if size <= 0:
        raise ValueError(f"chunk length must be positive, got {seconds} s at {sample_rate} Hz")
    total = wave.shape[-1]
    out = [wave[..., start : start + size] for start in range(0, total - size + 1, size)]
    rest = total % size
    if rest and pad_last:
        out.append(fit_length(wave[..., total - rest :], size))
    return out


def write_audio(path: str | os.PathLike, wave: np.ndarray, sample_rate: int) -> None:
    """Write a wave atomically (temp file in the same folder, then rename).

    The format follows the suffix (.flac, .wav, ...); samples are stored as 16-bit PCM,
    so a wave reaching beyond [-1, 1] is refused rather than clipped.
    `wave` has shape (samples,) or (channels, samples).
    """
    path = Path(path)
    check_finite(wave, f"wave for {path}")
    peak = float(np.max(np.abs(wave))) if np.size(wave) else 0.0
    if peak > 1.0:
        raise AudioError(f"wave for {path} peaks at {peak:.3f} and would clip")
    file_format = path.suffix.lstrip(".").upper()
    with atomic_path(path) as temp:
        sf.write(temp, np.asarray(wave).T, sample_rate, format=file_format, subtype="PCM_16")

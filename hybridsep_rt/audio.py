"""Audio files in and out, and sample-rate conversion.

Arrays are channels-first, ``(channels, samples)`` float32, the layout the separator works on: every channel is
separated as its own batch item (mono, stereo and more channels alike), so an output keeps its input's channel
count. Files are read and written with soundfile (libsndfile: WAV, FLAC, OGG, MP3, AIFF, ...); rates are
converted with soxr.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from hybridsep_rt.atomic import atomic_path

__all__ = ["AudioError", "read_audio", "write_audio", "resample", "to_model_rate", "file_format", "file_subtype",
           "writable_subtype", "check_finite"]

# File extensions whose libsndfile format name differs from the upper-cased extension.
_EXTENSION_FORMATS = {"aif": "AIFF", "aifc": "AIFF", "oga": "OGG", "snd": "AU"}


# Subtypes that store samples beyond [-1, 1] unharmed.
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


class AudioError(ValueError):
    """An audio file cannot be read or written, or holds samples that cannot be processed."""


def file_format(path: str | Path) -> str | None:
    """The libsndfile format name for ``path``'s extension ("WAV", "FLAC", ...), None when unsupported."""
    extension = Path(path).suffix.lower().lstrip(".")
    name = _EXTENSION_FORMATS.get(extension, extension.upper())
    return name if extension and name in sf.available_formats() else None


def _supported() -> str:
    return ", ".join(sorted(sf.available_formats()))


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file: ``(data (channels, samples) float32, sample_rate)``.

    Raises FileNotFoundError for a missing file and :class:`AudioError` for an unsupported format, a file that
    cannot be decoded, an empty file or one holding NaN or infinite samples.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        if file_format(path) is None:
            raise AudioError(f"{path}: unsupported audio format {path.suffix or '(no extension)'!r}; "
                             f"readable formats: {_supported()}") from None
        raise AudioError(f"{path} cannot be decoded (corrupt or not a {file_format(path)} file): {e}") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path} holds no samples")
    data = np.ascontiguousarray(data.T)
    check_finite(data, str(path))
    return data, int(rate)


def check_finite(data: np.ndarray, what: str) -> None:
    """Raise :class:`AudioError` when ``data`` holds NaN or infinite samples."""
    if not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise AudioError(f"{what} holds {bad} NaN or infinite samples")


def resample(data: np.ndarray, rate: int, new_rate: int, length: int | None = None) -> np.ndarray:
    """(channels, N) at ``rate`` -> (channels, M) at ``new_rate`` float32 (soxr, high quality).

    ``length`` fixes M (trimmed or zero-padded), e.g. to return exactly to an original length.
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"audio must be (channels, samples), got shape {data.shape}")
    if rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {rate} and {new_rate}")
    if rate != new_rate and data.shape[1] > 0:
        data = soxr.resample(data.T, rate, new_rate, quality="HQ").T
    data = np.ascontiguousarray(data, dtype=np.float32)
    if length is not None and data.shape[1] != length:
        fitted = np.zeros((data.shape[0], length), dtype=np.float32)
        keep = min(length, data.shape[1])
        fitted[:, :keep] = data[:, :keep]
        data = fitted
    return data


def to_model_rate(data: np.ndarray, rate: int, model_rate: int) -> np.ndarray:
    """(channels, N) at ``rate`` -> (channels, round(N * model_rate / rate)) at the model's rate."""
    return resample(data, rate, model_rate, length=int(round(data.shape[-1] * model_rate / rate)))


def file_subtype(path: str | Path) -> str | None:
    """The sample format of an audio file ("PCM_16", "FLOAT", ...), None when it cannot be read."""
    try:
        return sf.info(str(path)).subtype
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None


def writable_subtype(path: str | Path, subtype: str | None) -> str | None:
    """``subtype`` if the format of ``path`` can store it (e.g. keep an input's PCM_24), else None (the
    format's default)."""
    fmt = file_format(path)
    if subtype is None or fmt is None:
        return None
    return subtype if sf.check_format(fmt, subtype) else None


def write_audio(path: str | Path, data: np.ndarray, rate: int, subtype: str | None = None) -> Path:
    """Write (channels, samples) audio atomically (temporary file, then rename) in the format named by the
    extension. ``subtype`` (e.g. "PCM_16", "FLOAT") defaults to the format's default. Integer formats clip
    samples to [-1, 1]."""
    path = Path(path)
    fmt = file_format(path)
    if fmt is None:
        raise AudioError(f"{path}: cannot write audio format {path.suffix or '(no extension)'!r}; "
                         f"writable formats: {_supported()}")
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"audio must be (channels, samples), got shape {data.shape}")
    check_finite(data, f"audio for {path}")
    if subtype is not None and not sf.check_format(fmt, subtype):
        raise AudioError(f"{path}: the {fmt} format cannot store {subtype} samples")
    if (subtype or sf.default_subtype(fmt)) not in _FLOAT_SUBTYPES:
        data = np.clip(data, -1.0, 1.0)  # libsndfile would wrap out-of-range samples around
    with atomic_path(path, suffix=path.suffix) as tmp:
        sf.write(str(tmp), data.T, rate, subtype=subtype, format=fmt)
    return path

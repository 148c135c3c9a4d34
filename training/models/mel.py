"""Log-mel spectrogram front-ends written with ONNX-exportable torch ops.

The short-time Fourier transform is a strided ``conv1d`` with a windowed DFT basis (no ``torch.stft``,
no complex tensors), so a module built from these pieces exports with the TorchScript ONNX exporter
at opset 17 and keeps a dynamic time axis. An exported graph computes the basis (`computed_in_graph`)
instead of storing it.

Filter banks follow the two conventions in common use:
- ``mel_scale="htk"``, ``norm=None``: the torchaudio defaults.
- ``mel_scale="slaney"``, ``norm="slaney"``: the librosa defaults (what the non-fusion LAION-CLAP audio
  tower was trained on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.models.stft import (computed_in_graph, onnx_constant, onnx_windowed_dft_basis, periodic_hann,
                                  windowed_dft_basis)

# Slaney mel scale (Slaney's Auditory Toolbox, as in librosa.hz_to_mel with htk=False):
# linear below 1 kHz with 200/3 Hz per mel, logarithmic above with 27 mels per factor 6.4 in frequency.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_STEP = math.log(6.4) / 27.0
# HTK mel scale: mel = 2595 log10(1 + f / 700) (Young et al., The HTK Book).
_HTK_MEL_FACTOR = 2595.0
_HTK_BREAK_HZ = 700.0


def hertz_to_mel(hertz: torch.Tensor, mel_scale: str) -> torch.Tensor:
    """Hz -> mel on the ``"htk"`` or ``"slaney"`` scale (float64 tensors in and out)."""
    if mel_scale == "htk":
        return _HTK_MEL_FACTOR * torch.log10(1.0 + hertz / _HTK_BREAK_HZ)
    if mel_scale == "slaney":
        log_start_mel = _SLANEY_LOG_START_HZ / _SLANEY_HZ_PER_MEL
        linear = hertz / _SLANEY_HZ_PER_MEL
        log_ratio = torch.log(hertz.clamp_min(_SLANEY_LOG_START_HZ) / _SLANEY_LOG_START_HZ)
        logarithmic = log_start_mel + log_ratio / _SLANEY_LOG_STEP
        return torch.where(hertz >= _SLANEY_LOG_START_HZ, logarithmic, linear)
    raise ValueError(f"mel_scale must be 'htk' or 'slaney', got {mel_scale!r}")


def mel_to_hertz(mel: torch.Tensor, mel_scale: str) -> torch.Tensor:
    """Mel -> Hz, the inverse of :func:`hertz_to_mel`."""
    if mel_scale == "htk":
        return _HTK_BREAK_HZ * (10.0 ** (mel / _HTK_MEL_FACTOR) - 1.0)
    if mel_scale == "slaney":
        log_start_mel = _SLANEY_LOG_START_HZ / _SLANEY_HZ_PER_MEL
        linear = mel * _SLANEY_HZ_PER_MEL
        logarithmic = _SLANEY_LOG_START_HZ * torch.exp(_SLANEY_LOG_STEP * (mel - log_start_mel))
        return torch.where(mel >= log_start_mel, logarithmic, linear)
    raise ValueError(f"mel_scale must be 'htk' or 'slaney', got {mel_scale!r}")


def mel_filter_bank(
    n_freqs: int,
    n_mels: int,
    sample_rate: int,
    f_min: float,
    f_max: float,
    mel_scale: str = "htk",
    norm: str | None = None,
) -> torch.Tensor:
    """Triangular mel filters, shape ``(n_freqs, n_mels)``, float64.

    ``n_freqs`` one-sided FFT bins spread evenly over ``[0, sample_rate // 2]``; ``n_mels`` triangles whose
    edges are evenly spaced in mel between ``f_min`` and ``f_max``. ``norm="slaney"`` scales each triangle
    to unit area in Hz (2 / bandwidth).
    """
    if norm not in (None, "slaney"):
        raise ValueError(f"norm must be None or 'slaney', got {norm!r}")
    if not 0.0 <= f_min <= f_max:
        raise ValueError(f"need 0 <= f_min <= f_max, got f_min={f_min}, f_max={f_max}")
    bin_hz = torch.linspace(0.0, float(sample_rate // 2), n_freqs, dtype=torch.float64)
    mel_edges = torch.linspace(
        float(hertz_to_mel(torch.tensor(float(f_min), dtype=torch.float64), mel_scale)),
        float(hertz_to_mel(torch.tensor(float(f_max), dtype=torch.float64), mel_scale)),
        n_mels + 2,
        dtype=torch.float64,
    )
    edge_hz = mel_to_hertz(mel_edges, mel_scale)
    widths = edge_hz[1:] - edge_hz[:-1]  # (n_mels + 1,)
    offsets = edge_hz[None, :] - bin_hz[:, None]  # (n_freqs, n_mels + 2)
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    if norm == "slaney":
        filters = filters * (2.0 / (edge_hz[2:] - edge_hz[:-2]))[None, :]
    return filters


class PowerSpectrogram(nn.Module):
    """|STFT|^2 as a strided conv1d with a windowed DFT basis.

    Frames are centred: the signal is reflect-padded by ``n_fft // 2`` on both sides, as ``torch.stft``
    and ``librosa.stft`` do with ``center=True``. A window shorter than ``n_fft`` is zero-padded on
    both sides to ``n_fft``.

    forward: ``wave (B, N)`` -> ``power (B, n_fft // 2 + 1, 1 + N // hop_length)``.
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int | None = None):
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) may not exceed n_fft ({n_fft})")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_freqs = n_fft // 2 + 1
        self.window = np.zeros(n_fft)
        left = (n_fft - win_length) // 2
        self.window[left : left + win_length] = periodic_hann(win_length)
        basis = windowed_dft_basis(self.window, n_fft, self.n_freqs).T  # (2 * n_freqs, n_fft)
        # Derived from the constructor arguments, so not saved in checkpoints.
        self.register_buffer("dft_basis", torch.tensor(basis[:, None, :], dtype=torch.float32), persistent=False)

    def onnx_dft_basis(self, g):
        """ONNX ops computing ``dft_basis`` (see :func:`computed_in_graph`)."""
        basis = onnx_windowed_dft_basis(g, self.window, self.n_fft, self.n_freqs)
        return g.op("Unsqueeze", g.op("Transpose", basis, perm_i=[1, 0]), onnx_constant(g, [1], np.int64))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        padded = F.pad(wave.unsqueeze(1), (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        basis = computed_in_graph(self.dft_basis, self.onnx_dft_basis)
        spectrum = F.conv1d(padded, basis, stride=self.hop_length)  # (B, 2 * n_freqs, T)
        real, imag = spectrum[:, : self.n_freqs], spectrum[:, self.n_freqs :]
        return real * real + imag * imag


@dataclass
class LogMelConfig:
    """Settings of a :class:`LogMelSpectrogram` (all sizes in samples)."""

    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    f_min: float
    f_max: float
    win_length: int | None = None
    mel_scale: str = "htk"
    norm: str | None = None
    # Power floor before the log: 1e-10 = -100 dB, the librosa / transformers default (amin).
    floor: float = 1e-10


class LogMelSpectrogram(nn.Module):
    """Log-mel power spectrogram in decibels: ``10 log10(max(mel, floor))``.

    forward: ``wave (B, N)`` -> ``log_mel (B, frames, n_mels)`` with ``frames = 1 + N // hop_length``.
    """

    def __init__(self, config: LogMelConfig):
        super().__init__()
        self.config = config
        self.spectrogram = PowerSpectrogram(config.n_fft, config.hop_length, config.win_length)
        filters = mel_filter_bank(
            self.spectrogram.n_freqs,
            config.n_mels,
            config.sample_rate,
            config.f_min,
            config.f_max,
            mel_scale=config.mel_scale,
            norm=config.norm,
        )
        self.register_buffer("mel_filters", filters.to(torch.float32), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        power = self.spectrogram(wave)  # (B, n_freqs, frames)
        mel = torch.matmul(power.transpose(1, 2), self.mel_filters)  # (B, frames, n_mels)
        return 10.0 * torch.log10(torch.clamp(mel, min=self.config.floor))

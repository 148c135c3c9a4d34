"""Kaldi-compatible log-mel filterbank (the BEATs input features), in plain torch so it exports to ONNX.

Same numbers as `torchaudio.compliance.kaldi.fbank(wave, num_mel_bins=128, sample_frequency=16000,
frame_length=25, frame_shift=10)` and Kaldi's `compute-fbank-feats` with dither 0: frames cut with
snip_edges, DC offset removed per frame, pre-emphasis, Povey window, zero padding to a power of two,
power spectrum, triangular filters on Kaldi's mel scale, natural log floored at float epsilon, no energy.

DC removal and pre-emphasis are applied to the gathered frames; the window is folded into the DFT matrix
that multiplies them, which an exported graph computes instead of storing (`computed_in_graph`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from training.models.stft import computed_in_graph, frame_signal, onnx_windowed_dft_basis, windowed_dft_basis

# Kaldi FrameExtractionOptions / MelBanksOptions defaults (feature-window.h, mel-computations.h).
PREEMPHASIS = 0.97
POVEY_EXPONENT = 0.85
LOW_FREQ_HZ = 20.0
# Kaldi's mel scale (mel-computations.h: MelScale): 1127 ln(1 + f / 700).
MEL_SCALE = 1127.0
MEL_BREAK_HZ = 700.0
# Kaldi floors the mel energies at FLT_EPSILON before the log.
LOG_FLOOR = float(np.finfo(np.float32).eps)


def mel_scale(freq_hz: np.ndarray | float) -> np.ndarray:
    return MEL_SCALE * np.log(1.0 + np.asarray(freq_hz, dtype=np.float64) / MEL_BREAK_HZ)


def povey_window(length: int) -> np.ndarray:
    """Kaldi's "povey" window: a Hann window over length - 1 raised to 0.85."""
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / (length - 1))
    return hann**POVEY_EXPONENT


def kaldi_mel_filters(
    num_mel_bins: int, fft_size: int, sample_rate: float, low_freq: float, high_freq: float
) -> np.ndarray:
    """(num_mel_bins, fft_size // 2) triangular filters, equally spaced on the mel scale."""
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high_freq)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    left = mel_low + delta * np.arange(num_mel_bins)[:, None]
    center, right = left + delta, left + 2 * delta
    bin_mel = mel_scale(sample_rate / fft_size * np.arange(fft_size // 2))[None, :]
    rising = (bin_mel - left) / (center - left)
    falling = (right - bin_mel) / (right - center)
    weights = np.where(bin_mel <= center, rising, falling)
    return np.where((bin_mel > left) & (bin_mel < right), weights, 0.0)


class KaldiFbank(nn.Module):
    """Kaldi log-mel filterbank: (B, N) waveform, as given (the caller scales) -> (B, frames, num_mel_bins).

    frames = 1 + (N - frame_length) // frame_shift (snip_edges); N must hold at least one frame.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        num_mel_bins: int = 128,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
    ):
        super().__init__()
        self.sample_rate = sample_rate
        self.num_mel_bins = num_mel_bins
        # Kaldi rounds the window and shift to whole samples (FrameExtractionOptions::WindowSize/Shift).
        self.frame_length = int(sample_rate * 0.001 * frame_length_ms)
        self.frame_shift = int(sample_rate * 0.001 * frame_shift_ms)
        self.fft_size = 1 << math.ceil(math.log2(self.frame_length))  # round_to_power_of_two
        self.window = povey_window(self.frame_length)
        # Bins 0 .. fft_size // 2 - 1 only: Kaldi's mel filters give the Nyquist bin no weight.
        self.num_bins = self.fft_size // 2
        spectrum = windowed_dft_basis(self.window, self.fft_size, self.num_bins)  # (frame_length, fft_size)
        filters = kaldi_mel_filters(num_mel_bins, self.fft_size, sample_rate, LOW_FREQ_HZ, sample_rate / 2)
        self.register_buffer("windowed_dft", torch.tensor(spectrum, dtype=torch.float32), persistent=False)
        self.register_buffer("mel_filters", torch.tensor(filters.T, dtype=torch.float32), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, frames, num_mel_bins)."""
        if not torch.jit.is_tracing() and wave.shape[-1] < self.frame_length:
            raise ValueError(f"KaldiFbank needs at least {self.frame_length} samples, got {wave.shape[-1]}")
        frames = frame_signal(wave, self.frame_length, self.frame_shift)  # (B, frames, frame_length)
        frames = frames - frames.mean(dim=-1, keepdim=True)  # DC offset
        # Pre-emphasis x[i] -= 0.97 x[i - 1], and x[0] -= 0.97 x[0].
        frames = frames - PREEMPHASIS * torch.cat((frames[..., :1], frames[..., :-1]), dim=-1)
        basis = computed_in_graph(self.windowed_dft,
                                  lambda g: onnx_windowed_dft_basis(g, self.window, self.fft_size, self.num_bins))
        spectrum = torch.matmul(frames, basis)  # (B, frames, fft_size), real then imaginary
        real, imag = spectrum.chunk(2, dim=-1)
        power = real * real + imag * imag
        mel_energies = torch.matmul(power, self.mel_filters)
        return torch.log(mel_energies.clamp(min=LOG_FLOOR))

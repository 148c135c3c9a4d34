"""Short-time Fourier transform and its inverse with a DFT basis, so both export to ONNX.

The forward transform multiplies gathered frames by the windowed DFT matrix; the inverse multiplies by the
windowed inverse DFT matrix and overlap-adds the frames (shifted pads and adds),
divided by the overlap-added squared window.

`STFT.forward` equals `torch.stft(x, n_fft, hop_length, window=torch.hann_window(n_fft), center=True,
pad_mode="reflect", return_complex=True)` with real and imaginary parts as channels; `STFT.inverse`
equals `torch.istft` with the same settings (ONNX has no ISTFT op, and no complex tensors).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# torch.istft refuses a window envelope below this value; here it only guards the division.
_MIN_ENVELOPE = 1e-11


def periodic_hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window, as torch.hann_window(n_fft) (periodic=True)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)


def dft_angles(n_fft: int) -> np.ndarray:
    """(n_fft // 2 + 1, n_fft) angles 2 pi f n / n_fft, reduced modulo n_fft first for accuracy."""
    frequencies = np.arange(n_fft // 2 + 1)[:, None]
    samples = np.arange(n_fft)[None, :]
    return 2 * np.pi * ((frequencies * samples) % n_fft) / n_fft


def frame_signal(x: torch.Tensor, frame_length: int, hop_length: int) -> torch.Tensor:
    """(B, N) -> (B, 1 + (N - frame_length) // hop_length, frame_length), frames that start every hop.

    An index gather, so it exports with a time length that varies; the frames are then transformed with a
    matrix product, which sums more accurately in float32 than a long convolution kernel.
    """
    num_frames = (x.shape[-1] - frame_length) // hop_length + 1
    starts = torch.arange(num_frames, device=x.device) * hop_length
    offsets = torch.arange(frame_length, device=x.device)
    return x[:, starts[:, None] + offsets[None, :]]


class STFT(nn.Module):
    """Centred STFT with a periodic Hann window, and its inverse.

    forward: (B, N) -> (B, 2, T, F), channel 0 real, channel 1 imaginary, T = N // hop_length + 1,
             F = n_fft // 2 + 1 (N must exceed n_fft // 2 for the reflect padding).
    inverse: (B, 2, T, F), length -> (B, length); length defaults to (T - 1) * hop_length. Beyond
             (T - 1) * hop_length + n_fft // 2 samples the eager inverse pads zeros, as torch.istft does;
             an exported graph has no such padding, so ask it for no more than that.
    """

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        if n_fft % 2:
            raise ValueError(f"n_fft must be even, got {n_fft}")
        if not 0 < hop_length <= n_fft:
            raise ValueError(f"hop_length must be in 1..n_fft, got {hop_length}")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.num_bins = n_fft // 2 + 1
        window = periodic_hann(n_fft)
        angles = dft_angles(n_fft)

        # Forward basis (n_fft, 2F): X[f] = sum_n w[n] x[n] (cos - i sin)(2 pi f n / n_fft).
        forward_basis = np.concatenate([np.cos(angles), -np.sin(angles)]) * window
        self.register_buffer("forward_basis", _as_float32(forward_basis.T), persistent=False)

        # Inverse basis (2F, n_fft): the inverse real DFT of a one-sided spectrum, times the synthesis
        # window. Bins other than DC and Nyquist stand for their mirror image too, hence weight 2; the
        # imaginary parts of DC and Nyquist are ignored, as irfft does.
        weights = np.full(self.num_bins, 2.0)
        weights[0] = weights[-1] = 1.0
        inverse_basis = np.concatenate([weights[:, None] * np.cos(angles), -weights[:, None] * np.sin(angles)])
        inverse_basis[self.num_bins] = 0.0
        inverse_basis[-1] = 0.0
        inverse_basis = inverse_basis * window / n_fft
        self.register_buffer("inverse_basis", _as_float32(inverse_basis), persistent=False)
        self.register_buffer("window_squared", _as_float32(window**2), persistent=False)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, T, 2, F): the spectrum frame by frame (real, imaginary)."""
        half = self.n_fft // 2
        padded = F.pad(x[:, None, :], (half, half), mode="reflect")[:, 0]
        spec = torch.matmul(frame_signal(padded, self.n_fft, self.hop_length), self.forward_basis)  # (B, T, 2F)
        return spec.reshape(x.shape[0], -1, 2, self.num_bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, 2, T, F)."""
        return self.frames(x).transpose(1, 2)

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, n_fft) -> (B, (T - 1 + r) * hop), r = ceil(n_fft / hop): frame t starts at t * hop."""
        ratio = -(-self.n_fft // self.hop_length)
        b, t, _ = frames.shape
        frames = F.pad(frames, (0, ratio * self.hop_length - self.n_fft))
        parts = frames.reshape(b, t, ratio, self.hop_length)
        blocks = sum(F.pad(parts[:, :, j], (0, 0, j, ratio - 1 - j)) for j in range(ratio))  # (B, T + r - 1, hop)
        return blocks.reshape(b, -1)

    def inverse_frames(self, spec: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """(B, T, 2, F) -> (B, length); length defaults to (T - 1) * hop_length."""
        batch, num_frames = spec.shape[:2]
        if length is None:
            length = (num_frames - 1) * self.hop_length
        frames = torch.matmul(spec.reshape(batch, num_frames, 2 * self.num_bins), self.inverse_basis)
        overlapped = self._overlap_add(frames)
        envelope = self._overlap_add(self.window_squared.expand(1, num_frames, self.n_fft))
        signal = overlapped / envelope.clamp(min=_MIN_ENVELOPE)
        # Drop the centring pad; past the last frame torch.istft pads with zeros, so does this.
        start = self.n_fft // 2
        available = signal.shape[-1] - start
        signal = signal[:, start : start + length]
        if not torch.jit.is_tracing() and length > available:
            signal = F.pad(signal, (0, length - available))
        return signal

    def inverse(self, spec: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """(B, 2, T, F) -> (B, length); length defaults to (T - 1) * hop_length."""
        return self.inverse_frames(spec.transpose(1, 2), length)


def _as_float32(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float32)

"""Short-time Fourier transform and its inverse with a DFT basis, so both export to ONNX.

The forward transform multiplies gathered frames by the windowed DFT matrix; the inverse multiplies by the
windowed inverse DFT matrix and overlap-adds the frames (shifted pads and adds),
divided by the overlap-added squared window.

`STFT.forward` equals `torch.stft(x, n_fft, hop_length, window=torch.hann_window(n_fft), center=True,
pad_mode="reflect", return_complex=True)` with real and imaginary parts as channels; `STFT.inverse`
equals `torch.istft` with the same settings (ONNX has no ISTFT op, and no complex tensors).

An exported graph does not store the DFT bases (16 MB for n_fft 2048): it holds the few ops that compute
them (`computed_in_graph`), and ONNX Runtime computes them once when it loads the graph.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# torch.istft refuses a window envelope below this value; here it only guards the division.
_MIN_ENVELOPE = 1e-11
# The exported angles come from products of sample and bin indices in float32, exact below 2**24.
_EXACT_FLOAT32_INTEGERS = 2**24


def periodic_hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window, as torch.hann_window(n_fft) (periodic=True)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)


def dft_angles(samples: int, bins: int, fft_size: int) -> np.ndarray:
    """(samples, bins) angles 2 pi n f / fft_size, the product n f reduced modulo fft_size first for accuracy."""
    product = np.arange(samples)[:, None] * np.arange(bins)[None, :]
    return 2 * np.pi * (product % fft_size) / fft_size


def windowed_dft_basis(window: np.ndarray, fft_size: int, bins: int) -> np.ndarray:
    """(len(window), 2 * bins): a windowed frame times this matrix gives the real parts, then the imaginary
    parts, of bins 0 .. bins - 1 of its DFT zero-padded to fft_size: X[f] = sum_n w[n] x[n] e^(-2 pi i f n / N)."""
    angles = dft_angles(len(window), bins, fft_size)
    return np.concatenate([np.cos(angles), -np.sin(angles)], axis=1) * window[:, None]


def inverse_dft_weights(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the cosines and sines of a one-sided spectrum's bins in the inverse real DFT: bins other than
    DC and Nyquist stand for their mirror image too, hence 2; the imaginary parts of DC and Nyquist are ignored,
    as irfft does."""
    real = np.full(n_fft // 2 + 1, 2.0)
    real[0] = real[-1] = 1.0
    imag = real.copy()
    imag[0] = imag[-1] = 0.0
    return real, imag


def inverse_dft_basis(window: np.ndarray) -> np.ndarray:
    """(2F, n_fft), F = n_fft // 2 + 1: a one-sided spectrum (real parts, then imaginary parts) times this
    matrix gives the inverse real DFT of the frame times the synthesis window."""
    n_fft = len(window)
    real, imag = inverse_dft_weights(n_fft)
    angles = dft_angles(n_fft, n_fft // 2 + 1, n_fft).T
    return np.concatenate([real[:, None] * np.cos(angles), -imag[:, None] * np.sin(angles)]) * window / n_fft


class ComputedInGraph(torch.autograd.Function):
    """A fixed tensor that an exported ONNX graph computes instead of storing it.

    In torch it returns the stored value. The TorchScript ONNX exporter calls ``symbolic`` instead, which
    emits ``build(g)``: ONNX ops that compute the same values in float32 from a few small constants. The
    first large tensor they make comes out of a MatMul, an op the exporter does not constant-fold, so the file
    holds the formula, not the table. ONNX Runtime folds it into the table when it loads the graph.
    """

    @staticmethod
    def forward(ctx, value: torch.Tensor, build: Callable) -> torch.Tensor:
        return value

    @staticmethod
    def symbolic(g, value, build: Callable):
        return build(g)


def computed_in_graph(value: torch.Tensor, build: Callable) -> torch.Tensor:
    """``value``; while traced for ONNX export, the ops ``build(g)`` emits (see :class:`ComputedInGraph`)."""
    return ComputedInGraph.apply(value, build) if torch.jit.is_tracing() else value


def onnx_constant(g, array, dtype=np.float32):
    """An ONNX Constant op holding ``array`` (float32 unless told)."""
    return g.op("Constant", value_t=torch.tensor(np.asarray(array, dtype=dtype)))


def onnx_dft_angles(g, samples: int, bins: int, fft_size: int):
    """ONNX ops computing ``dft_angles(samples, bins, fft_size)`` in float32: the index product is an outer
    product (a MatMul, exact in float32 below 2**24), reduced modulo fft_size, times 2 pi / fft_size."""
    if (samples - 1) * (bins - 1) >= _EXACT_FLOAT32_INTEGERS:
        raise ValueError(f"a DFT of {samples} samples and {bins} bins is too large to export exactly")
    sample_index = onnx_constant(g, np.arange(samples)[:, None])
    bin_index = onnx_constant(g, np.arange(bins)[None, :])
    product = g.op("MatMul", sample_index, bin_index)
    reduced = g.op("Mod", product, onnx_constant(g, fft_size), fmod_i=1)
    return g.op("Mul", reduced, onnx_constant(g, 2 * np.pi / fft_size))


def onnx_windowed_dft_basis(g, window: np.ndarray, fft_size: int, bins: int):
    """ONNX ops computing ``windowed_dft_basis(window, fft_size, bins)``."""
    angles = onnx_dft_angles(g, len(window), bins, fft_size)
    basis = g.op("Concat", g.op("Cos", angles), g.op("Neg", g.op("Sin", angles)), axis_i=1)
    return g.op("Mul", basis, onnx_constant(g, window[:, None]))


def onnx_inverse_dft_basis(g, window: np.ndarray):
    """ONNX ops computing ``inverse_dft_basis(window)``."""
    n_fft = len(window)
    real, imag = inverse_dft_weights(n_fft)
    angles = onnx_dft_angles(g, n_fft // 2 + 1, n_fft, n_fft)  # (F, n_fft): the same angles, transposed
    cosines = g.op("Mul", g.op("Cos", angles), onnx_constant(g, real[:, None]))
    sines = g.op("Mul", g.op("Sin", angles), onnx_constant(g, -imag[:, None]))
    return g.op("Mul", g.op("Concat", cosines, sines, axis_i=0), onnx_constant(g, window / n_fft))


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
        self.window = periodic_hann(n_fft)
        # (n_fft, 2F) and (2F, n_fft); computed by the graph when exported (`computed_in_graph`).
        self.register_buffer("forward_basis", _as_float32(windowed_dft_basis(self.window, n_fft, self.num_bins)),
                             persistent=False)
        self.register_buffer("inverse_basis", _as_float32(inverse_dft_basis(self.window)), persistent=False)
        self.register_buffer("window_squared", _as_float32(self.window**2), persistent=False)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, T, 2, F): the spectrum frame by frame (real, imaginary)."""
        half = self.n_fft // 2
        padded = F.pad(x[:, None, :], (half, half), mode="reflect")[:, 0]
        basis = computed_in_graph(self.forward_basis,
                                  lambda g: onnx_windowed_dft_basis(g, self.window, self.n_fft, self.num_bins))
        spec = torch.matmul(frame_signal(padded, self.n_fft, self.hop_length), basis)  # (B, T, 2F)
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
        basis = computed_in_graph(self.inverse_basis, lambda g: onnx_inverse_dft_basis(g, self.window))
        frames = torch.matmul(spec.reshape(batch, num_frames, 2 * self.num_bins), basis)
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

"""Band-limited resampling by a rational factor as one strided conv1d (a polyphase windowed-sinc filter).

With the rates reduced by their gcd to `orig` -> `new` (44100 -> 16000 is 441 -> 160, 44100 -> 48000 is
147 -> 160), every block of `orig` input samples gives `new` output samples. Output sample j of a block
lies at j / new block lengths after the block start, and is the input weighted by a Kaiser-windowed
sinc centred there: the `new` phases are the output channels of a conv1d with stride `orig`.

An exported graph computes the filters (`computed_in_graph`) instead of storing them (342 kB for 44.1 -> 16 kHz).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.models.stft import computed_in_graph, onnx_constant

# Kaiser window shape, from Kaiser's design formula beta = 0.1102 * (A - 8.7) for a stopband
# attenuation of A = 80 dB.
KAISER_BETA = 0.1102 * (80.0 - 8.7)
# Terms of the power series of the Bessel function I0 that the exported filters sum: the last term's share of
# I0(KAISER_BETA) is about 1e-9, below float32's resolution.
BESSEL_TERMS = 16


def filter_span(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[float, float, int]:
    """The lowpass's cutoff (cycles per block), its half span (blocks, up to the last zero crossing kept) and
    `width`, the input samples of context on each side."""
    cutoff = rolloff * min(orig, new) / 2
    half_span = lowpass_filter_width / (2 * cutoff)
    return cutoff, half_span, math.ceil(half_span * orig)


def polyphase_sinc_kernels(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[np.ndarray, int]:
    """(new, 2 * width + orig) filters, one per output phase, and `width`, the input samples of context.

    Times are in input-block units: input sample k sits at k / orig, output phase j at j / new. The lowpass
    cuts at `rolloff` times the lower Nyquist frequency and spans `lowpass_filter_width` sinc zero
    crossings on each side.
    """
    cutoff, half_span, width = filter_span(orig, new, lowpass_filter_width, rolloff)
    offsets = np.arange(-width, width + orig)[None, :] / orig
    phases = np.arange(new)[:, None] / new
    t = phases - offsets
    inside = np.clip(1.0 - (t / half_span) ** 2, 0.0, None)
    window = np.where(np.abs(t) <= half_span, np.i0(KAISER_BETA * np.sqrt(inside)) / np.i0(KAISER_BETA), 0.0)
    # The sinc is scaled so that a constant input comes out unchanged (unit gain at DC).
    kernels = (2 * cutoff / orig) * np.sinc(2 * cutoff * t) * window
    return kernels, width


def onnx_polyphase_sinc_kernels(g, orig: int, new: int, lowpass_filter_width: int, rolloff: float):
    """ONNX ops computing ``polyphase_sinc_kernels(...)[0][:, None, :]`` in float32.

    The times t are exact integers over new * orig, from a MatMul of indices (j * orig - k * new); I0 is its
    power series, the sum over m < BESSEL_TERMS of (x / 2)^(2m) / (m!)^2.
    """
    cutoff, half_span, width = filter_span(orig, new, lowpass_filter_width, rolloff)
    phase_terms = np.stack([np.arange(new), np.ones(new)], axis=1)  # (new, 2): [j, 1]
    offset_terms = np.stack([np.full(2 * width + orig, orig), -new * np.arange(-width, width + orig)])  # [orig; -k new]
    scaled_t = g.op("MatMul", onnx_constant(g, phase_terms), onnx_constant(g, offset_terms))  # t * new * orig
    t = g.op("Div", scaled_t, onnx_constant(g, new * orig))
    # sinc(x) = sin(pi x) / (pi x), 1 at x = 0.
    x = g.op("Mul", t, onnx_constant(g, 2 * cutoff))
    is_zero = g.op("Equal", x, onnx_constant(g, 0.0))
    safe_x = g.op("Where", is_zero, onnx_constant(g, 1.0), x)
    pi_x = g.op("Mul", safe_x, onnx_constant(g, np.pi))
    sinc = g.op("Where", is_zero, onnx_constant(g, 1.0), g.op("Div", g.op("Sin", pi_x), pi_x))
    ratio = g.op("Div", t, onnx_constant(g, half_span))
    inside = g.op("Max", g.op("Sub", onnx_constant(g, 1.0), g.op("Mul", ratio, ratio)), onnx_constant(g, 0.0))
    quarter_x2 = g.op("Mul", inside, onnx_constant(g, KAISER_BETA**2 / 4))  # (x / 2)^2, x = beta sqrt(inside)
    powers = g.op("Pow", g.op("Unsqueeze", quarter_x2, onnx_constant(g, [-1], np.int64)),
                  onnx_constant(g, np.arange(BESSEL_TERMS)))
    coefficients = 1.0 / np.array([math.factorial(m) ** 2 for m in range(BESSEL_TERMS)], dtype=np.float64)
    bessel = g.op("MatMul", powers, onnx_constant(g, coefficients[:, None] / np.i0(KAISER_BETA)))  # I0(x) / I0(beta)
    window = g.op("Squeeze", bessel, onnx_constant(g, [-1], np.int64))
    within = g.op("LessOrEqual", g.op("Abs", t), onnx_constant(g, half_span))
    window = g.op("Where", within, window, onnx_constant(g, 0.0))
    kernels = g.op("Mul", g.op("Mul", sinc, window), onnx_constant(g, 2 * cutoff / orig))
    return g.op("Unsqueeze", kernels, onnx_constant(g, [1], np.int64))


class Resample(nn.Module):
    """Resample (B, N) at `orig_freq` to (B, ceil(N * new_freq / orig_freq)) at `new_freq`.

    Output sample m lies at time m / new_freq, the same instant as input sample m * orig_freq / new_freq.
    """

    def __init__(self, orig_freq: int, new_freq: int, lowpass_filter_width: int = 16, rolloff: float = 0.95):
        super().__init__()
        if orig_freq <= 0 or new_freq <= 0:
            raise ValueError(f"sample rates must be positive, got {orig_freq} and {new_freq}")
        self.orig_freq = orig_freq
        self.new_freq = new_freq
        divisor = math.gcd(orig_freq, new_freq)
        self.orig = orig_freq // divisor
        self.new = new_freq // divisor
        self.design = (self.orig, self.new, lowpass_filter_width, rolloff)
        kernels, self.width = polyphase_sinc_kernels(*self.design)
        self.register_buffer("kernels", torch.tensor(kernels[:, None, :], dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, ceil(N * new_freq / orig_freq))."""
        if self.orig == self.new:
            return x
        batch, length = x.shape
        # Enough zeros on the right for the last, partial block: its filters reach width + orig samples past
        # its start.
        padded = F.pad(x[:, None, :], (self.width, self.width + self.orig))
        kernels = computed_in_graph(self.kernels, lambda g: onnx_polyphase_sinc_kernels(g, *self.design))
        blocks = F.conv1d(padded, kernels, stride=self.orig)  # (B, new, N // orig + 1)
        output = blocks.transpose(1, 2).reshape(batch, -1)
        output_length = (length * self.new + self.orig - 1) // self.orig
        return output[:, :output_length]

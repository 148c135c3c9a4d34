"""Band-limited resampling by a rational factor as one strided conv1d (a polyphase windowed-sinc filter).

With the rates reduced by their gcd to `orig` -> `new` (44100 -> 16000 is 441 -> 160, 44100 -> 48000 is
147 -> 160), every block of `orig` input samples gives `new` output samples. Output sample j of a block
lies at j / new block lengths after the block start, and is the input weighted by a Kaiser-windowed
sinc centred there: the `new` phases are the output channels of a conv1d with stride `orig`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Kaiser window shape, from Kaiser's design formula beta = 0.1102 * (A - 8.7) for a stopband
# attenuation of A = 80 dB.
KAISER_BETA = 0.1102 * (80.0 - 8.7)


def polyphase_sinc_kernels(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[np.ndarray, int]:
    """(new, 2 * width + orig) filters, one per output phase, and `width`, the input samples of context.

    Times are in input-block units: input sample k sits at k / orig, output phase j at j / new. The lowpass
    cuts at `rolloff` times the lower Nyquist frequency and spans `lowpass_filter_width` sinc zero
    crossings on each side.
    """
    cutoff = rolloff * min(orig, new) / 2  # cycles per block
    half_span = lowpass_filter_width / (2 * cutoff)  # blocks, up to the last zero crossing kept
    width = math.ceil(half_span * orig)
    offsets = np.arange(-width, width + orig)[None, :] / orig
    phases = np.arange(new)[:, None] / new
    t = phases - offsets
    inside = np.clip(1.0 - (t / half_span) ** 2, 0.0, None)
    window = np.where(np.abs(t) <= half_span, np.i0(KAISER_BETA * np.sqrt(inside)) / np.i0(KAISER_BETA), 0.0)
    # The sinc is scaled so that a constant input comes out unchanged (unit gain at DC).
    kernels = (2 * cutoff / orig) * np.sinc(2 * cutoff * t) * window
    return kernels, width


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
        kernels, self.width = polyphase_sinc_kernels(self.orig, self.new, lowpass_filter_width, rolloff)
        self.register_buffer("kernels", torch.tensor(kernels[:, None, :], dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, ceil(N * new_freq / orig_freq))."""
        if self.orig == self.new:
            return x
        batch, length = x.shape
        # Enough zeros on the right for the last, partial block: its filters reach width + orig samples past
        # its start.
        padded = F.pad(x[:, None, :], (self.width, self.width + self.orig))
        blocks = F.conv1d(padded, self.kernels, stride=self.orig)  # (B, new, N // orig + 1)
        output = blocks.transpose(1, 2).reshape(batch, -1)
        output_length = (length * self.new + self.orig - 1) // self.orig
        return output[:, :output_length]

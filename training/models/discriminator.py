"""Multi-scale STFT discriminator (MS-STFT-D) of EnCodec (Défossez et al. [16]).

The paper (2.2) keeps "the structure of the discriminator and loss design" of Xcodec, which uses EnCodec's
MS-STFT-D. Each scale sees the complex STFT (real and imaginary parts as two channels) of the waveform and is
a 2-D conv stack: a (3, 9) conv, three (3, 9) convs dilated 1, 2, 4 along time and strided by 2 along
frequency, a (3, 3) conv, and a (3, 3) conv to one logit channel, with LeakyReLU(0.2) and weight norm.
It is used in training only, so it may use torch.stft.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from training.config import DiscriminatorConfig

LEAKY_SLOPE = 0.2  # EnCodec MS-STFT-D activation
KERNEL = (3, 9)  # EnCodec MS-STFT-D: (time, frequency) kernel
DILATIONS = (1, 2, 4)  # EnCodec MS-STFT-D: time dilations


class STFTDiscriminator(nn.Module):
    """One scale: returns (logits (B, 1, T', F'), feature maps)."""

    def __init__(self, filters: int, n_fft: int, hop_length: int, win_length: int):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        convs = [weight_norm(nn.Conv2d(2, filters, KERNEL, padding=(1, 4)))]
        for d in DILATIONS:
            convs.append(weight_norm(nn.Conv2d(filters, filters, KERNEL, stride=(1, 2), dilation=(d, 1),
                                               padding=(d, 4))))
        convs.append(weight_norm(nn.Conv2d(filters, filters, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(convs)
        self.out = weight_norm(nn.Conv2d(filters, 1, (3, 3), padding=(1, 1)))

    def forward(self, wave: torch.Tensor):
        spec = torch.stft(wave.float(), self.n_fft, self.hop_length, self.win_length, self.window,
                          normalized=True, return_complex=True)
        x = torch.stack((spec.real, spec.imag), dim=1).transpose(2, 3)  # (B, 2, T, F)
        features = []
        for conv in self.convs:
            x = nn.functional.leaky_relu(conv(x), LEAKY_SLOPE)
            features.append(x)
        return self.out(x), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """forward(wave (B, N)) -> (list of logits, list of feature-map lists), one entry per scale."""

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.scales = nn.ModuleList(
            STFTDiscriminator(cfg.filters, n, h, w) for n, h, w in zip(cfg.n_ffts, cfg.hop_lengths, cfg.win_lengths))

    def forward(self, wave: torch.Tensor):
        logits, features = [], []
        for scale in self.scales:
            logit, feats = scale(wave)
            logits.append(logit)
            features.append(feats)
        return logits, features

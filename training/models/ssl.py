"""The ASM's SSL-feature slot (paper 2.2: frame-wise features of a frozen self-supervised encoder are concatenated
with the subband spectrograms): BEATs, as the paper uses, or YAMNet, the pretrained encoder that installs offline.

Both take the mixture at the model's rate and return (B, T, dim) features at the centre times of the ASM's T STFT
frames (`training.models.frames.align_frames`).
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import SSL_ENCODERS
from training.models.beats import SAMPLE_RATE as BEATS_SAMPLE_RATE
from training.models.beats import BEATs
from training.models.frames import align_frames
from training.models.resample import Resample
from training.models.yamnet import LAYERS, YAMNet, frame_centre_seconds

class BEATsFrames(nn.Module):
    """BEATs (Chen et al. [14]) on the mixture resampled to 16 kHz: its patch features averaged over the mel
    patches, one every 160 ms."""

    def __init__(self, beats: BEATs, input_rate: int):
        super().__init__()
        self.resample = Resample(input_rate, BEATS_SAMPLE_RATE)
        self.beats = beats
        self.dim = beats.cfg.encoder_embed_dim

    def forward(self, wave: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        features = self.beats.time_patch_features(self.resample(wave))
        return align_frames(features, *self.beats.patch_centre_seconds(), centres)


class YAMNetFrames(nn.Module):
    """YAMNet's first ``layer`` layers: the map after that layer averaged over its mel axis."""

    def __init__(self, input_rate: int, layer: int):
        super().__init__()
        self.yamnet = YAMNet(input_rate, layers=layer)
        self.layer = layer
        self.dim = LAYERS[layer - 1][1]

    def forward(self, wave: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        features = self.yamnet.frame_features(wave, self.layer)
        return align_frames(features, *frame_centre_seconds(self.layer), centres)


def build_ssl_encoder(cfg, beats: BEATs | None = None) -> nn.Module:
    """The encoder ``cfg.ssl`` names, frozen by the caller. ``beats``: a loaded BEATs (else one is built from
    ``cfg.beats``, with random weights)."""
    if cfg.ssl == "beats":
        return BEATsFrames(beats if beats is not None else BEATs(cfg.beats), cfg.sample_rate)
    if cfg.ssl == "yamnet":
        return YAMNetFrames(cfg.sample_rate, cfg.yamnet_layer)
    raise ValueError(f"unknown SSL encoder {cfg.ssl!r}; choose one of {SSL_ENCODERS}")

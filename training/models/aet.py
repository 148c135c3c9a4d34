"""Stage 1 of Hybrid-Sep (paper 2.1): the feature extractor (FE) and the audio embedding transformer (AET).

FE: an STFT of the mixture followed by transformer layers -> frame-wise acoustic features.
AET: transformer layers that read the query's text embedding, the mixture's CLAP audio embedding and the FE
frames, and predict the target's CLAP audio embedding (trained with L1 against the frozen CLAP audio encoder
on the target).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.config import AETConfig, FeatureExtractorConfig
from training.models.attention import Transformer
from training.models.stft import STFT


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) sine/cosine position codes (Vaswani et al.); any length, no parameters."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    codes = torch.zeros(length, dim)
    codes[:, 0::2] = torch.sin(position * freq)
    codes[:, 1::2] = torch.cos(position * freq)
    return codes


class FeatureExtractor(nn.Module):
    """FE: forward(mixture (B, N)) -> frames (B, T, dim)."""

    def __init__(self, cfg: FeatureExtractorConfig, max_frames: int):
        super().__init__()
        bins = cfg.n_fft // 2 + 1
        self.stft = STFT(cfg.n_fft, cfg.hop_length)
        self.input_norm = nn.LayerNorm(bins)
        self.proj = nn.Linear(bins, cfg.dim)
        self.register_buffer("positions", sinusoidal_positions(max_frames, cfg.dim), persistent=False)
        self.layers = Transformer(cfg.dim, cfg.heads, cfg.ffn_mult, cfg.layers)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        spec = self.stft(mixture)  # (B, 2, T, F)
        log_mag = 0.5 * torch.log(spec.pow(2).sum(dim=1) + 1e-8)  # (B, T, F)
        x = self.proj(self.input_norm(log_mag))
        x = x + self.positions[: x.shape[1]]
        return self.layers(x)


class AudioEmbeddingTransformer(nn.Module):
    """AET: forward(text_emb (B, E), mixture_emb (B, E), frames (B, T, fe_dim)) -> target emb (B, E), unit norm.

    The sequence is [output token, text token, mixture-audio token, FE frames]; each kind gets a learned type
    embedding; the output token's final state is projected to the embedding space and added to the text
    embedding (the projection starts near zero, so training starts from the one-stage condition and moves the
    embedding toward the target audio's).
    """

    def __init__(self, cfg: AETConfig, embedding_dim: int, fe_dim: int):
        super().__init__()
        self.text_in = nn.Linear(embedding_dim, cfg.dim)
        self.audio_in = nn.Linear(embedding_dim, cfg.dim)
        self.frames_in = nn.Identity() if fe_dim == cfg.dim else nn.Linear(fe_dim, cfg.dim)
        self.output_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.type_embedding = nn.Parameter(torch.randn(4, cfg.dim) * 0.02)  # output, text, audio, frames
        self.layers = Transformer(cfg.dim, cfg.heads, cfg.ffn_mult, cfg.layers)
        self.head = nn.Linear(cfg.dim, embedding_dim)
        nn.init.normal_(self.head.weight, std=1e-3)  # starts near the text embedding (the one-stage condition)
        nn.init.zeros_(self.head.bias)

    def forward(self, text_emb: torch.Tensor, mixture_emb: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        b = text_emb.shape[0]
        t = self.type_embedding
        seq = torch.cat((
            (self.output_token + t[0]).expand(b, 1, -1),
            (self.text_in(text_emb) + t[1])[:, None],
            (self.audio_in(mixture_emb) + t[2])[:, None],
            self.frames_in(frames) + t[3],
        ), dim=1)
        return nn.functional.normalize(text_emb + self.head(self.layers(seq)[:, 0]), dim=-1)

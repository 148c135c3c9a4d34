"""The conditional denoiser (CD, paper 2.2, Fig. 3).

"A streamlined variant of the main separation architecture that excludes TEACA modules while retaining the
same structured TRCNN and FA components." It denoises a noise-corrupted target given the ASM's condition
vectors; ACT (Algorithm 1) asks its predictions for two noise draws to agree, which regularises the ASM
through the condition. It is used in training only.
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import HybridSepConfig
from training.models.asm import FrameToBins, SubbandSpectrogram, TRCNNStack, apply_complex_mask, compress


class ConditionalDenoiser(nn.Module):
    """forward(noisy (B, N), condition (B, T, 4*cond_dim)) -> denoised (B, N)."""

    def __init__(self, cfg: HybridSepConfig):
        super().__init__()
        a = cfg.asm
        self.compress_power = a.compress
        self.spectrogram = SubbandSpectrogram(a)
        self.condition_to_bins = FrameToBins(4 * a.cond_dim, a.side_channels, a.n_fft // 2)
        self.stack = TRCNNStack(a, 2 * a.subbands + a.side_channels, embedding_dim=None)

    def forward(self, noisy: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        spec = self.spectrogram(noisy)
        x = torch.cat((compress(spec[:, :, :-1], self.compress_power), self.condition_to_bins(condition)), dim=-1)
        mask, _ = self.stack(x)
        return self.spectrogram.inverse(apply_complex_mask(mask, spec), noisy.shape[-1])

"""The conditional denoiser (CD, paper 2.2, Fig. 3) as a consistency function.

"A streamlined variant of the main separation architecture that excludes TEACA modules while retaining the
same structured TRCNN and FA components." It maps a noise-corrupted target and the ASM's condition vectors c to
the clean target; ACT (Algorithm 1) asks its predictions from two noise levels of one trajectory to agree
(eq. 1), which regularises the ASM through c: to denoise well at high noise the CD needs c to say what the target
is. It is used in training only.

The paper sets the consistency part "the same as the consistency model experience [8] [17]", so the CD is a
consistency model f(x, sigma) in the parameterisation of Song et al. [8] (section 3 and appendix C), which
improved consistency training (iCT, Song & Dhariwal [17]) keeps:

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, sigma, c)
    c_skip(sigma) = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)
    c_out(sigma)  = sigma_data (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2)
    c_in(sigma)   = 1 / sqrt(sigma^2 + sigma_data^2)

with sigma_min = 0.002 (`schedules.SIGMA_MIN`, [8] [17]) and sigma_data the standard deviation of the training
targets, measured on the data (`DenoiserConfig.sigma_data`; [8] and [17] use 0.5 for images in [-1, 1]). At
sigma_min, c_skip = 1 and c_out = 0: f(x, sigma_min) = x exactly, the boundary condition that makes the
consistency loss reward denoising. Without it an output of zeros satisfies eq. 1 for every pair of noise levels
(a collapse in which the CD no longer asks anything of the ASM); with it, agreeing across noise levels means
agreeing with the identity at sigma_min, that is, recovering the target.

F is the TRCNN/FA stack of the ASM without TEACA. It reads the compressed subband spectrogram X of c_in x (unit
variance at every noise level) with the condition projected per bin, and the noise level as Fourier features
of c_noise(sigma) = ln(sigma) / 4 (the noise conditioning of EDM, Karras et al. 2022, used by [8]) through a
small MLP, fed to every block as a per-channel scale and shift (`NoiseLevelFiLM`). Fourier frequencies are drawn
once from N(0, 1) per unit of c_noise, a low sensitivity to the noise level: [17] (section 3.1) found lowering the
Fourier scale made consistency training more stable. Its output spectrogram is M * X + P: a complex mask M of
its input, as the ASM's, and a spectrogram P of its own (the stack's last TRCNN gives both, 4 x subbands
channels). At low noise the ideal F is a scaled copy of the input's noise with the sign turned, which a mask
gives bin by bin; at high noise the input is mostly noise, which no mask turns into the target, and P carries
what the condition says. A unit value of P is the size of a bin of unit white noise (`unit_bin`), so F's output
is of unit variance like its input.

The teacher: [8]'s consistency training compares the student with an EMA "target network"; iCT ([17] section
3.2) showed that this EMA teacher biases the objective and drops it: the teacher is the student itself with its
gradient stopped. Algorithm 1 does the same (X_pred2.detach()), and so does `AdversarialConsistentStage`. The EMA
that remains in iCT is of the student's weights, used for sampling; here that is the ASM's EMA (`ema_decay` in
TrainConfig), measured against the raw weights on the validation set.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.config import DenoiserConfig, HybridSepConfig
from training.models.asm import FrameToBins, SubbandSpectrogram, TRCNNStack, apply_complex_mask, compress
from training.schedules import SIGMA_MIN


def consistency_scalings(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in) of [8] (appendix C) for noise levels sigma (B,), each (B,)."""
    c_skip = sigma_data**2 / ((sigma - SIGMA_MIN) ** 2 + sigma_data**2)
    c_out = sigma_data * (sigma - SIGMA_MIN) / torch.sqrt(sigma**2 + sigma_data**2)
    c_in = 1 / torch.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out, c_in


class NoiseLevelEmbedding(nn.Module):
    """sigma (B,) -> (B, dim): Fourier features cos / sin(2 pi w c_noise) of c_noise = ln(sigma) / 4, w ~ N(0, 1)
    drawn once (a fixed seed, kept in the state), then Linear-SiLU-Linear."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        frequencies = torch.randn(cfg.noise_features // 2, generator=torch.Generator().manual_seed(0))
        self.register_buffer("frequencies", frequencies)
        self.mlp = nn.Sequential(nn.Linear(cfg.noise_features, cfg.noise_dim), nn.SiLU(),
                                 nn.Linear(cfg.noise_dim, cfg.noise_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * (sigma.float().log() / 4)[:, None] * self.frequencies[None, :]
        return self.mlp(torch.cat((angles.cos(), angles.sin()), dim=-1))


class ConditionalDenoiser(nn.Module):
    """forward(noisy (B, N), sigma (B,), condition (B, T, 4*cond_dim)) -> f(noisy, sigma) (B, N)."""

    def __init__(self, cfg: HybridSepConfig):
        super().__init__()
        a = cfg.asm
        self.sigma_data = cfg.cd.sigma_data
        self.compress_power = a.compress
        self.spectrogram = SubbandSpectrogram(a)
        self.condition_to_bins = FrameToBins(4 * a.cond_dim, a.side_channels, a.n_fft // 2)
        self.noise_embedding = NoiseLevelEmbedding(cfg.cd)
        self.stack = TRCNNStack(a, 2 * a.subbands + a.side_channels, embedding_dim=None, noise_dim=cfg.cd.noise_dim,
                                out_channels=4 * a.subbands)  # the mask M, then the spectrogram P
        # RMS of a real or imaginary part of a subband STFT bin of unit white noise: subband k has variance
        # sum(h_k^2) (its analysis filter's energy), a bin E|X|^2 = variance * sum(window^2), half in each part.
        filters = self.spectrogram.pqmf.analysis_filters[:, 0].double()
        window = torch.as_tensor(self.spectrogram.stft.window)
        self.unit_bin = float(torch.sqrt(filters.pow(2).sum(dim=1).mean() * window.pow(2).sum() / 2))

    def network(self, x: torch.Tensor, sigma: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """F(x, sigma, c) for an input x already scaled by c_in (unit variance): a waveform (B, N)."""
        spec = self.spectrogram(x)
        h = torch.cat((compress(spec[:, :, :-1], self.compress_power), self.condition_to_bins(condition)), dim=-1)
        out, _ = self.stack(h, noise=self.noise_embedding(sigma))
        mask, own = out.chunk(2, dim=-1)
        own = nn.functional.pad(own, (0, 0, 0, spec.shape[2] - own.shape[2]))  # the Nyquist bin: 0
        return self.spectrogram.inverse(apply_complex_mask(mask, spec) + self.unit_bin * own, x.shape[-1])

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        c_skip, c_out, c_in = (c[:, None] for c in consistency_scalings(sigma, self.sigma_data))
        return c_skip * noisy + c_out * self.network(c_in * noisy, sigma, condition)

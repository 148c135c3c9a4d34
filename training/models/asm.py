"""The audio separation model (ASM, paper 2.2, Fig. 3) and the pieces it shares with the conditional denoiser.

mixture (B, N) at the training mixtures' level (`input_gain`) -> PQMF (4 subbands) -> STFT per subband
   -> compressed spectrogram (B, T, F, 8)
   ++ SSL frame features (BEATs or YAMNet, at the STFT frames' centre times) projected per bin (B, T, F, side)
-> TRCNN x4 (down) -> [FA, TEACA] x4 -> TRCNN x4 (up, skip connections, a TEACA after each skip)
-> complex ratio mask (B, T, F, 8), unbounded, x mixture spectrogram -> iSTFT -> iPQMF -> separated (B, N), at the
   input's level
The decoder's four feature maps are projected per frame to the CD's condition vectors.
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import ASMConfig, HybridSepConfig
from training.data.manifest import MIXTURE_PEAK
from training.models.beats import BEATs
from training.models.blocks import TRCNN, FrequencyAxisAttention, NoiseLevelFiLM, TargetEmbeddingCrossAttention
from training.models.level import peak_gain
from training.models.frames import stft_frame_centres
from training.models.pqmf import PQMF
from training.models.ssl import build_ssl_encoder
from training.models.stft import STFT


def bins_per_layer(cfg: ASMConfig) -> list[int]:
    """Frequency bins the stack sees at its input and after each of the 8 TRCNNs.

    The stack works on n_fft / 2 bins: the Nyquist bin of each subband is left out (its mask is zero), so the
    bin count halves exactly through the four stride-2 layers.
    """
    bins = [cfg.n_fft // 2]
    for i in range(8):
        bins.append(bins[-1] // cfg.stride if i < 4 else bins[-1] * cfg.stride)
    if cfg.n_fft // 2 % cfg.stride**4:
        raise ValueError(f"n_fft / 2 = {cfg.n_fft // 2} must be divisible by stride^4 = {cfg.stride**4}")
    return bins


class SubbandSpectrogram(nn.Module):
    """PQMF analysis + STFT of every subband, and the inverse. Spectrograms are channels-last, (B, T, F, 2*S),
    with channels ordered (subband 0 real, subband 0 imaginary, subband 1 real, ...)."""

    def __init__(self, cfg: ASMConfig):
        super().__init__()
        self.subbands = cfg.subbands
        self.pqmf = PQMF(cfg.subbands)
        self.stft = STFT(cfg.n_fft, cfg.hop_length)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        b = wave.shape[0]
        bands = self.pqmf.analysis(wave[:, None, :])  # (B, S, N/S)
        spec = self.stft.frames(bands.reshape(b * self.subbands, -1))  # (B*S, T, 2, F)
        _, t, _, f = spec.shape
        return spec.reshape(b, self.subbands, t, 2, f).permute(0, 2, 4, 1, 3).reshape(b, t, f, 2 * self.subbands)

    def inverse(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        b, t, f, _ = spec.shape
        spec = spec.reshape(b, t, f, self.subbands, 2).permute(0, 3, 1, 4, 2).reshape(b * self.subbands, t, 2, f)
        bands = self.stft.inverse_frames(spec, length // self.subbands)
        return self.pqmf.synthesis(bands.reshape(b, self.subbands, -1))[:, 0, :]


def input_gain(mixture: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, 1): the gain that brings each mixture's peak to the training mixtures' peak. The model only
    learns mixtures at that level and separates quieter ones worse (docs/eval: "Input level"), so every input is
    scaled to it first and the output scaled back."""
    return peak_gain(mixture, MIXTURE_PEAK)


def compress(spec: torch.Tensor, power: float) -> torch.Tensor:
    """Magnitude compression |X|^power keeping the phase, on channels-last real/imaginary pairs."""
    pairs = spec.reshape(spec.shape[:-1] + (-1, 2))
    mag = torch.sqrt(pairs.pow(2).sum(dim=-1, keepdim=True) + 1e-10)
    return (pairs * mag.pow(power - 1.0)).reshape(spec.shape)


def apply_complex_mask(mask: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    """Complex product of a mask over the stack's bins and the full spectrogram (its last bin, Nyquist, gets 0)."""
    mask = nn.functional.pad(mask, (0, 0, 0, spec.shape[2] - mask.shape[2]))
    mr, mi = mask[..., 0::2], mask[..., 1::2]
    xr, xi = spec[..., 0::2], spec[..., 1::2]
    return torch.stack((mr * xr - mi * xi, mr * xi + mi * xr), dim=-1).reshape(spec.shape)


class FrameToBins(nn.Module):
    """Frame-wise vectors (B, T, D) -> (B, T, F, channels): a linear map to `channels` values per bin; with `rank`,
    through `rank` values first (a low-rank map: D x rank + rank x F x channels weights instead of D x F x channels)."""

    def __init__(self, dim: int, channels: int, bins: int, rank: int = 0):
        super().__init__()
        self.channels, self.bins = channels, bins
        out = bins * channels
        self.proj = nn.Sequential(nn.Linear(dim, rank), nn.Linear(rank, out)) if rank else nn.Linear(dim, out)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t, _ = frames.shape
        return self.proj(frames).reshape(b, t, self.bins, self.channels)


class TRCNNStack(nn.Module):
    """The U-shaped interleaved stack: TRCNN x4 down, [FA (+ TEACA)] x fa_layers at the bottleneck, TRCNN x4 up
    (+ a TEACA after each of the three skip connections).

    The paper names TEACA one of the stack's interleaved module types without placing it. With TEACA at the
    bottleneck only, the skips give the decoder a path to the mask that never meets the query; a TEACA after
    every skip gives the query a say at each scale. The last TRCNN has no GELU (its output is the mask; see
    `TRCNN`).

    Input (B, T, F, in_channels) over the stack's F = n_fft / 2 bins. With `embedding_dim` None it has no TEACA:
    that is the conditional denoiser's "streamlined variant" (2.2). With `noise_dim` the input of every TRCNN and
    FA block is first modulated by the noise-level embedding (`NoiseLevelFiLM`): the CD's noise-level input.
    Returns the output map (B, T, F, out_channels) and the four decoder maps (the sources of the CD condition);
    `out_channels` defaults to channels[-1], the mask's 2 x subbands.
    """

    def __init__(self, cfg: ASMConfig, in_channels: int, embedding_dim: int | None, noise_dim: int | None = None,
                 out_channels: int | None = None):
        super().__init__()
        bins = bins_per_layer(cfg)
        widths = (in_channels,) + cfg.channels[:-1] + (out_channels or cfg.channels[-1],)
        self.encoder = nn.ModuleList(
            TRCNN(widths[i], widths[i + 1], cfg.lstm_hidden[i], cfg.stride, transpose=False) for i in range(4))
        self.decoder = nn.ModuleList(
            TRCNN(widths[i], widths[i + 1], cfg.lstm_hidden[i], cfg.stride, transpose=True, activation=i < 7)
            for i in range(4, 8))
        width, f = cfg.channels[3], bins[4]
        self.fa = nn.ModuleList(
            FrequencyAxisAttention(width, f, cfg.fa_heads, cfg.fa_kernel, cfg.fa_ffn_mult) for _ in range(cfg.fa_layers))
        self.teaca = self.decoder_teaca = None
        if embedding_dim is not None:
            self.teaca = nn.ModuleList(
                TargetEmbeddingCrossAttention(width, embedding_dim, cfg.teaca_dim, cfg.teaca_heads)
                for _ in range(cfg.fa_layers))
            self.decoder_teaca = nn.ModuleList(
                TargetEmbeddingCrossAttention(cfg.channels[4 + i], embedding_dim, cfg.teaca_dim, cfg.teaca_heads)
                for i in range(3))
        self.noise_film = None
        if noise_dim is not None:  # one per TRCNN (its input width), then one per FA
            self.noise_film = nn.ModuleList(
                [NoiseLevelFiLM(noise_dim, widths[i]) for i in range(8)]
                + [NoiseLevelFiLM(noise_dim, width) for _ in range(cfg.fa_layers)])

    def _film(self, i: int, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return x if self.noise_film is None else self.noise_film[i](x, noise)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None, noise: torch.Tensor | None = None):
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(self._film(i, x, noise))
            skips.append(x)
        for i, fa in enumerate(self.fa):
            x = fa(self._film(8 + i, x, noise))
            if self.teaca is not None:
                x = self.teaca[i](x, embedding)
        maps = []
        for i, block in enumerate(self.decoder):
            x = block(self._film(4 + i, x, noise))
            if i < 3:
                x = x + skips[2 - i]
                if self.decoder_teaca is not None:
                    x = self.decoder_teaca[i](x, embedding)
            maps.append(x)
        return x, maps


class ConditionProjection(nn.Module):
    """Projects the last four TRCNN maps, each with its own linear layer, and concatenates them per frame
    into the CD's condition vectors (paper 2.2): (B, T, 4 * cond_dim)."""

    def __init__(self, cfg: ASMConfig):
        super().__init__()
        bins = bins_per_layer(cfg)[5:]
        self.proj = nn.ModuleList(nn.Linear(c * f, cfg.cond_dim) for c, f in zip(cfg.channels[4:], bins))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([proj(m.flatten(2)) for proj, m in zip(self.proj, maps)], dim=-1)


class AudioSeparationModel(nn.Module):
    """ASM: separates the target from a mixture given the target audio embedding (paper 2.2, Fig. 3).

    forward(mixture (B, N), embedding (B, E)) -> (separated (B, N), condition (B, T, 4*cond_dim))
    N must be a multiple of the subband count.
    """

    def __init__(self, cfg: HybridSepConfig, beats: BEATs | None = None):
        """`beats`: a loaded (pretrained) BEATs encoder for `cfg.ssl == "beats"`; by default a new one is built from
        `cfg.beats`."""
        super().__init__()
        a = cfg.asm
        self.cfg = cfg
        self.spectrogram = SubbandSpectrogram(a)
        bins = a.n_fft // 2
        in_channels = 2 * a.subbands
        self.ssl = None
        if not cfg.no_ssl:
            self.ssl = build_ssl_encoder(cfg, beats)
            self.ssl_to_bins = FrameToBins(self.ssl.dim, a.side_channels, bins, a.ssl_rank)
            in_channels += a.side_channels
        self.stack = TRCNNStack(a, in_channels, cfg.embedding_dim)
        self.condition = ConditionProjection(a)

    def forward(self, mixture: torch.Tensor, embedding: torch.Tensor):
        if mixture.shape[-1] % self.cfg.asm.subbands:
            raise ValueError(f"mixture length must be a multiple of {self.cfg.asm.subbands} samples")
        gain = input_gain(mixture)
        mixture = mixture * gain
        spec = self.spectrogram(mixture)
        x = compress(spec[:, :, :-1], self.cfg.asm.compress)  # the stack leaves out the Nyquist bin
        if self.ssl is not None:
            centres = stft_frame_centres(spec.shape[1], self.cfg.asm.hop_length * self.cfg.asm.subbands
                                         / self.cfg.sample_rate)
            x = torch.cat((x, self.ssl_to_bins(self.ssl(mixture, centres))), dim=-1)
        mask, maps = self.stack(x, embedding)
        separated = self.spectrogram.inverse(apply_complex_mask(mask, spec), mixture.shape[-1])
        return separated / gain, self.condition(maps)

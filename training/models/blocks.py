"""The three block types of the ASM / CD stack (paper 2.2, Fig. 3): TRCNN, FA and TEACA.

Feature maps are channels-last, (batch, frames, bins, channels): the frequency-axis blocks then see one
sequence per frame and the BiLSTMs one sequence per bin with plain reshapes, and the exported graphs carry
almost no transposes.
"""

from __future__ import annotations

import torch
from torch import nn

from training.models.attention import FeedForward, MultiHeadAttention


class FrequencyPatchConv(nn.Module):
    """A Conv2d with kernel (1, s) and stride (1, s) on channels-last maps: each group of s neighbouring bins
    is merged into one, (B, T, F, C_in) -> (B, T, F/s, C_out). Written as a reshape and a linear layer."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.linear = nn.Linear(stride * in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, f, c = x.shape
        return self.linear(x.reshape(b, t, f // self.stride, self.stride * c))


class FrequencyPatchDeconv(nn.Module):
    """The transposed counterpart (ConvTranspose2d, kernel (1, s), stride (1, s)): each bin is split into s bins,
    (B, T, F, C_in) -> (B, T, F*s, C_out)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride, self.out_channels = stride, out_channels
        self.linear = nn.Linear(in_channels, stride * out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, f, _ = x.shape
        return self.linear(x).reshape(b, t, f * self.stride, self.out_channels)


class TRCNN(nn.Module):
    """Temporal recurrent CNN (paper 2.2, item 1): a CNN layer (Conv2d when down-sampling, ConvTranspose2d when
    up-sampling, striding along frequency), a GELU, and a BiLSTM along time run for every frequency bin.
    The BiLSTM output is projected back to the channel count and added to its input.

    Table 1 gives kernels (1, 1) with stride 2. Taken literally, a stride-2 conv with a one-bin kernel reads only
    every other bin and its transposed conv writes only every other bin, so half the spectrum would never be
    modelled. The kernel's frequency extent is therefore widened to the stride, (1, 2): the smallest kernel that
    reads and writes every bin. The time extent stays 1, as in Table 1.

    `lstm_hidden` 0 leaves the BiLSTM out (a CPU-size option; every TRCNN of the paper preset has one).
    `activation` False leaves the GELU out: the stack's last TRCNN, whose output is the mask (or the CD's
    spectrogram), has none, since GELU(x) >= -0.17 would bound every component of the mask from below.
    """

    def __init__(self, in_channels: int, out_channels: int, lstm_hidden: int, stride: int, transpose: bool,
                 activation: bool = True):
        super().__init__()
        conv = FrequencyPatchDeconv if transpose else FrequencyPatchConv
        self.conv = conv(in_channels, out_channels, stride)
        self.act = nn.GELU() if activation else nn.Identity()
        self.lstm = self.proj = None
        if lstm_hidden:
            self.lstm = nn.LSTM(out_channels, lstm_hidden, bidirectional=True)  # sequence-first: ONNX's layout
            self.proj = nn.Linear(2 * lstm_hidden, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        if self.lstm is None:
            return y
        b, t, f, c = y.shape
        seq = y.transpose(0, 1).reshape(t, b * f, c)  # one sequence over time per (item, bin)
        r, _ = self.lstm(seq)
        r = self.proj(r).reshape(t, b, f, c).transpose(0, 1)
        return y + r


class ConformerConv(nn.Module):
    """The conformer convolution module: pointwise conv + GLU, depthwise conv, norm, SiLU, pointwise conv,
    on (N, L, D) sequences."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        # A layer norm where the original conformer has batch norm: per-item statistics keep a distributed
        # step identical to a single-process step on the same global batch.
        self.depthwise_norm = nn.LayerNorm(dim)
        self.pointwise_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D)
        y = nn.functional.glu(self.pointwise_in(self.norm(x)), dim=-1)
        y = self.depthwise(y.transpose(1, 2)).transpose(1, 2)
        return self.pointwise_out(nn.functional.silu(self.depthwise_norm(y)))


class FrequencyAxisAttention(nn.Module):
    """FA (paper 2.2, item 2): one conformer layer along the frequency axis of every frame
    (half feed-forward, self-attention, convolution module, half feed-forward, final norm).
    A learned embedding of the bin index gives attention the absolute frequency.
    """

    def __init__(self, channels: int, bins: int, heads: int, kernel: int, ffn_mult: int):
        super().__init__()
        self.bin_embedding = nn.Parameter(torch.zeros(1, bins, channels))
        self.ff1 = FeedForward(channels, ffn_mult, nn.SiLU)  # conformer feed-forward modules use Swish
        self.attn_norm = nn.LayerNorm(channels)
        self.attn = MultiHeadAttention(channels, heads)
        self.conv = ConformerConv(channels, kernel)
        self.ff2 = FeedForward(channels, ffn_mult, nn.SiLU)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, f, c = x.shape
        h = x.reshape(b * t, f, c) + self.bin_embedding
        h = h + 0.5 * self.ff1(h)
        a = self.attn_norm(h)
        h = h + self.attn(a, a, a)
        h = h + self.conv(h)
        h = self.norm(h + 0.5 * self.ff2(h))
        return h.reshape(b, t, f, c)


class TargetEmbeddingCrossAttention(nn.Module):
    """TEACA (paper 2.2, item 3): channel-adaptive attention with the target audio embedding as the query.

    For every frame, the projected target embedding attends over the frame's frequency bins; the attended
    context (plus the query itself) gives a per-channel scale and shift (FiLM) of that frame's feature map.
    """

    def __init__(self, channels: int, embedding_dim: int, dim: int, heads: int):
        super().__init__()
        self.query = nn.Linear(embedding_dim, dim)
        # A unit-norm embedding has entries of about 1/sqrt(E): normalised, the query's size no longer shrinks the
        # attention to a plain average and the query's share of the context to nothing.
        self.query_norm = nn.LayerNorm(dim)
        self.key_norm = nn.LayerNorm(channels)
        self.attn = MultiHeadAttention(dim, heads, kv_dim=channels)
        self.film = nn.Linear(dim, 2 * channels)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        b, t, f, c = x.shape
        keys = self.key_norm(x.reshape(b * t, f, c))
        q = self.query_norm(self.query(embedding))  # (B, dim)
        q = q[:, None, None, :].expand(b, t, 1, q.shape[-1]).reshape(b * t, 1, q.shape[-1])
        context = self.attn(q, keys, keys) + q  # (B*T, 1, dim)
        scale, shift = self.film(context).reshape(b, t, 1, 2 * c).chunk(2, dim=-1)  # (B, T, 1, C) each
        return x * (1 + scale) + shift


class NoiseLevelFiLM(nn.Module):
    """A per-channel scale and shift of a channels-last map from the noise-level embedding (B, D), the way
    diffusion and consistency networks feed the noise level to their blocks: x (1 + scale) + shift."""

    def __init__(self, noise_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(noise_dim, 2 * channels)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(noise)[:, None, None, :].chunk(2, dim=-1)  # (B, 1, 1, C) each
        return x * (1 + scale) + shift

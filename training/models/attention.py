"""Multi-head attention and a pre-norm transformer layer, written with `scaled_dot_product_attention` so the
exported ONNX graphs are plain MatMul/Softmax (torch's fused inference fast paths do not export)."""

from __future__ import annotations

import torch
from torch import nn


class MultiHeadAttention(nn.Module):
    """forward(query (N, Lq, dim), keys (N, Lk, kv_dim), values (N, Lk, kv_dim)) -> (N, Lq, dim)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        kv_dim = kv_dim or dim
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        return x.reshape(n, length, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        n, length, dim = query.shape
        y = nn.functional.scaled_dot_product_attention(
            self._split(self.q(query)), self._split(self.k(keys)), self._split(self.v(values)))
        return self.out(y.transpose(1, 2).reshape(n, length, dim))


class FeedForward(nn.Sequential):
    """Pre-norm feed-forward: LayerNorm, Linear (x mult), activation, Linear."""

    def __init__(self, dim: int, mult: int, activation: type[nn.Module] = nn.GELU):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), activation(), nn.Linear(dim * mult, dim))


class TransformerLayer(nn.Module):
    """Pre-norm transformer encoder layer: x + MHA(LN(x)), then x + FFN(x)."""

    def __init__(self, dim: int, heads: int, ffn_mult: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.ffn = FeedForward(dim, ffn_mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn_norm(x)
        x = x + self.attn(a, a, a)
        return x + self.ffn(x)


class Transformer(nn.Sequential):
    """`layers` TransformerLayers and a final LayerNorm: (N, L, dim) -> (N, L, dim)."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, layers: int):
        super().__init__(*(TransformerLayer(dim, heads, ffn_mult) for _ in range(layers)), nn.LayerNorm(dim))

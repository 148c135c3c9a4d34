"""BEATs audio encoder (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers", arXiv:2212.09058).

Hybrid-Sep (section 2.2) concatenates frame-wise features of a frozen 90M-parameter BEATs encoder [14] with
the subband spectrograms. This module rebuilds the published architecture (microsoft/unilm, folder `beats/`)
with the same parameter names, so an official checkpoint such as `BEATs_iter3_plus_AS2M.pt`
(a torch file `{'cfg': dict, 'model': state_dict}`) loads unchanged:

    wave (16 kHz) -> * 2**15 -> Kaldi fbank (128 mel bins, 25/10 ms) -> normalise
      -> patch_embedding (16x16 conv over time x mel) -> layer_norm -> post_extract_proj
      -> encoder: pos_conv (weight-normed grouped conv) -> layer_norm -> N x post-norm transformer layers
         (deep-norm residual scaling, gated relative position bias shared by all layers)
      -> (B, patches, encoder_embed_dim), patches ordered time-major, mel-minor.

Padding masks of the original are not supported: every item of a batch has the same length.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.models.fbank import KaldiFbank

# Preprocessing of the official `BEATs.preprocess`.
SAMPLE_RATE = 16000  # ta_kaldi.fbank(sample_frequency=16000); Hybrid-Sep section 4: BEATs takes 16 kHz
WAVE_SCALE = 2**15  # `waveform * 2 ** 15`: float audio in [-1, 1] to the int16 range Kaldi expects
NUM_MEL_BINS = 128  # ta_kaldi.fbank(num_mel_bins=128)
FRAME_LENGTH_MS = 25.0  # ta_kaldi.fbank(frame_length=25)
FRAME_SHIFT_MS = 10.0  # ta_kaldi.fbank(frame_shift=10)
FBANK_MEAN = 15.41663  # BEATs.preprocess default fbank_mean
FBANK_STD = 6.55582  # BEATs.preprocess default fbank_std; the official code divides by 2 * fbank_std

# MultiheadAttention of the official backbone: the gate projection has 8 outputs, summed in 2 groups of 4.
GATE_OUTPUTS = 8
GATE_GROUPS = 2


@dataclass
class BEATsConfig:
    """Field names and defaults of the official `BEATsConfig` (microsoft/unilm beats/BEATs.py).

    The defaults are the official ones (note `input_patch_size=-1` there: use `iter3()` for a buildable
    full-size model with the settings of the released iter3 checkpoints).
    """

    input_patch_size: int = -1  # patch size of the patch embedding
    embed_dim: int = 512  # patch embedding dimension
    conv_bias: bool = False  # bias in the patch embedding conv

    encoder_layers: int = 12  # number of transformer layers
    encoder_embed_dim: int = 768  # transformer width
    encoder_ffn_embed_dim: int = 3072  # feed-forward width
    encoder_attention_heads: int = 12  # attention heads
    activation_fn: str = "gelu"  # feed-forward activation

    layer_wise_gradient_decay_ratio: float = 1.0  # gradient scale applied before every layer
    layer_norm_first: bool = False  # pre-norm (True) or post-norm (False) layers
    deep_norm: bool = False  # DeepNet residual scaling of post-norm layers

    dropout: float = 0.1  # dropout in the transformer
    attention_dropout: float = 0.1  # dropout on attention weights
    activation_dropout: float = 0.0  # dropout after the feed-forward activation
    encoder_layerdrop: float = 0.0  # probability of skipping a layer in training
    dropout_input: float = 0.0  # dropout on the patch features

    conv_pos: int = 128  # kernel size of the convolutional positional embedding
    conv_pos_groups: int = 16  # groups of the convolutional positional embedding

    relative_position_embedding: bool = False  # learned relative position bias in attention
    num_buckets: int = 320  # relative position buckets
    max_distance: int = 1280  # distance at which the buckets saturate
    gru_rel_pos: bool = False  # gate the relative position bias by the query

    finetuned_model: bool = False  # checkpoint has an AudioSet tagging head (`predictor`)
    predictor_dropout: float = 0.1  # dropout before the tagging head
    predictor_class: int = 527  # AudioSet classes

    @classmethod
    def from_dict(cls, d: dict) -> BEATsConfig:
        """Config from an official `cfg` dict; keys that are not fields are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def iter3(cls, finetuned_model: bool = False) -> BEATsConfig:
        """Settings of the released iter3 checkpoints (`cfg` of BEATs_iter3.pt / BEATs_iter3_plus_AS2M.pt).

        This is the 90M-parameter encoder the paper uses (section 2.2).
        """
        return cls(
            input_patch_size=16,
            embed_dim=512,
            conv_bias=False,
            encoder_layers=12,
            encoder_embed_dim=768,
            encoder_ffn_embed_dim=3072,
            encoder_attention_heads=12,
            activation_fn="gelu",
            layer_wise_gradient_decay_ratio=0.6,
            layer_norm_first=False,
            deep_norm=True,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            encoder_layerdrop=0.05,
            dropout_input=0.0,
            conv_pos=128,
            conv_pos_groups=16,
            relative_position_embedding=True,
            num_buckets=320,
            max_distance=800,
            gru_rel_pos=True,
            finetuned_model=finetuned_model,
            predictor_dropout=0.0,
            predictor_class=527,
        )


ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x.float()).type_as(x),  # the official `gelu` runs in float32
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


class WeightNormConv1d(nn.Module):
    """Conv1d with weight normalisation over every axis but the kernel axis (`weight_norm(dim=2)`).

    Holds the parameters `weight_g` (1, 1, kernel), `weight_v` (out, in / groups, kernel) and `bias` under
    the names `torch.nn.utils.weight_norm` gives them, and computes `weight = g * v / ||v||` in forward.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        # Official init: normal(0, sqrt(4 / (conv_pos * channels))), zero bias; weight_norm sets g = ||v||.
        v = torch.randn(channels, channels // groups, kernel_size) * math.sqrt(4.0 / (kernel_size * channels))
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(channels))

    def weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T + 1 - kernel % 2)."""
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class DropLastFrame(nn.Module):
    """Drops the extra output frame an even kernel with `padding = kernel // 2` produces (`SamePad`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :-1]


def relative_position_bucket_table(num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of a non-positive relative position -d for d = 0 .. max_distance, as a (max_distance + 1,) long.

    The official `_relative_positions_bucket` (bidirectional): half the buckets per sign; distances below a
    quarter of the buckets get their own bucket, larger ones share log-spaced buckets up to `max_distance`,
    beyond which the last bucket is used. A positive position d uses `table[d] + num_buckets // 2`. Computed
    with the same float32 torch ops as the original so the buckets agree exactly.
    """
    half = num_buckets // 2
    max_exact = half // 2
    distance = torch.arange(max_distance + 1, dtype=torch.long)
    log_bucket = max_exact + (
        torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).to(torch.long)
    log_bucket = torch.minimum(log_bucket, torch.full_like(log_bucket, half - 1))
    return torch.where(distance < max_exact, distance, log_bucket)


class BEATsSelfAttention(nn.Module):
    """Multi-head self-attention with the gated relative position bias of BEATs (official `self_attn`)."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        dim, heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        if dim % heads:
            raise ValueError(f"encoder_embed_dim {dim} is not divisible by {heads} heads")
        self.num_heads = heads
        self.head_dim = dim // heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = cfg.attention_dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.half_buckets = cfg.num_buckets // 2
        if cfg.relative_position_embedding:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, heads)
            table = relative_position_bucket_table(cfg.num_buckets, cfg.max_distance)
            self.register_buffer("bucket_table", table, persistent=False)
        self.gru_rel_pos = cfg.gru_rel_pos
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, GATE_OUTPUTS)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def position_bias(self, length: torch.Tensor | int) -> torch.Tensor:
        """Ungated relative position bias (heads, length, length) from `relative_attention_bias`."""
        position = torch.arange(length, device=self.bucket_table.device)
        relative = position[None, :] - position[:, None]  # key position - query position
        distance = relative.abs().clamp(max=self.bucket_table.shape[0] - 1)
        bucket = self.bucket_table[distance] + (relative > 0).long() * self.half_buckets
        return self.relative_attention_bias(bucket).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, D), position_bias (heads, L, L) or None -> (B, L, D)."""
        batch, length, dim = x.shape
        q, k, v = (
            proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        bias = None
        if position_bias is not None:
            bias = position_bias.unsqueeze(0)
            if self.gru_rel_pos:
                # Gate from the unscaled query: sigmoid of 2 sums of 4 projections, a * (b * grep_a - 1) + 2.
                gates = self.grep_linear(q).view(batch, self.num_heads, length, GATE_GROUPS, -1).sum(-1)
                gate_a, gate_b = torch.sigmoid(gates).chunk(GATE_GROUPS, dim=-1)
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
        dropout = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=self.scaling)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class BEATsEncoderLayer(nn.Module):
    """Transformer layer (official `TransformerSentenceEncoderLayer`), post-norm with deep-norm by default."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        if cfg.activation_fn not in ACTIVATIONS:
            raise ValueError(f"activation_fn {cfg.activation_fn!r} is not one of {sorted(ACTIVATIONS)}")
        self.activation = ACTIVATIONS[cfg.activation_fn]
        self.self_attn = BEATsSelfAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)
        self.layer_norm_first = cfg.layer_norm_first
        # DeepNet (Wang et al. 2022) residual scale alpha = (2 N)^(1/4), as in the official layer.
        self.residual_scale = math.pow(2 * cfg.encoder_layers, 0.25) if cfg.deep_norm else 1.0

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation_dropout(self.activation(self.fc1(x)))))

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D)."""
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), position_bias))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.residual_scale + self.dropout(self.self_attn(x, position_bias)))
        return self.final_layer_norm(x * self.residual_scale + self.feed_forward(x))


class BEATsEncoder(nn.Module):
    """Convolutional positional embedding + transformer layers (official `TransformerEncoder`)."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        trim = [DropLastFrame()] if cfg.conv_pos % 2 == 0 else []
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups), *trim, nn.GELU())
        self.layers = nn.ModuleList(BEATsEncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        if cfg.relative_position_embedding:
            # One bias table for all layers: the official encoder re-points every layer at layer 0's module,
            # so each layer's key is in the state dict and they all load into the same tensor.
            shared = self.layers[0].self_attn.relative_attention_bias
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = shared
        self.layer_norm = nn.LayerNorm(dim)
        self.relative_position_embedding = cfg.relative_position_embedding
        self.layer_norm_first = cfg.layer_norm_first
        self.dropout = nn.Dropout(cfg.dropout)
        self.layerdrop = cfg.encoder_layerdrop
        self.gradient_decay = cfg.layer_wise_gradient_decay_ratio
        self.reset_parameters(cfg)

    def reset_parameters(self, cfg: BEATsConfig) -> None:
        """Official init: BERT init (normal 0.02, zero bias) of linears/embeddings, then deep-norm xavier."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if cfg.deep_norm:
            beta = math.pow(8 * cfg.encoder_layers, -0.25)  # DeepNet init gain (8 N)^(-1/4)
            for layer in self.layers:
                nn.init.xavier_normal_(layer.self_attn.q_proj.weight, gain=1.0)
                nn.init.xavier_normal_(layer.self_attn.k_proj.weight, gain=1.0)
                for linear in (layer.self_attn.v_proj, layer.self_attn.out_proj, layer.fc1, layer.fc2):
                    nn.init.xavier_normal_(linear.weight, gain=beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D)."""
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        position_bias = None
        if self.relative_position_embedding:
            position_bias = self.layers[0].self_attn.position_bias(x.shape[1])
        for layer in self.layers:
            if self.training and self.gradient_decay != 1.0 and x.requires_grad:
                x = x.clone()
                x.register_hook(lambda grad: grad * self.gradient_decay)
            if self.training and self.layerdrop > 0 and float(torch.rand(())) < self.layerdrop:
                continue
            x = layer(x, position_bias)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


class BEATs(nn.Module):
    """BEATs encoder with the official parameter names; input 16 kHz waves in [-1, 1]."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        if cfg.input_patch_size <= 0 or NUM_MEL_BINS % cfg.input_patch_size:
            raise ValueError(
                f"input_patch_size {cfg.input_patch_size} must be a positive divisor of {NUM_MEL_BINS}"
            )
        if cfg.deep_norm and cfg.layer_norm_first:
            raise ValueError("deep_norm applies to post-norm layers only (layer_norm_first=False)")
        self.cfg = cfg
        self.fbank = KaldiFbank(SAMPLE_RATE, NUM_MEL_BINS, FRAME_LENGTH_MS, FRAME_SHIFT_MS)
        patch = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=patch, stride=patch, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim) if cfg.embed_dim != cfg.encoder_embed_dim else None
        )
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = BEATsEncoder(cfg)
        if cfg.finetuned_model:
            self.predictor_dropout = nn.Dropout(cfg.predictor_dropout)
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)
        else:
            self.predictor = None

    @property
    def freq_patches(self) -> int:
        """Patches along the mel axis (8 for the official 16x16 patches of 128 bins)."""
        return NUM_MEL_BINS // self.cfg.input_patch_size

    def normalized_fbank(self, wave16k: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, frames, 128): official `preprocess` (int16-scaled Kaldi fbank, global mean/std)."""
        fbank = self.fbank(wave16k * WAVE_SCALE)
        return (fbank - FBANK_MEAN) / (2 * FBANK_STD)

    def extract_features(self, wave16k: torch.Tensor) -> torch.Tensor:
        """(B, N) 16 kHz waves -> (B, time_patches * freq_patches, encoder_embed_dim), time-major.

        time_patches = fbank frames // input_patch_size (the conv drops the remainder, as the original).
        """
        fbank = self.normalized_fbank(wave16k).unsqueeze(1)  # (B, 1, frames, mel)
        patches = self.patch_embedding(fbank)  # (B, embed_dim, time_patches, freq_patches)
        x = self.layer_norm(patches.flatten(2).transpose(1, 2))
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(self.dropout_input(x))

    def time_patch_features(self, wave16k: torch.Tensor) -> torch.Tensor:
        """(B, N) 16 kHz waves -> (B, time_patches, encoder_embed_dim): patch features averaged over the mel
        patches. Their centre times are given by :meth:`patch_centre_seconds`."""
        x = self.extract_features(wave16k)
        batch, _, dim = x.shape
        return x.view(batch, -1, self.freq_patches, dim).mean(dim=2)

    def patch_centre_seconds(self) -> tuple[float, float]:
        """(centre of time patch 0, spacing) in seconds. Fbank frame t covers samples [160 t, 160 t + 400) (Kaldi's
        snip_edges), centred at 160 t + 200; time patch p covers frames 16 p .. 16 p + 15."""
        patch, shift = self.cfg.input_patch_size, self.fbank.frame_shift
        first = ((patch - 1) / 2 * shift + self.fbank.frame_length / 2) / SAMPLE_RATE
        return first, patch * shift / SAMPLE_RATE

    def tag_probabilities(self, wave16k: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, predictor_class) AudioSet tag probabilities of a fine-tuned checkpoint."""
        if self.predictor is None:
            raise RuntimeError("this BEATs config has no tagging head (finetuned_model=False)")
        logits = self.predictor(self.predictor_dropout(self.extract_features(wave16k)))
        return torch.sigmoid(logits.mean(dim=1))

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the official `{'cfg': dict, 'model': state_dict}` file atomically."""
        path = Path(path)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"cfg": self.cfg.to_dict(), "model": state}, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> BEATs:
        """Load an official (or `save_checkpoint`) file; the state dict must match the config exactly."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"BEATs checkpoint {path} does not exist")
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # a damaged file fails anywhere inside the unpickler
            reason = f"{type(error).__name__}: {error}"
            raise ValueError(f"{path}: not a readable BEATs checkpoint ({reason})") from error
        if not isinstance(checkpoint, dict) or not {"cfg", "model"} <= checkpoint.keys():
            raise ValueError(f"{path}: a BEATs checkpoint is a dict with 'cfg' and 'model' entries")
        model = cls(BEATsConfig.from_dict(dict(checkpoint["cfg"])))
        state = checkpoint["model"]
        expected = set(model.state_dict().keys())
        missing = sorted(expected - state.keys())
        unexpected = sorted(state.keys() - expected)
        if missing or unexpected:
            raise ValueError(
                f"{path}: state dict does not match its cfg; missing {missing}, unexpected {unexpected}"
            )
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"{path}: state dict does not match its cfg ({error})") from error
        return model.to(map_location)

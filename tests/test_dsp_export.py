"""Each DSP block exports with the TorchScript ONNX exporter (opset 17) and ONNX Runtime reproduces torch.

Batch and time are dynamic axes; every graph is run at two sizes, one of them 10 s at 44.1 kHz
(10 s at 16 kHz for the fbank, which only runs at the BEATs rate). The STFT, power spectrogram and fbank graphs
compute their DFT bases, and the resampling graphs their filters, instead of storing them, so their files stay
far smaller than those tables.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from training.models.fbank import KaldiFbank
from training.models.mel import PowerSpectrogram
from training.models.pqmf import PQMF
from training.models.resample import Resample
from training.models.stft import STFT

OPSET = 17
FULL_BAND_RATE = 44100
BEATS_RATE = 16000
TEN_SECONDS = 10 * FULL_BAND_RATE
SPECTRUM_TOLERANCE = 1e-4  # max abs, spectra of signals of amplitude about 1
AUDIO_SNR_DB = 60.0
# Log-mel values of 2**15-scaled audio span about -16 (the log floor) to 25. A log difference d is a
# relative energy difference d; a quiet band next to loud ones is a small difference of large float32
# products, so its relative rounding error depends on each runtime's summation order (about 2e-4 seen
# here in the quietest bands, while loud bands agree to 1e-6). The bound is therefore 1e-4 of the
# feature scale (max |feature|, about 2.5e-3 in log units): still far below what any real error would cause.
# Power spectra are held to the same share of their largest value.
RELATIVE_TOLERANCE = 1e-4


class Method(nn.Module):
    """Exports one method of a module as the graph."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.module, self.method)(x)


@dataclass
class ExportCase:
    name: str
    module: nn.Module
    make_input: Callable[[int, int], torch.Tensor]  # (batch, samples) -> graph input
    input_axes: dict[int, str]
    output_axes: dict[int, str]
    lengths: tuple[int, int]  # samples at the module's own rate; the first is 10 s
    compare: str  # "spectrum", "audio" or "relative" (to the largest value)
    max_file_bytes: int | None = None  # for graphs that must not store their tables


def waveform(batch: int, samples: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(samples)
    return torch.rand(batch, samples, generator=generator) * 2 - 1


def scaled_16k_speechlike(batch: int, samples: int) -> torch.Tensor:
    t = torch.arange(samples, dtype=torch.float64) / BEATS_RATE
    voiced = sum(0.3 / (h + 1) * torch.sin(2 * torch.pi * 180 * (h + 1) * t) for h in range(10))
    noise = 0.05 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(samples), dtype=torch.float64)
    return ((voiced + noise) * 2**15).float()


PQMF_BANK = PQMF()
STFT_1024 = STFT(1024, 256)
# The (1024, 1026) STFT bases take 4.2 MB each, the fbank's (400, 512) 0.8 MB, CLAP's (402, 400) power
# spectrogram basis 0.6 MB, the 44.1 -> 16 kHz filters (160, 535) 0.3 MB; the graphs that compute them measure
# 24 kB (forward), 43 kB (inverse), 144 kB (the fbank, 128 kB of which are its mel filters), 8 kB and 13 kB.
TABLE_FREE_BYTES = 200_000

CASES = [
    ExportCase(
        "pqmf_analysis",
        Method(PQMF_BANK, "analysis"),
        lambda b, n: waveform(b, n)[:, None, :],
        {0: "batch", 2: "samples"},
        {0: "batch", 2: "subband_samples"},
        (TEN_SECONDS, 12_000),
        "audio",
    ),
    ExportCase(
        "pqmf_synthesis",
        Method(PQMF_BANK, "synthesis"),
        lambda b, n: PQMF_BANK.analysis(waveform(b, n)[:, None, :]),
        {0: "batch", 2: "subband_samples"},
        {0: "batch", 2: "samples"},
        (TEN_SECONDS, 12_000),
        "audio",
    ),
    ExportCase(
        "stft_forward",
        STFT_1024,
        waveform,
        {0: "batch", 1: "samples"},
        {0: "batch", 2: "frames"},
        (TEN_SECONDS, 12_345),
        "spectrum",
        TABLE_FREE_BYTES,
    ),
    ExportCase(
        "stft_inverse",
        Method(STFT_1024, "inverse"),
        lambda b, n: STFT_1024(waveform(b, n)),
        {0: "batch", 2: "frames"},
        {0: "batch", 1: "samples"},
        (TEN_SECONDS, 12_345),
        "audio",
        TABLE_FREE_BYTES,
    ),
    ExportCase(
        "kaldi_fbank",
        KaldiFbank(),
        scaled_16k_speechlike,
        {0: "batch", 1: "samples"},
        {0: "batch", 1: "frames"},
        (10 * BEATS_RATE, 16_037),
        "relative",
        TABLE_FREE_BYTES,
    ),
    ExportCase(
        "power_spectrogram",
        PowerSpectrogram(400, 160),
        waveform,
        {0: "batch", 1: "samples"},
        {0: "batch", 2: "frames"},
        (10 * BEATS_RATE, 16_037),
        "relative",
        TABLE_FREE_BYTES,
    ),
    ExportCase(
        "resample_44k_16k",
        Resample(FULL_BAND_RATE, 16000),
        waveform,
        {0: "batch", 1: "samples"},
        {0: "batch", 1: "resampled"},
        (TEN_SECONDS, 12_345),
        "audio",
        TABLE_FREE_BYTES,
    ),
    ExportCase(
        "resample_44k_48k",
        Resample(FULL_BAND_RATE, 48000),
        waveform,
        {0: "batch", 1: "samples"},
        {0: "batch", 1: "resampled"},
        (TEN_SECONDS, 12_345),
        "audio",
        TABLE_FREE_BYTES,
    ),
]


def export(case: ExportCase, directory: Path) -> ort.InferenceSession:
    path = directory / f"{case.name}.onnx"
    example = case.make_input(1, case.lengths[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            case.module,
            (example,),
            str(path),
            opset_version=OPSET,
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": case.input_axes, "output": case.output_axes},
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    estimate, reference = estimate.astype(np.float64), reference.astype(np.float64)
    with np.errstate(divide="ignore"):  # identical outputs give an infinite SNR
        return float(10 * np.log10(np.sum(reference**2) / np.sum((estimate - reference) ** 2)))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_onnx_matches_torch(case: ExportCase, tmp_path: Path):
    session = export(case, tmp_path)
    if case.max_file_bytes is not None:
        assert (tmp_path / f"{case.name}.onnx").stat().st_size <= case.max_file_bytes
    for batch, samples in [(1, case.lengths[0]), (2, case.lengths[1])]:
        graph_input = case.make_input(batch, samples)
        with torch.no_grad():
            expected = case.module(graph_input).numpy()
        (actual,) = session.run(None, {"input": graph_input.numpy()})
        assert actual.shape == expected.shape, (case.name, samples)
        if case.compare == "spectrum":
            assert np.abs(actual - expected).max() <= SPECTRUM_TOLERANCE, (case.name, samples)
        elif case.compare == "relative":
            scale = np.abs(expected).max()
            assert np.abs(actual - expected).max() <= RELATIVE_TOLERANCE * scale, (case.name, samples)
        else:
            assert snr_db(actual, expected) >= AUDIO_SNR_DB, (case.name, samples)

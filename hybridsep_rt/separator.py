"""The bundle's graphs behind the streaming engine's ``Separator`` protocol (see ``hybridsep_rt.engine``).

Per query (``prepare``, DESIGN.md "The data flow"):
  text    -> tokenizer -> text_encoder.onnx -> text embedding (1, E)
  example -> mono, fitted to the window -> audio_encoder.onnx -> the target embedding itself (1, E)
Per window (``separate``), channels as a batch:
  two-stage, text query: aet.onnx(mixture, text embedding) -> target embedding (C, E)
  one-stage text query, or query by example: the query's embedding is the target embedding
  asm.onnx(mixture, target embedding) -> separated target (C, W)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybridsep_rt.bundle import AET, ASM, AUDIO_ENCODER, TEXT_ENCODER, Bundle, BundleError
from hybridsep_rt.engine import Query
from hybridsep_rt.session import CUDA_PROVIDER, DEVICES, GraphRunner, cuda_available

__all__ = ["Condition", "OnnxSeparator", "fit_to_window"]

PRECISION_CHOICES = ("auto", "fp32", "fp16")


@dataclass(frozen=True)
class Condition:
    """A prepared query. ``kind`` "text": ``embedding`` is the text embedding (the AET turns it into a target
    embedding per window, unless the model is one-stage); "example": it is the target embedding. (1, E)."""

    kind: str
    embedding: np.ndarray


def fit_to_window(clip: np.ndarray, window_samples: int) -> np.ndarray:
    """(N,) -> (window_samples,): the first window of a longer clip; a shorter one repeated whole as often as
    it fits, then zero-padded (LAION-CLAP's "repeatpad")."""
    if clip.shape[0] >= window_samples:
        return clip[:window_samples]
    repeated = np.tile(clip, window_samples // clip.shape[0])
    return np.pad(repeated, (0, window_samples - repeated.shape[0]))


class OnnxSeparator:
    """Separates with a bundle's ONNX graphs; implements ``hybridsep_rt.engine.Separator``.

    Args:
        bundle: a :class:`Bundle` or the path of a bundle folder.
        device: "auto" (CUDA when onnxruntime offers it), "cpu" or "cuda" (warns when it falls back).
        threads: intra-op CPU threads per graph (None: onnxruntime's default).
        precision: "fp32", "fp16" (the bundle's fp16 graphs, made for CUDA) or "auto" (fp16 when running on
            CUDA and the bundle has it, else fp32).

    Attributes:
        sample_rate, window_samples: from the bundle manifest.
        provider: the execution provider of the separation graph.
    """

    def __init__(self, bundle: Bundle | str | Path, device: str = "auto", threads: int | None = None,
                 precision: str = "auto"):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        if precision not in PRECISION_CHOICES:
            raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {precision!r}")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        self.device = device
        self.threads = threads
        self.precision = precision
        if precision == "auto":
            on_cuda = device != "cpu" and cuda_available()
            self.precision = "fp16" if on_cuda and self.bundle.has_precision("fp16") else "fp32"
        if not self.bundle.has_precision(self.precision):
            raise BundleError(f"bundle {self.bundle.folder} has no {self.precision} graphs; export it with --fp16")
        self._asm = self._open(ASM)
        if precision == "auto" and self.precision == "fp16" and self._asm.provider != CUDA_PROVIDER:
            self.precision = "fp32"  # CUDA was offered but not obtained: fp32 is the faster choice on the CPU
            self._asm = self._open(ASM)
        self.provider = self._asm.provider
        self.sample_rate = self.bundle.sample_rate
        self.window_samples = self.bundle.window_samples
        self.max_text_tokens = self.bundle.max_text_tokens
        self._tokenizer = self._load_tokenizer()
        self._text_encoder = self._open(TEXT_ENCODER)
        self._aet = None if self.bundle.one_stage else self._open(AET)
        self._audio_encoder: GraphRunner | None = None  # opened on the first query by example

    def _open(self, graph: str) -> GraphRunner:
        return GraphRunner.open(self.bundle.graph_path(graph, self.precision), self.device, self.threads)

    def _load_tokenizer(self):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.bundle.tokenizer_path))
        padding = tokenizer.padding or {}
        tokenizer.enable_truncation(max_length=self.max_text_tokens)
        tokenizer.enable_padding(length=self.max_text_tokens, pad_id=padding.get("pad_id", 0),
                                 pad_token=padding.get("pad_token", "[PAD]"))
        return tokenizer

    # ------------------------------------------------------------------ queries

    def prepare(self, query: Query) -> Condition:
        """The condition for a query: a text embedding, or for a query by example (which takes precedence over
        a text given with it) the target embedding of the example clip."""
        if query.example is not None:
            return Condition("example", self.embed_audio(query.example))
        return Condition("text", self.embed_text(query.text))

    def tokenize(self, text: str) -> dict[str, np.ndarray]:
        """text -> ``input_ids``, ``attention_mask``: (1, max_text_tokens) int64. Warns when it truncates."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the text query is empty: describe the sound to separate, e.g. \"a dog barking\"")
        encoding = self._tokenizer.encode(text.strip())
        if encoding.overflowing:
            message = (f"the query is longer than the text encoder's {self.max_text_tokens} tokens and was "
                       f"truncated: {text[:60]!r}...")
            warnings.warn(message, UserWarning, stacklevel=3)
        return {
            "input_ids": np.asarray([encoding.ids], dtype=np.int64),
            "attention_mask": np.asarray([encoding.attention_mask], dtype=np.int64),
        }

    def embed_text(self, text: str) -> np.ndarray:
        """text -> (1, E) text embedding."""
        return self._text_encoder.run(self.tokenize(text))[0]

    def embed_audio(self, clip: np.ndarray) -> np.ndarray:
        """A clip at ``sample_rate``, (samples,) or (channels, samples), mixed to mono and fitted to the window
        (:func:`fit_to_window`) -> (1, E) audio embedding."""
        clip = np.asarray(clip, dtype=np.float32)
        if clip.ndim == 2:
            clip = clip.mean(axis=0)
        if clip.ndim != 1 or clip.shape[0] == 0:
            raise ValueError(f"the example clip must be a non-empty (samples,) or (channels, samples) array, "
                             f"got shape {clip.shape}")
        if not np.isfinite(clip).all():
            raise ValueError("the example clip holds NaN or infinite samples")
        if self._audio_encoder is None:
            self._audio_encoder = self._open(AUDIO_ENCODER)
        wave = fit_to_window(clip, self.window_samples)[None, :]
        return self._audio_encoder.run({"wave": wave})[0]

    # ------------------------------------------------------------------ windows

    def target_embedding(self, window: np.ndarray, condition: Condition) -> np.ndarray:
        """(C, W) window -> (C, E) target embedding for the ASM."""
        channels = window.shape[0]
        embedding = np.repeat(condition.embedding, channels, axis=0)
        if condition.kind == "text" and self._aet is not None:
            return self._aet.run({"mixture": window, "text_embedding": embedding})[0]
        return embedding

    def separate(self, window: np.ndarray, condition: Condition) -> np.ndarray:
        """(C, W) float32 mixture window -> (C, W) separated target; every channel is one batch item."""
        window = np.ascontiguousarray(window, dtype=np.float32)
        if window.ndim != 2 or window.shape[1] != self.window_samples or window.shape[0] == 0:
            raise ValueError(f"a window must be (channels, {self.window_samples}), got shape {window.shape}")
        if not np.isfinite(window).all():
            raise ValueError("the mixture holds NaN or infinite samples")
        if not isinstance(condition, Condition):
            raise TypeError("condition must come from OnnxSeparator.prepare")
        target = self.target_embedding(window, condition)
        return self._asm.run({"mixture": window, "target_embedding": target})[0]

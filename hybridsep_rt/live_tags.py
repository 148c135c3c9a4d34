"""Live tags: what the streaming input holds, by the bundle's tagger, for the app's row of sounds and the status line.

Once per hop the engine's worker hands :meth:`LiveTags.observe` the newest window of the input (and of the output),
mono at the model rate. The tagger's rows that fall in the window's newest ``recent_seconds`` are averaged and
folded into a running average over about ``smoothing_hops`` hops (an exponential one, weight 1 / smoothing_hops
for the newest), so a tag neither flickers nor lags by more than a few hops. Readers on other threads take a copy
with :meth:`snapshot`; nothing here runs in the audio callback.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from hybridsep_rt.tagger import Tagger, top_classes

__all__ = ["ClassMatcher", "LiveTags", "TagSnapshot"]

RECENT_SECONDS = 2.0  # the part of the window a hop's tags describe: its newest seconds
SMOOTHING_HOPS = 3


@dataclass(frozen=True)
class TagSnapshot:
    """The top sounds of the input (name, smoothed score), the queried class's score in the input and the
    output (None before any window or without a query class), and the tagger's mean time per observation."""

    top: tuple[tuple[str, float], ...] = ()
    query_class: str | None = None
    present_input: float | None = None
    present_output: float | None = None
    seconds_per_hop: float = 0.0
    hops: int = 0


class LiveTags:
    """Smoothed tags of a stream. ``tagger``: a :class:`Tagger` (its window is the engine's window)."""

    def __init__(self, tagger: Tagger, top: int = 5, smoothing_hops: int = SMOOTHING_HOPS,
                 recent_seconds: float = RECENT_SECONDS):
        if top < 1 or smoothing_hops < 1 or recent_seconds <= 0:
            raise ValueError("top and smoothing_hops must be >= 1 and recent_seconds > 0")
        self.tagger = tagger
        self.classes = tagger.classes
        self.count = top
        self.weight = 1.0 / smoothing_hops
        rows = tagger.rows_per_window()
        times = tagger.info.first_frame_seconds + np.arange(rows) * tagger.info.frame_seconds
        window_seconds = tagger.window_samples / tagger.sample_rate
        recent = times >= window_seconds - recent_seconds
        self._recent = recent if recent.any() else np.arange(rows) == rows - 1
        self._lock = threading.Lock()
        self._input: np.ndarray | None = None
        self._output: np.ndarray | None = None
        self._query_class: int | None = None
        self._seconds = 0.0
        self._hops = 0

    def class_index(self, name: str) -> int:
        """The column of an AudioSet class name (exact, or ignoring case); ValueError if it is not one."""
        lowered = {c.lower(): i for i, c in enumerate(self.classes)}
        if name.lower() not in lowered:
            raise ValueError(f"{name!r} is not one of the tagger's {len(self.classes)} classes")
        return lowered[name.lower()]

    def set_query_class(self, name: str | None) -> None:
        """The class whose presence the meters follow (None: no meter). The output's average starts afresh."""
        index = None if name is None else self.class_index(name)
        with self._lock:
            self._query_class = index
            self._output = None

    def _recent_scores(self, window: np.ndarray) -> np.ndarray:
        return self.tagger.scores(window)[self._recent].mean(axis=0)

    def _fold(self, average: np.ndarray | None, scores: np.ndarray) -> np.ndarray:
        return scores if average is None else (1.0 - self.weight) * average + self.weight * scores

    def observe(self, mixture: np.ndarray, output: np.ndarray | None = None) -> None:
        """Tag the newest window of the input (and of the output, when a query class is set and it is given):
        (window_samples,) mono float32 at the model rate."""
        start = time.perf_counter()
        scores = self._recent_scores(mixture)
        with self._lock:
            follow_output = self._query_class is not None and output is not None
        out_scores = self._recent_scores(output) if follow_output else None
        with self._lock:
            self._input = self._fold(self._input, scores)
            if out_scores is not None:
                self._output = self._fold(self._output, out_scores)
            self._hops += 1
            self._seconds += time.perf_counter() - start

    def snapshot(self) -> TagSnapshot:
        with self._lock:
            if self._input is None:
                return TagSnapshot()
            query = self._query_class
            return TagSnapshot(
                top=tuple(top_classes(self._input, self.classes, self.count)),
                query_class=None if query is None else self.classes[query],
                present_input=None if query is None else float(self._input[query]),
                present_output=None if query is None or self._output is None else float(self._output[query]),
                seconds_per_hop=self._seconds / self._hops,
                hops=self._hops,
            )


class ClassMatcher:
    """The tagger class a text query names: the class itself when the query is one of the names (a clicked tag),
    else the class whose name the text encoder puts nearest the query (cosine). ``embed_text``: text -> (1, E)
    (``OnnxSeparator.embed_text``); the 521 names are embedded once, on the first free-text query."""

    def __init__(self, classes: tuple[str, ...], embed_text):
        self.classes = classes
        self.embed_text = embed_text
        self._names: np.ndarray | None = None

    def __call__(self, text: str) -> str:
        lowered = {c.lower(): c for c in self.classes}
        if text.strip().lower() in lowered:
            return lowered[text.strip().lower()]
        if self._names is None:
            names = np.concatenate([np.asarray(self.embed_text(c)).reshape(1, -1) for c in self.classes])
            self._names = names / np.maximum(np.linalg.norm(names, axis=1, keepdims=True), 1e-12)
        query = np.asarray(self.embed_text(text)).reshape(-1)
        return self.classes[int(np.argmax(self._names @ (query / max(np.linalg.norm(query), 1e-12))))]

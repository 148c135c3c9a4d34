"""What is in the audio: the bundle's tagger graph (YAMNet, AudioSet's 521 classes) on windows and on whole files.

The graph takes one model window (mono, at the model rate) and gives a row of class scores in [0, 1] every
``frame_seconds`` (0.32 s), row i centred ``first_frame_seconds + i * frame_seconds`` into the window
(``Bundle.tagger``). A file is tagged in windows whose hop is a whole number of rows, so every window's rows lie
on one time grid; each grid row is taken from the one window where it is not at the window's edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybridsep_rt.bundle import TAGGER, Bundle, BundleError
from hybridsep_rt.session import GraphRunner

__all__ = ["Tagger", "Timeline", "top_classes"]


@dataclass
class Timeline:
    """Class scores over time: ``scores`` (rows, classes), row i centred at ``times[i]`` seconds."""

    classes: tuple[str, ...]
    times: np.ndarray
    scores: np.ndarray

    def strongest(self, count: int) -> list[int]:
        """The ``count`` classes with the highest peak score anywhere in the timeline, strongest first."""
        return [int(i) for i in np.argsort(-self.scores.max(axis=0), kind="stable")[:count]]


def top_classes(scores: np.ndarray, classes: tuple[str, ...], count: int) -> list[tuple[str, float]]:
    """A row of scores -> its ``count`` best (class name, score), best first."""
    order = np.argsort(-scores, kind="stable")[:count]
    return [(classes[i], float(scores[i])) for i in order]


class Tagger:
    """Runs a bundle's tagger graph.

    Args:
        bundle: a :class:`Bundle` or the path of a bundle folder; it must have a tagger graph.
        device, threads: as for ``OnnxSeparator``.
    """

    def __init__(self, bundle: Bundle | str | Path, device: str = "auto", threads: int | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        if self.bundle.tagger is None:
            raise BundleError(f"bundle {self.bundle.folder} has no tagger graph: export it again with this "
                              f"version of `hybridsep export`")
        self.info = self.bundle.tagger
        self.classes = self.info.classes
        self.sample_rate = self.bundle.sample_rate
        self.window_samples = self.bundle.window_samples
        self._graph = GraphRunner.open(self.bundle.graph_path(TAGGER, "fp32"), device, threads)
        self.provider = self._graph.provider
        self._rows: int | None = None

    def scores(self, windows: np.ndarray) -> np.ndarray:
        """(window_samples,) or (B, window_samples) mono at ``sample_rate`` -> (rows, classes) or (B, rows,
        classes) scores."""
        windows = np.asarray(windows, dtype=np.float32)
        batch = windows[None] if windows.ndim == 1 else windows
        if batch.ndim != 2 or batch.shape[1] != self.window_samples:
            raise ValueError(f"the tagger takes windows of {self.window_samples} samples, got shape {windows.shape}")
        scores = self._graph.run({"wave": np.ascontiguousarray(batch)})[0]
        return scores[0] if windows.ndim == 1 else scores

    def rows_per_window(self) -> int:
        """How many rows of scores one window gives (the graph's output shape, else one silent window's)."""
        if self._rows is None:
            rows = self._graph.session.get_outputs()[0].shape[1]
            self._rows = rows if isinstance(rows, int) else self.scores(np.zeros(self.window_samples)).shape[0]
        return self._rows

    def _grid(self, samples: int) -> tuple[int, int]:
        """(rows per window step, rows in the timeline) for a wave of ``samples`` samples: every row whose centre
        lies in the wave, and at least one."""
        rows = self.rows_per_window()
        if rows < 3:
            raise BundleError(f"the tagger gives {rows} rows per window; a timeline needs at least 3")
        hop_rows = rows - 2
        duration = samples / self.sample_rate
        last_row = int(np.floor((duration - self.info.first_frame_seconds) / self.info.frame_seconds))
        return hop_rows, max(1, last_row + 1)

    def window_count(self, samples: int) -> int:
        """How many windows :meth:`timeline` runs for a wave of ``samples`` samples."""
        hop_rows, total_rows = self._grid(samples)
        return 1 + max(0, -(-(total_rows - hop_rows - 1) // hop_rows))

    def timeline(self, wave: np.ndarray, on_window=None) -> Timeline:
        """A mono wave at ``sample_rate`` of any length -> its :class:`Timeline`, rows up to the wave's end.

        Windows step by ``rows_per_window() - 2`` rows (``hop_rows``); window w gives the grid rows of its own rows
        1..hop_rows (the first window also its row 0) and never its last row, so no row is read where the window's
        edge cuts its context unless the wave itself ends there. ``on_window`` is called after each window.
        """
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1 or wave.shape[0] == 0:
            raise ValueError(f"the tagger needs a non-empty mono wave, got shape {wave.shape}")
        if not np.isfinite(wave).all():
            raise ValueError("the audio holds NaN or infinite samples")
        hop_rows, total_rows = self._grid(wave.shape[0])
        hop = int(round(hop_rows * self.info.frame_seconds * self.sample_rate))
        scores = np.zeros((total_rows, len(self.classes)), dtype=np.float32)
        row = 0
        while row < total_rows:
            w = 0 if row == 0 else (row - 1) // hop_rows
            window = wave[w * hop:w * hop + self.window_samples]
            window_scores = self.scores(np.pad(window, (0, self.window_samples - window.shape[0])))
            first, end = row - w * hop_rows, min(hop_rows + 1, total_rows - w * hop_rows, window_scores.shape[0])
            scores[row:row + end - first] = window_scores[first:end]
            row += end - first
            if on_window is not None:
                on_window()
        times = self.info.first_frame_seconds + np.arange(total_rows) * self.info.frame_seconds
        return Timeline(self.classes, times, scores)

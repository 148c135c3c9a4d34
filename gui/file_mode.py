"""File mode: separate a whole file in a worker thread (``separate_offline`` + ``OnnxSeparator``) and export stems.

The separation runs like ``hybridsep separate``: the file is converted to the model's rate, separated in
windows overlapping by half (every window covering a sample contributes), converted back to the file's rate and
length. One run gives both stems: the target and the rest of the mixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PyQt6.QtCore import QThread, pyqtSignal

from hybridsep_rt.audio import (
    file_format,
    file_subtype,
    read_audio,
    resample,
    to_model_rate,
    writable_subtype,
    write_audio,
)
from hybridsep_rt.engine import Query
from hybridsep_rt.overlap import separate_offline
from hybridsep_rt.separate import stem_names, window_count

__all__ = ["FileSeparation", "SeparationJob", "Cancelled", "export_stems"]


class Cancelled(Exception):
    """The user stopped the separation."""


@dataclass
class FileSeparation:
    """A separated file, at the file's rate and length.

    Attributes:
        source: the file that was separated.
        rate: its sample rate.
        subtype: its sample format ("PCM_16", ...), kept on export where the format allows.
        label: the query (text, or "example NAME").
        mixture, target: (channels, samples) float32.
    """

    source: Path
    rate: int
    subtype: str | None
    label: str
    mixture: np.ndarray
    target: np.ndarray

    @property
    def residual(self) -> np.ndarray:
        """The mixture without the target."""
        return self.mixture - self.target

    def stem(self, which: str) -> np.ndarray:
        """"target", "residual" or "mixture" -> (channels, samples)."""
        return {"target": self.target, "residual": self.residual, "mixture": self.mixture}[which]


def export_stems(result: FileSeparation, folder: str | Path) -> list[Path]:
    """Write the target and the residual into ``folder`` (named after the query, like ``hybridsep separate``
    names them, in the source's format when it can be written, else WAV); returns the two paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extension = result.source.suffix.lower() if file_format(result.source) is not None else ".wav"
    target_name = stem_names([result.label], "extract")[0]
    residual_name = stem_names([result.label], "remove")[0]
    paths = []
    for name, audio in ((target_name, result.target), (residual_name, result.residual)):
        path = folder / f"{name}{extension}"
        write_audio(path, audio, result.rate, writable_subtype(path, result.subtype))
        paths.append(path)
    return paths


class SeparationJob(QThread):
    """Separates ``path`` with ``query`` on ``separator`` in its own thread.

    Signals:
        progress(done, total): model windows separated so far, out of all.
        succeeded(FileSeparation)
        failed(str): an error message for the window (a cancelled job says so).
    """

    progress = pyqtSignal(int, int)
    succeeded = pyqtSignal(object)
    failed = pyqtSignal(str)

    def __init__(self, separator, path: str | Path, query: Query, label: str, parent=None):
        super().__init__(parent)
        self.separator = separator
        self.path = Path(path)
        self.query = query
        self.label = label
        self.windows_done = 0
        self.windows_total = 0

    def run(self) -> None:
        try:
            self.succeeded.emit(self._separate())
        except Cancelled:
            self.failed.emit(f"separation of {self.path.name} stopped")
        except Exception as e:  # reported in the window; the app keeps running
            self.failed.emit(f"cannot separate {self.path.name}: {e}")

    def _window_done(self) -> None:
        if self.isInterruptionRequested():
            raise Cancelled()
        self.windows_done += 1
        self.progress.emit(self.windows_done, self.windows_total)

    def _separate(self) -> FileSeparation:
        mixture, rate = read_audio(self.path)
        model_rate = self.separator.sample_rate
        window = self.separator.window_samples
        hop = window // 2  # as `hybridsep separate` by default: half-window overlap
        model_mixture = to_model_rate(mixture, rate, model_rate)
        self.windows_total = window_count(model_mixture.shape[1], window, hop)
        self.progress.emit(0, self.windows_total)
        condition = self.separator.prepare(self.query.with_mode("extract"))
        target = separate_offline(model_mixture, self.separator, condition, "extract", hop_samples=hop,
                                  on_window=self._window_done)
        target = resample(target, model_rate, rate, length=mixture.shape[1])
        return FileSeparation(self.path, rate, file_subtype(self.path), self.label, mixture, target)

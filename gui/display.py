"""What the meters and spectrograms draw, computed from copies of the audio (display only, not model DSP).

Levels are in dBFS (0 dB: a full-scale sample); spectrogram columns are magnitudes in dB on a log-frequency
axis, scaled so that a full-scale sine reads about 0 dB.
"""

from __future__ import annotations

import numpy as np

__all__ = ["METER_FLOOR_DB", "block_levels", "SpectrogramColumns", "to_mono"]

METER_FLOOR_DB = -60.0  # the bottom of the level meters
SPECTROGRAM_FLOOR_DB = -100.0  # the darkest colour of the spectrograms
_TINY = 1e-12


def to_mono(block: np.ndarray) -> np.ndarray:
    """(channels, frames) -> (frames,): the mean of the channels."""
    return block.mean(axis=0) if block.shape[0] > 1 else block[0]


def block_levels(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(channels, frames) float32 -> (peak dBFS, RMS dBFS), each (channels,), floored at ``METER_FLOOR_DB``.

    An empty block reads as silence.
    """
    if block.shape[1] == 0:
        silent = np.full(block.shape[0], METER_FLOOR_DB)
        return silent, silent.copy()
    peak = np.max(np.abs(block), axis=1)
    rms = np.sqrt(np.mean(np.square(block, dtype=np.float64), axis=1))
    to_db = lambda x: np.maximum(METER_FLOOR_DB, 20.0 * np.log10(np.maximum(x, _TINY)))  # noqa: E731
    return to_db(peak), to_db(rms)


class SpectrogramColumns:
    """Turns a mono stream into spectrogram columns: one every ``hop`` samples.

    Each column is the Hann-windowed magnitude spectrum of the newest ``fft_size`` samples, reduced to
    ``bands`` log-spaced bands from ``low_hz`` to the Nyquist frequency (each band takes its loudest bin, or
    the nearest bin where bands are narrower than bins).

    Args:
        sample_rate: samples per second of the stream.
        fft_size: analysis length.
        hop: samples between columns.
        bands: rows of a column.
        low_hz: lowest frequency shown.
    """

    def __init__(self, sample_rate: int, fft_size: int = 2048, hop: int = 1024, bands: int = 160,
                 low_hz: float = 30.0):
        self.sample_rate = sample_rate
        self.fft_size = fft_size
        self.hop = hop
        self.bands = bands
        self.frequencies = np.geomspace(low_hz, sample_rate / 2, bands + 1)  # band edges, Hz
        bin_hz = sample_rate / fft_size
        starts = np.floor(self.frequencies[:-1] / bin_hz).astype(np.int64)
        self._band_starts = np.clip(starts, 0, fft_size // 2)
        self._window = np.hanning(fft_size).astype(np.float32)
        # A full-scale sine of amplitude 1 peaks at fft_size * mean(window) / 2 in the magnitude spectrum.
        self._reference = fft_size * float(self._window.mean()) / 2
        self._pending = np.zeros(0, dtype=np.float32)
        self._history = np.zeros(fft_size, dtype=np.float32)

    def band_of(self, hz: float) -> float:
        """The (fractional) row index of frequency ``hz``, for axis labels."""
        edges = np.log(self.frequencies)
        return float((np.log(hz) - edges[0]) / (edges[-1] - edges[0]) * self.bands)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Add (frames,) samples; returns the new columns, (count, bands) float32 dB."""
        pending = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        count = pending.shape[0] // self.hop
        columns = np.empty((count, self.bands), dtype=np.float32)
        for i in range(count):
            block = pending[i * self.hop : (i + 1) * self.hop]
            self._history = np.concatenate([self._history[self.hop :], block])
            columns[i] = self._column(self._history)
        self._pending = pending[count * self.hop :]
        return columns

    def _column(self, frame: np.ndarray) -> np.ndarray:
        magnitude = np.abs(np.fft.rfft(frame * self._window)) / self._reference
        banded = np.maximum.reduceat(magnitude, self._band_starts)
        return np.maximum(SPECTROGRAM_FLOOR_DB, 20.0 * np.log10(banded + _TINY)).astype(np.float32)

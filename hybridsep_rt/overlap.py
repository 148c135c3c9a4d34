"""Window weighting and overlap-add, shared by offline separation and the streaming engine.

Window grid
-----------
The model sees windows of ``W`` samples. With hop ``H`` the windows end at
``e_k = k * H`` for ``k = 1, 2, ...`` (absolute sample indices of the input;
the window ending at ``e`` covers input samples ``[e - W, e)``, and samples
before 0 or after the end of a file are zeros).

Which windows contribute to an output sample
--------------------------------------------
Output sample ``n`` is the weighted average of the separated windows that
cover it and end no later than ``n + R``, where ``R`` is the *reach*::

    R = min(W, H + L)          L = lookahead (samples of right context)

so window ``e`` contributes to samples ``[e - R, e)``, its last ``R``
samples. Every sample is covered because ``H <= R``. ``L`` is the right
context guaranteed to every output sample: its newest contributing window
extends at least ``L`` samples past it. With ``lookahead=None`` the reach is
``W`` and every window covering the sample contributes (best quality,
unbounded by latency). A streaming engine can emit sample ``n`` once the
window ending at ``n + R`` at the latest is separated, i.e. ``H + L``
samples after the input sample ``n`` arrived; that is its algorithmic
latency.

Weights
-------
Each window's samples are weighted by :func:`window_weights`, a Hann shape
raised above zero (``WEIGHT_FLOOR``), so samples near a window's centre,
which have the most context on both sides, dominate, and the normalisation
by the summed weights never divides by a vanishing number.

:class:`OverlapAdd` is the one accumulator both :func:`separate_offline` and
``hybridsep_rt.engine.StreamingEngine`` use, adding windows in the same order
with the same arithmetic, so the two produce the same output.
"""

from __future__ import annotations

from typing import Any, Callable, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hybridsep_rt.engine import Separator

__all__ = ["WEIGHT_FLOOR", "window_weights", "reach_samples", "OverlapAdd", "separate_offline"]

# Smallest weight relative to a window's centre: keeps the edge samples of a
# window (which have no context on one side) from dominating and keeps every
# weight strictly positive.
WEIGHT_FLOOR = 1e-3

MODES = ("extract", "remove")


def window_weights(window_samples: int) -> np.ndarray:
    """Centre-weighted overlap-add weights, shape (window_samples,), float32, all > 0.

    ``w[i] = floor + (1 - floor) * sin^2(pi * (i + 0.5) / W)``: a Hann window
    sampled at half-sample offsets (so it is symmetric), lifted by
    ``WEIGHT_FLOOR``.
    """
    phase = np.pi * (np.arange(window_samples, dtype=np.float64) + 0.5) / window_samples
    weights = WEIGHT_FLOOR + (1.0 - WEIGHT_FLOOR) * np.sin(phase) ** 2
    return weights.astype(np.float32)


def reach_samples(window_samples: int, hop_samples: int, lookahead_samples: int | None) -> int:
    """The reach ``R = min(W, H + L)`` (``W`` when ``lookahead_samples`` is None).

    A window ending at ``e`` contributes to output samples ``[e - R, e)``.
    """
    if not 0 < hop_samples <= window_samples:
        raise ValueError(f"hop must be in 1..{window_samples} samples, got {hop_samples}")
    if lookahead_samples is None:
        return window_samples
    if lookahead_samples < 0:
        raise ValueError(f"lookahead must be >= 0, got {lookahead_samples}")
    return min(window_samples, hop_samples + lookahead_samples)


class OverlapAdd:
    """Weighted overlap-add accumulator for output samples ``[start, start + capacity)``.

    Windows are added with :meth:`add`; finished samples are taken from the
    front with :meth:`pop`, which normalises by the summed weights and moves
    ``start`` forward.

    Args:
        channels: audio channels.
        window_samples: window length ``W``.
        capacity: how many samples past ``start`` the accumulator holds
            (at least ``W``).
    """

    def __init__(self, channels: int, window_samples: int, capacity: int):
        if capacity < window_samples:
            raise ValueError("capacity must hold at least one window")
        self.weights = window_weights(window_samples)
        self.window_samples = window_samples
        self._weighted = np.zeros((channels, capacity), dtype=np.float32)
        self._weight_sum = np.zeros(capacity, dtype=np.float32)
        self._scratch = np.zeros((channels, window_samples), dtype=np.float32)
        self.start = 0

    def reset(self, start: int) -> None:
        """Forget everything; the next sample to pop is ``start``."""
        self._weighted[:] = 0.0
        self._weight_sum[:] = 0.0
        self.start = start

    def add(self, separated: np.ndarray, window_end: int, first: int) -> None:
        """Add samples ``[first, window_end)`` of a separated window.

        Args:
            separated: (channels, W) model output for the window covering
                ``[window_end - W, window_end)``.
            window_end: absolute index one past the window's last sample.
            first: absolute index of the first sample to add;
                ``window_end - W <= first`` and ``start <= first``.
        """
        window_start = window_end - self.window_samples
        if first < window_start or first < self.start:
            raise ValueError(f"sample {first} is before the window or the accumulator")
        count = window_end - first
        if count <= 0:
            return
        offset = first - window_start
        at = first - self.start
        if at + count > self._weight_sum.shape[0]:
            raise ValueError("window ends past the accumulator's capacity")
        weighted = self._scratch[:, :count]
        np.multiply(separated[:, offset:], self.weights[offset:], out=weighted)
        self._weighted[:, at : at + count] += weighted
        self._weight_sum[at : at + count] += self.weights[offset:]

    def pop(self, count: int, out: np.ndarray) -> int:
        """Write the next ``count`` normalised samples into ``out`` (channels, count).

        Samples no window has covered are set to zero. Returns the number of
        such uncovered samples (0 whenever the reach rule above is followed).
        """
        weight_sum = self._weight_sum[:count]
        covered = weight_sum > 0.0
        np.divide(self._weighted[:, :count], weight_sum, out=out, where=covered)
        uncovered = count - int(np.count_nonzero(covered))
        if uncovered:
            out[:, ~covered] = 0.0
        self._shift(count)
        return uncovered

    def _shift(self, count: int) -> None:
        keep = self._weight_sum.shape[0] - count
        self._weighted[:, :keep] = self._weighted[:, count:]
        self._weighted[:, keep:] = 0.0
        self._weight_sum[:keep] = self._weight_sum[count:]
        self._weight_sum[keep:] = 0.0
        self.start += count


def apply_mode(target: np.ndarray, mixture: np.ndarray, mode: str) -> np.ndarray:
    """The output for ``mode``: the target ("extract") or mixture minus target ("remove")."""
    if mode == "extract":
        return target
    if mode == "remove":
        return mixture - target
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def separate_offline(
    mixture: np.ndarray,
    separator: Separator,
    condition: Any,
    mode: str = "extract",
    *,
    hop_samples: int,
    lookahead_samples: int | None = None,
    on_window: Callable[[], None] | None = None,
) -> np.ndarray:
    """Separate a whole signal of any length by weighted overlap-add of windows.

    Args:
        mixture: (channels, N) float32 signal at ``separator.sample_rate``.
        separator: the model (see ``hybridsep_rt.engine.Separator``).
        condition: what ``separator.prepare(query)`` returned.
        mode: "extract" (the target) or "remove" (mixture minus target).
        hop_samples: hop ``H`` between window ends.
        lookahead_samples: ``L``; windows contribute to a sample only if they
            end at most ``H + L`` samples after it (the streaming rule, see the
            module docstring). None uses every window covering the sample.
        on_window: called after each window (progress reports; it may raise to cancel).

    Returns:
        (channels, N) float32. Fed the same signal with the same hop and
        lookahead, ``StreamingEngine`` produces the same samples, delayed by
        its latency.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    mixture = np.asarray(mixture, dtype=np.float32)
    if mixture.ndim != 2:
        raise ValueError(f"mixture must be (channels, samples), got shape {mixture.shape}")
    channels, total = mixture.shape
    window_samples = separator.window_samples
    hop = hop_samples
    reach = reach_samples(window_samples, hop, lookahead_samples)
    accumulator = OverlapAdd(channels, window_samples, window_samples + hop)
    target = np.zeros((channels, total), dtype=np.float32)
    window = np.zeros((channels, window_samples), dtype=np.float32)
    emitted = 0
    window_end = hop
    while emitted < total:
        _fill_window(window, mixture, window_end)
        separated = np.asarray(separator.separate(window, condition), dtype=np.float32)
        if on_window is not None:
            on_window()
        accumulator.add(separated, window_end, max(window_end - reach, emitted))
        until = min(total, window_end + hop - reach)
        if until > emitted:
            accumulator.pop(until - emitted, target[:, emitted:until])
            emitted = until
        window_end += hop
    return apply_mode(target, mixture, mode)


def _fill_window(window: np.ndarray, signal: np.ndarray, window_end: int) -> None:
    """Copy ``signal[:, window_end - W : window_end]`` into ``window``, zeros outside the signal."""
    window_samples = window.shape[1]
    start = window_end - window_samples
    lo, hi = max(start, 0), min(window_end, signal.shape[1])
    window[:] = 0.0
    if hi > lo:
        window[:, lo - start : hi - start] = signal[:, lo:hi]

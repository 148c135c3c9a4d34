"""The real-time streaming engine: overlapping model windows behind an audio callback.

Timing model
------------
All positions are absolute sample indices of the input stream (the first
sample handed to :meth:`StreamingEngine.process_block` is sample 0). With
window ``W``, nominal hop ``H`` and lookahead ``L`` (see
``hybridsep_rt.overlap`` for the exact rule):

* every ``H`` samples, once input sample ``e - 1`` has arrived, the worker
  separates the window ``[e - W, e)`` (the newest one);
* output sample ``n`` is the weighted overlap-add of the windows that cover
  it and end at most ``R = min(W, H + L)`` samples after it, so it is final
  once the input has reached ``n + H + L``;
* the worker needs time to run the model: the *compute budget* ``B``. A
  window's samples are due ``B`` after its input arrived.

Hence ``process_block`` returns, for input sample ``n``, the output sample
``n`` exactly ``latency_samples = H + L + B`` samples later (``H + L`` when
``threaded=False``, where the model runs inside the call). The reported
:attr:`StreamingEngine.latency_seconds` adds the device buffers the host
declares with :meth:`StreamingEngine.set_device_latency` (input plus output
latency of the audio stream); time spent in the host's own block buffering
is part of those device buffers. The budget must cover the model's compute
time plus one audio block (the worker can only start once the block holding
the window's last sample has been delivered); a window that misses it is
heard dry and counted as late.

Threads and the audio callback
------------------------------
``process_block`` is the audio callback entry point (sounddevice layout,
``(frames, channels)``). It copies the input into a ring buffer for the
worker and into a dry delay line, copies the worker's output out of another
ring buffer and mixes it with the dry signal, using preallocated arrays and
in-place numpy operations only: it never allocates audio-sized memory, waits
on a lock, logs or runs the model. The worker thread owns all model state.
Settings cross between threads as single attribute stores (atomic under the
GIL): the callback never waits for the worker.

The worker writes *wet minus dry* ("delta") samples to the output ring and
the callback adds the dry signal back: wherever the worker has nothing (it is
behind, in pass-through, or has no query) the ring yields zeros and the
listener hears the dry input, delayed by the same latency, with no gap.

Query and mode changes
----------------------
A new query takes effect from the next window: that window is separated with
both the old and the new condition (one extra model call), the two
overlap-adds run side by side and the output cross-fades from one to the
other over ``crossfade_seconds``. Later windows use the new condition only,
so the output is fully switched one hop plus the cross-fade after the
request. A mode change ("extract" / "remove") reuses the condition and only
cross-fades.

Degradation
-----------
With ``threaded=True`` and ``EngineConfig.adaptive`` the worker measures every
model call. When the compute time (a moving average) exceeds
``DEGRADE_RATIO`` of the time it may take (the smaller of the current hop
and the budget), or output arrived late, it doubles the hop (up to the
maximum hop), then falls back to dry pass-through. A longer hop keeps the
reach ``R`` and therefore the latency; that is why the maximum hop is at most
``H + L`` (a longer one would leave samples no window may cover). In pass-through it
probes the model every ``PROBE_EVERY_MAX_HOPS`` maximum hops and resumes
when compute is fast again; a level is stepped back after
``RECOVER_WINDOWS`` fast windows. Each step down counts as a degradation.
With ``threaded=False`` nothing depends on wall-clock time: the output is
deterministic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hybridsep_rt.overlap import MODES, OverlapAdd, reach_samples
from hybridsep_rt.ringbuffer import RingBuffer

__all__ = [
    "Query",
    "Separator",
    "EngineConfig",
    "EngineTiming",
    "EngineStats",
    "StreamingEngine",
]

log = logging.getLogger(__name__)

# Degradation policy (see the module docstring).
DEGRADE_RATIO = 0.9  # compute above this share of its allowance: the worker cannot keep up
RECOVER_RATIO = 0.5  # compute below this share of the faster level's allowance: it can again
RECOVER_WINDOWS = 3  # consecutive fast windows before stepping back to a shorter hop
PROBE_EVERY_MAX_HOPS = 2  # in pass-through, time the model once every this many maximum hops
COMPUTE_AVERAGE_WEIGHT = 0.5  # weight of the newest window in the compute-time moving average
WORKER_POLL_SECONDS = 0.002  # how long an idle worker sleeps before looking for input again
CONDITION_CACHE_SIZE = 16  # prepared queries kept (text embeddings are small)


@dataclass(frozen=True, eq=False)
class Query:
    """What to separate: a text description or an example clip, and what to do with it.

    Attributes:
        text: a description of the target sound ("a dog barking").
        example: (channels, samples) or (samples,) float32 clip of the target
            sound, at the separator's sample rate (query by example).
        mode: "extract" outputs the target; "remove" outputs the mixture
            without it.
    """

    text: str | None = None
    example: np.ndarray | None = None
    mode: str = "extract"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.text is None and self.example is None:
            raise ValueError("a query needs a text or an example clip")

    def condition_key(self) -> tuple:
        """Identifies the model condition: equal keys share one ``prepare`` result."""
        digest = None
        if self.example is not None:
            example = np.ascontiguousarray(self.example, dtype=np.float32)
            digest = (example.shape, hashlib.sha1(example.tobytes()).hexdigest())
        return (self.text, digest)

    def with_mode(self, mode: str) -> Query:
        return dataclasses.replace(self, mode=mode)


@runtime_checkable
class Separator(Protocol):
    """The model, as the engine sees it.

    ``prepare`` may be slow (it runs a text or audio encoder); the engine
    calls it from its worker thread only, once per distinct query.
    ``separate`` gets a (channels, window_samples) float32 window of the
    mixture, which it must not modify, and returns the separated target for
    that window, same shape. "remove" mode is computed by the engine.
    """

    sample_rate: int
    window_samples: int

    def prepare(self, query: Query) -> Any: ...

    def separate(self, window: np.ndarray, condition: Any) -> np.ndarray: ...


@dataclass
class EngineConfig:
    """Streaming settings, in seconds.

    Attributes:
        hop_seconds: ``H``, time between model windows (DESIGN.md, "The
            streaming engine": 1 s by default).
        lookahead_seconds: ``L``, right context every output sample gets
            (clamped to ``W - H``, the most any window offers).
        crossfade_seconds: length of the fades on query, mode, wet, bypass
            and degradation changes (at most one hop).
        wet: wet/dry mix, 1 = separated output only, 0 = dry input only.
        max_hop_seconds: longest hop the engine degrades to (None: 2 x hop;
            clamped to ``H + L`` so every sample stays covered, and used only
            at power-of-two multiples of the hop).
        compute_budget_seconds: ``B``, time a window's model call may take
            before its output is due (None: the maximum hop). Only with
            ``threaded=True``; it adds to the latency.
        channels: audio channels of the stream and of the model windows.
        device_latency_seconds: input plus output device latency of the
            host's audio stream; only reported in ``latency_seconds``.
        max_block_frames: blocks are processed in pieces of at most this
            many frames (sizes the preallocated scratch buffers).
        input_buffer_seconds: how long the worker may stall before input is
            dropped (then it resynchronises, in pass-through).
        adaptive: degrade when the worker cannot keep up (threaded only).
    """

    hop_seconds: float = 1.0
    lookahead_seconds: float = 1.0
    crossfade_seconds: float = 0.05
    wet: float = 1.0
    max_hop_seconds: float | None = None
    compute_budget_seconds: float | None = None
    channels: int = 1
    device_latency_seconds: float = 0.0
    max_block_frames: int = 8192
    input_buffer_seconds: float = 30.0
    adaptive: bool = True


@dataclass(frozen=True)
class EngineTiming:
    """An :class:`EngineConfig` resolved to samples for one separator.

    Attributes:
        sample_rate: samples per second.
        window: ``W``, model window.
        hop: ``H``, nominal hop.
        lookahead: ``L`` actually used (``reach - hop``).
        reach: ``R = min(W, H + L)``: windows end at most this far after the
            samples they contribute to.
        hops: the hop at each degradation level (``H, 2H, ...``).
        compute_budget: ``B`` (0 when the model runs inline).
        latency: ``R + B``, input-to-output delay of ``process_block``.
        crossfade: fade length.
    """

    sample_rate: int
    window: int
    hop: int
    lookahead: int
    reach: int
    hops: tuple[int, ...]
    compute_budget: int
    latency: int
    crossfade: int

    @classmethod
    def resolve(cls, config: EngineConfig, sample_rate: int, window: int, threaded: bool) -> EngineTiming:
        def samples(seconds: float) -> int:
            return int(round(seconds * sample_rate))

        hop = samples(config.hop_seconds)
        if not 0 < hop <= window:
            raise ValueError(f"hop_seconds must be in (0, window], got {config.hop_seconds}")
        if config.lookahead_seconds < 0:
            raise ValueError(f"lookahead_seconds must be >= 0, got {config.lookahead_seconds}")
        reach = reach_samples(window, hop, samples(config.lookahead_seconds))
        max_hop = 2 * hop if config.max_hop_seconds is None else samples(config.max_hop_seconds)
        hops = [hop]
        while 2 * hops[-1] <= min(max_hop, reach):
            hops.append(2 * hops[-1])
        budget = 0
        if threaded:
            budget = hops[-1] if config.compute_budget_seconds is None else samples(config.compute_budget_seconds)
            if budget < 0:
                raise ValueError("compute_budget_seconds must be >= 0")
        crossfade = min(hop, max(1, samples(config.crossfade_seconds)))
        return cls(sample_rate, window, hop, reach - hop, reach, tuple(hops), budget, reach + budget, crossfade)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's counters (see :meth:`StreamingEngine.stats`)."""

    input_overflows: int  # callback blocks dropped because the worker did not drain the input
    input_overflow_frames: int
    output_underflows: int  # callback reads that found worker output missing (dry was played)
    output_underflow_frames: int
    late_frames: int  # separated frames finished after they were due (discarded)
    windows: int  # model calls
    degradations: int  # steps down: a longer hop, or pass-through
    recoveries: int  # steps back up
    level: int  # 0 = nominal hop, k = hop x 2^k, len(hops) = pass-through
    passthrough: bool
    hop_seconds: float  # hop in use
    last_compute_seconds: float  # time of the last model call
    mean_compute_seconds: float  # mean over all model calls
    latency_seconds: float
    errors: int  # model calls that raised (the engine went dry, then retried)
    last_error: str | None


class _Fade:
    """A gain that moves linearly from its value to a target over ``length`` samples.

    Used by one thread only. :meth:`apply` multiplies a (channels, frames)
    block in place and allocates nothing.
    """

    def __init__(self, value: float, length: int):
        self.length = max(1, length)
        self._fractions = (np.arange(1, self.length + 1, dtype=np.float64) / self.length).astype(np.float32)
        self._gains = np.empty(self.length, dtype=np.float32)
        self._start = self.target = float(value)
        self._done = self.length

    @property
    def settled(self) -> bool:
        return self._done >= self.length

    @property
    def is_unity(self) -> bool:
        return self.settled and self.target == 1.0

    @property
    def value(self) -> float:
        if self.settled:
            return self.target
        if self._done == 0:
            return self._start
        return self._start + (self.target - self._start) * float(self._fractions[self._done - 1])

    def set(self, target: float) -> None:
        """Start moving from the current value to ``target``."""
        if target != self.target:
            self._start = self.value
            self.target = float(target)
            self._done = 0

    def jump(self, value: float) -> None:
        """Set the value at once."""
        self._start = self.target = float(value)
        self._done = self.length

    def apply(self, block: np.ndarray) -> None:
        frames = block.shape[1]
        ramp = min(frames, self.length - self._done)
        if ramp > 0:
            gains = self._gains[:ramp]
            np.multiply(self._fractions[self._done : self._done + ramp], self.target - self._start, out=gains)
            np.add(gains, self._start, out=gains)
            for row in block:  # row by row: a broadcast multiply would allocate an iterator buffer
                head = row[:ramp]
                np.multiply(head, gains, out=head)
            self._done += ramp
        if ramp < frames:
            rest = block[:, ramp:]
            if self.target == 0.0:
                rest[...] = 0.0
            elif self.target != 1.0:
                np.multiply(rest, self.target, out=rest)


@dataclass(frozen=True)
class _Setting:
    """A prepared query: the model condition and the output mode."""

    key: tuple
    condition: Any
    mode: str


class _Worker:
    """The model side of the engine: consumes input, separates windows, emits deltas.

    Everything here runs in the worker thread (or inline in ``process_block``
    when the engine is not threaded). Output sample ``n`` goes to output-ring
    position ``n + latency``; the ring was prefilled with ``latency`` zeros.
    """

    def __init__(
        self,
        separator: Separator,
        timing: EngineTiming,
        channels: int,
        input_ring: RingBuffer,
        output_ring: RingBuffer,
        adaptive: bool,
    ):
        self.separator = separator
        self.timing = timing
        self.input = input_ring
        self.output = output_ring
        self.adaptive = adaptive
        window = timing.window
        self.history = np.zeros((channels, window), dtype=np.float32)  # input [pos - W, pos)
        self._window = np.zeros((channels, window), dtype=np.float32)
        capacity = window + timing.hops[-1]
        self.ola = OverlapAdd(channels, window, capacity)
        self.ola_previous = OverlapAdd(channels, window, capacity)
        self._target = np.zeros((channels, capacity), dtype=np.float32)
        self._previous_target = np.zeros((channels, capacity), dtype=np.float32)
        self._delta = np.zeros((channels, capacity), dtype=np.float32)
        self._previous_delta = np.zeros((channels, capacity), dtype=np.float32)
        self.crossfade = _Fade(1.0, timing.crossfade)  # 0 -> 1 from the previous setting to the new one
        self.model_gain = _Fade(1.0, timing.crossfade)  # 0 = dry (no query, pass-through)
        self.conditions: dict[tuple, Any] = {}

        self.pos = 0  # stream index of the next input sample to consume
        self.next_emit = 0  # stream index of the next output sample to emit
        self.window_end = timing.hop  # end of the next window to separate
        self.level = 0
        self.running = False  # separating windows (a query is set and not in pass-through)
        self.passthrough = False
        self.query: Query | None = None  # the query in effect
        self.setting: _Setting | None = None
        self.previous: _Setting | None = None  # being cross-faded out
        self.previous_shares_ola = False
        self.emitted_since_resume = 0
        self.last_probe = 0

        self.windows = 0
        self.last_compute = 0.0
        self.total_compute = 0.0
        self.compute_average: float | None = None
        self.degradations = 0
        self.recoveries = 0
        self.fast_windows = 0
        self.errors = 0
        self.last_error: str | None = None
        self._seen_overflow_frames = 0
        self._seen_late_frames = 0

    # ------------------------------------------------------------------ main step

    def step(self, requested: Query | None) -> bool:
        """Do the next piece of work; False when waiting for input."""
        if self.input.overflow_frames != self._seen_overflow_frames:
            self._resynchronise()
        if self.running:
            return self._window_step(requested)
        return self._dry_step(requested)

    def _dry_step(self, requested: Query | None) -> bool:
        """No query, or pass-through: the output is the dry input."""
        changed = requested is not self.query
        if changed:
            self.setting = self._take_query(requested)
        if self.setting is not None and not self.passthrough:
            self._resume()
            return True
        available = self.input.available
        if available:
            self._consume(available)
            self._emit_dry(self.pos - self.next_emit)
        probe_every = PROBE_EVERY_MAX_HOPS * self.timing.hops[-1]
        if self.passthrough and self.setting is not None and self.pos - self.last_probe >= probe_every:
            self._probe()
            return True
        return changed or available > 0

    def _window_step(self, requested: Query | None) -> bool:
        """Separate the next window once its input is there, then emit the samples it finishes."""
        needed = self.window_end - self.pos
        if self.input.available < needed:
            return False
        change = requested is not self.query and self.previous is None  # one cross-fade at a time
        new = self.setting
        if change:
            new = self._take_query(requested)
        self._consume(needed)
        end = self.pos
        first = max(end - self.timing.reach, self.next_emit)
        self.ola.add(self._separate(self.setting.condition), end, first)
        if change and new is not None:
            self._switch(new, end, first)
        to_passthrough = self._adapt()
        if new is None or to_passthrough:
            self.model_gain.set(0.0)
            self._emit(end - self.next_emit)
            self.running = False
            self.previous = None
            if new is None:
                self.setting = None
            if to_passthrough:
                self.passthrough = True
                self.last_probe = self.pos
            return True
        hop = self.timing.hops[self.level]
        self._emit(end + hop - self.timing.reach - self.next_emit)
        self.window_end = end + hop
        return True

    # ------------------------------------------------------------------ transitions

    def _resume(self) -> None:
        """Start separating from the current position (after no query or pass-through)."""
        hop = self.timing.hops[self.level]
        self.window_end = (self.pos // hop + 1) * hop
        self.ola.reset(self.next_emit)
        self.previous = None
        self.emitted_since_resume = 0
        self._seen_late_frames = self.output.late_frames
        if self.next_emit > 0:
            self.model_gain.jump(0.0)
            self.model_gain.set(1.0)
        else:
            self.model_gain.jump(1.0)
        self.running = True

    def _switch(self, new: _Setting, end: int, first: int) -> None:
        """A new query or mode takes effect from the window ending at ``end``."""
        old = self.setting
        same_condition = new.key == old.key
        separated = None if same_condition else self._separate(new.condition)
        self.setting = new
        if self.emitted_since_resume == 0:
            # Nothing of the old setting has been heard: switch without a cross-fade.
            if separated is not None:
                self.ola.reset(self.next_emit)
                self.ola.add(separated, end, first)
            return
        self.previous = old
        self.previous_shares_ola = same_condition
        if separated is not None:
            self.ola, self.ola_previous = self.ola_previous, self.ola
            self.ola.reset(self.next_emit)
            self.ola.add(separated, end, first)
        self.crossfade.jump(0.0)
        self.crossfade.set(1.0)

    def _adapt(self) -> bool:
        """Update the degradation level after a window; True to fall back to pass-through."""
        if not self.adaptive:
            return False
        late = self.output.late_frames != self._seen_late_frames
        self._seen_late_frames = self.output.late_frames
        if late or self.compute_average > DEGRADE_RATIO * self._allowance(self.level):
            self.degradations += 1
            self.fast_windows = 0
            if self.level + 1 < len(self.timing.hops):
                self.level += 1
                return False
            return True
        if self.level > 0 and self.compute_average < RECOVER_RATIO * self._allowance(self.level - 1):
            self.fast_windows += 1
            if self.fast_windows >= RECOVER_WINDOWS:
                self.level -= 1
                self.recoveries += 1
                self.fast_windows = 0
        else:
            self.fast_windows = 0
        return False

    def _allowance(self, level: int) -> float:
        """Seconds a model call may take at ``level``: within the hop and within the budget."""
        return min(self.timing.hops[level], self.timing.compute_budget) / self.timing.sample_rate

    def _probe(self) -> None:
        """In pass-through, time one model call; resume at the longest hop if it is fast again."""
        self.last_probe = self.pos
        self._separate(self.setting.condition)
        top = len(self.timing.hops) - 1
        if self.last_compute < RECOVER_RATIO * self._allowance(top):
            self.passthrough = False
            self.level = top
            self.recoveries += 1
            self.compute_average = self.last_compute
            self._resume()

    def fail(self, error: BaseException) -> None:
        """A model call raised: go dry, retry at the next probe."""
        self.errors += 1
        self.last_error = repr(error)
        self.running = False
        self.passthrough = self.setting is not None  # a failed prepare waits for the next query instead
        self.previous = None
        self.last_probe = self.pos

    def _resynchronise(self) -> None:
        """Input was dropped: continue from the callback's position, dry, in pass-through.

        The input ring stores or drops whole blocks, so each block changes
        either ``write_count`` or ``overflow_frames``: reading the drop count
        twice around ``write_count`` gives a consistent pair.
        """
        while True:
            dropped = self.input.overflow_frames
            written = self.input.write_count
            if self.input.overflow_frames == dropped:
                break
        self._seen_overflow_frames = dropped
        self.input.discard(written - self.input.read_count)
        position = written + dropped  # stream index of the next frame in the input ring
        self._emit_dry(position - self.next_emit)
        self.pos = position
        self.history[:] = 0.0
        if self.running:
            self.degradations += 1
            self.running = False
            self.passthrough = True
            self.previous = None
            self.last_probe = self.pos

    # ------------------------------------------------------------------ model and data

    def _take_query(self, query: Query | None) -> _Setting | None:
        """Make ``query`` the one in effect and prepare it; if that fails, play dry until the next query."""
        self.query = query
        try:
            return self._prepare(query)
        except Exception:
            self.setting = None
            self.running = False
            self.previous = None
            raise

    def _prepare(self, query: Query | None) -> _Setting | None:
        if query is None:
            return None
        key = query.condition_key()
        if key not in self.conditions:
            if len(self.conditions) >= CONDITION_CACHE_SIZE:
                self.conditions.pop(next(iter(self.conditions)))
            self.conditions[key] = self.separator.prepare(query)
        return _Setting(key, self.conditions[key], query.mode)

    def _separate(self, condition: Any) -> np.ndarray:
        np.copyto(self._window, self.history)
        start = time.perf_counter()
        separated = self.separator.separate(self._window, condition)
        elapsed = time.perf_counter() - start
        separated = np.asarray(separated, dtype=np.float32)
        if separated.shape != self.history.shape:
            raise ValueError(f"separator returned shape {separated.shape}, expected {self.history.shape}")
        self.windows += 1
        self.last_compute = elapsed
        self.total_compute += elapsed
        if self.compute_average is None:
            self.compute_average = elapsed
        else:
            self.compute_average += COMPUTE_AVERAGE_WEIGHT * (elapsed - self.compute_average)
        return separated

    def _consume(self, count: int) -> None:
        """Move ``count`` input samples into the history (the last W samples)."""
        window = self.history.shape[1]
        if count >= window:
            self.input.discard(count - window)
            self.input.read(self.history)
        else:
            self.history[:, : window - count] = self.history[:, count:]
            self.input.read(self.history[:, window - count :])
        self.pos += count

    def _emit(self, count: int) -> None:
        """Emit the next ``count`` output samples from the overlap-add as wet-minus-dry."""
        if count <= 0:
            return
        target = self._target[:, :count]
        self.ola.pop(count, target)
        offset = self.next_emit - (self.pos - self.history.shape[1])
        dry = self.history[:, offset : offset + count]
        delta = self._delta[:, :count]
        _mode_delta(target, dry, self.setting.mode, delta)
        if self.previous is not None:
            previous_target = target
            if not self.previous_shares_ola:
                previous_target = self._previous_target[:, :count]
                self.ola_previous.pop(count, previous_target)
            previous_delta = self._previous_delta[:, :count]
            _mode_delta(previous_target, dry, self.previous.mode, previous_delta)
            np.subtract(delta, previous_delta, out=delta)
            self.crossfade.apply(delta)
            np.add(delta, previous_delta, out=delta)
            if self.crossfade.settled:
                self.previous = None
        if not self.model_gain.is_unity:
            self.model_gain.apply(delta)
        self.output.write(delta)
        self.next_emit += count
        self.emitted_since_resume += count

    def _emit_dry(self, count: int) -> None:
        if count > 0:
            self.output.write_zeros(count)
            self.next_emit += count


def _mode_delta(target: np.ndarray, dry: np.ndarray, mode: str, out: np.ndarray) -> None:
    """Wet minus dry for ``mode``: target - mixture ("extract") or -target ("remove")."""
    if mode == "extract":
        np.subtract(target, dry, out=out)
    else:
        np.negative(target, out=out)


class StreamingEngine:
    """Real-time separation of an audio stream (see the module docstring for timing).

    Args:
        separator: the model (:class:`Separator`).
        config: settings; default :class:`EngineConfig`.
        threaded: run the model in a worker thread (call :meth:`start`).
            False runs it inside :meth:`process_block` whenever a hop is
            due: deterministic, for tests and offline rendering.
        query: the initial query; None plays the dry signal until
            :meth:`set_query`.
    """

    def __init__(
        self,
        separator: Separator,
        config: EngineConfig | None = None,
        *,
        threaded: bool = True,
        query: Query | None = None,
    ):
        self.separator = separator
        self.config = config = config or EngineConfig()
        self.threaded = threaded
        if not 0.0 <= config.wet <= 1.0:
            raise ValueError(f"wet must be within [0, 1], got {config.wet}")
        timing = self.timing = EngineTiming.resolve(config, separator.sample_rate, separator.window_samples, threaded)
        channels = config.channels
        self._max_block = config.max_block_frames
        input_capacity = timing.window + timing.hops[-1] + 2 * self._max_block
        if threaded:
            input_capacity += int(config.input_buffer_seconds * timing.sample_rate)
        self._input = RingBuffer(channels, input_capacity)
        self._output = RingBuffer(channels, timing.latency + timing.window + 2 * self._max_block)
        self._output.write_zeros(timing.latency)
        self._dry_line = RingBuffer(channels, timing.latency + self._max_block)
        self._dry_line.write_zeros(timing.latency)
        self._dry = np.zeros((channels, self._max_block), dtype=np.float32)
        self._gain = _Fade(config.wet, timing.crossfade)  # callback side: wet/dry and bypass

        # Written by the control thread, read by the callback or the worker.
        self._wet = float(config.wet)
        self._bypass = False
        self._requested_query = query
        self._device_latency = float(config.device_latency_seconds)

        self._worker = _Worker(separator, timing, channels, self._input, self._output, threaded and config.adaptive)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ audio callback

    def process_block(self, inp: np.ndarray, out: np.ndarray) -> None:
        """Audio callback: take ``inp`` (frames, channels) float32, fill ``out`` (frames, channels).

        ``out`` holds the processed signal ``latency_samples`` behind ``inp``.
        With ``threaded=True`` this only copies and mixes; it allocates no
        audio-sized memory and never waits for the worker.
        """
        frames = inp.shape[0]
        if out.shape[0] != frames or inp.shape[1] != self.config.channels or out.shape[1] != self.config.channels:
            raise ValueError(f"expected (frames, {self.config.channels}) blocks, got {inp.shape} and {out.shape}")
        done = 0
        while done < frames:
            count = min(self._max_block, frames - done)
            self._process_chunk(inp[done : done + count], out[done : done + count])
            done += count

    def _process_chunk(self, inp: np.ndarray, out: np.ndarray) -> None:
        source = inp.T
        target = out.T
        dry = self._dry[:, : inp.shape[0]]
        self._input.write(source, partial=False)
        self._dry_line.write(source)
        self._dry_line.read(dry)
        if not self.threaded:
            while self._worker.step(self._requested_query):
                pass
        self._output.read(target, keep_time=True)  # wet minus dry; zeros where missing
        self._gain.set(0.0 if self._bypass else self._wet)
        if not self._gain.is_unity:
            self._gain.apply(target)
        np.add(target, dry, out=target)

    # ------------------------------------------------------------------ offline use

    def render(self, mixture: np.ndarray, block_frames: int = 4096) -> np.ndarray:
        """Run a whole (channels, N) signal through the engine; returns (channels, N).

        Feeds the signal and ``latency_samples`` of silence in blocks and drops
        the first ``latency_samples`` output samples, so the result lines up
        with ``mixture``. Only for ``threaded=False``.
        """
        if self.threaded:
            raise RuntimeError("render() needs threaded=False")
        mixture = np.asarray(mixture, dtype=np.float32)
        channels, total = mixture.shape
        latency = self.latency_samples
        padded = np.zeros((total + latency, channels), dtype=np.float32)
        padded[:total] = mixture.T
        output = np.zeros_like(padded)
        for start in range(0, padded.shape[0], block_frames):
            self.process_block(padded[start : start + block_frames], output[start : start + block_frames])
        return np.ascontiguousarray(output[latency:].T)

    # ------------------------------------------------------------------ control

    @property
    def query(self) -> Query | None:
        """The query most recently requested (it takes effect on the next window)."""
        return self._requested_query

    def set_query(self, query: Query | None) -> None:
        """Switch query (or mode) from the next window on, cross-faded; None: dry."""
        self._requested_query = query

    def set_mode(self, mode: str) -> None:
        """Switch between "extract" and "remove" for the current query."""
        if self._requested_query is None:
            raise RuntimeError("no query to change the mode of")
        self._requested_query = self._requested_query.with_mode(mode)

    def set_wet(self, wet: float) -> None:
        """Wet/dry mix (1 = separated only, 0 = dry only), faded; applies at once."""
        if not 0.0 <= wet <= 1.0:
            raise ValueError(f"wet must be within [0, 1], got {wet}")
        self._wet = float(wet)

    def set_bypass(self, bypass: bool) -> None:
        """Play the dry input (delayed by the latency, so timing does not jump), faded."""
        self._bypass = bool(bypass)

    def set_device_latency(self, seconds: float) -> None:
        """Declare the audio stream's input plus output latency (reported only)."""
        self._device_latency = float(seconds)

    @property
    def latency_samples(self) -> int:
        """Delay between an input sample entering and its output leaving ``process_block``."""
        return self.timing.latency

    @property
    def latency_seconds(self) -> float:
        """``(H + L + B) / sample_rate`` plus the declared device latency."""
        return self.timing.latency / self.timing.sample_rate + self._device_latency

    def stats(self) -> EngineStats:
        worker = self._worker
        level = len(self.timing.hops) if worker.passthrough else worker.level
        return EngineStats(
            input_overflows=self._input.overflows,
            input_overflow_frames=self._input.overflow_frames,
            output_underflows=self._output.underflows,
            output_underflow_frames=self._output.underflow_frames,
            late_frames=self._output.late_frames,
            windows=worker.windows,
            degradations=worker.degradations,
            recoveries=worker.recoveries,
            level=level,
            passthrough=worker.passthrough,
            hop_seconds=self.timing.hops[worker.level] / self.timing.sample_rate,
            last_compute_seconds=worker.last_compute,
            mean_compute_seconds=worker.total_compute / worker.windows if worker.windows else 0.0,
            latency_seconds=self.latency_seconds,
            errors=worker.errors,
            last_error=worker.last_error,
        )

    # ------------------------------------------------------------------ worker thread

    def start(self) -> None:
        """Start the worker thread (no-op when not threaded or already running)."""
        if not self.threaded or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hybridsep-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the worker thread; the callback keeps playing the dry signal."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> StreamingEngine:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        worker = self._worker
        while not self._stop.is_set():
            try:
                busy = worker.step(self._requested_query)
            except Exception as error:  # a failing model must not kill the stream
                log.exception("separation failed; playing the dry signal")
                worker.fail(error)
                busy = False
            if not busy:
                time.sleep(WORKER_POLL_SECONDS)

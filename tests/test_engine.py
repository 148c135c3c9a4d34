"""Tests for the streaming engine: equivalence with offline separation, query changes,
mixing, latency, degradation and the audio callback's real-time behaviour."""

import threading
import time
import tracemalloc

import numpy as np
import pytest

from hybridsep_rt.engine import EngineConfig, Query, Separator, StreamingEngine
from hybridsep_rt.overlap import separate_offline

SR = 16_000  # short windows keep the tests fast: W = 1 s at 16 kHz
HOP = 0.25
LOOKAHEAD = 0.25
GAINS = {"voice": 1.0, "music": 0.25}


class FilterSeparator:
    """Deterministic test double.

    Per window: an FIR filter (np.convolve), then ``tanh(y / level) * level``
    with ``level`` the window's RMS, so a sample's output depends on the
    window it was separated in and overlap-add matters. The condition is a
    gain per query text. ``delay`` seconds of sleep make it slower than real
    time.
    """

    sample_rate = SR
    window_samples = SR

    def __init__(self, delay: float = 0.0):
        self.taps = np.random.default_rng(0).standard_normal(31).astype(np.float32) / 8
        self.delay = delay
        self.prepared: list[str] = []
        self.threads: set[int] = set()

    def prepare(self, query: Query) -> float:
        self.prepared.append(query.text)
        return GAINS[query.text]

    def separate(self, window: np.ndarray, condition: float) -> np.ndarray:
        self.threads.add(threading.get_ident())
        if self.delay:
            time.sleep(self.delay)
        filtered = np.stack([np.convolve(channel, self.taps, mode="same") for channel in window])
        level = float(np.sqrt(np.mean(window**2))) + 1e-3
        return (condition * np.tanh(filtered / level) * level).astype(np.float32)


def make_signal(seconds: float, seed: int = 0) -> np.ndarray:
    """(2, N) test signal: low tones with a slow level change, and noise."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    left = np.sin(2 * np.pi * 110 * t) * (1.2 + np.sin(2 * np.pi * 0.3 * t))
    right = 0.6 * np.sin(2 * np.pi * 165 * t + 1.0) + 0.05 * rng.standard_normal(t.size)
    return np.stack([left, right]).astype(np.float32)


def config(**overrides) -> EngineConfig:
    settings = dict(hop_seconds=HOP, lookahead_seconds=LOOKAHEAD, channels=2)
    settings.update(overrides)
    return EngineConfig(**settings)


def offline(signal, text="voice", mode="extract", lookahead=LOOKAHEAD):
    return separate_offline(
        signal,
        FilterSeparator(),
        GAINS[text],
        mode,
        hop_samples=int(HOP * SR),
        lookahead_samples=int(lookahead * SR),
    )


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum((reference - estimate) ** 2), 1e-30)))


def stream(engine, signal, rng=None, block_sizes=(64, 4096), between=None, pace=None):
    """Feed ``signal`` (2, N) plus latency of silence in random blocks; returns output aligned with the input.

    ``between(frames_fed)`` runs before each block; ``pace`` sleeps that share of each block's duration.
    """
    rng = rng or np.random.default_rng(0)
    latency = engine.latency_samples
    total = signal.shape[1]
    source = np.zeros((total + latency, signal.shape[0]), dtype=np.float32)
    source[:total] = signal.T
    output = np.full_like(source, np.nan)
    fed = 0
    while fed < source.shape[0]:
        if between is not None:
            between(fed)
        frames = int(rng.integers(block_sizes[0], block_sizes[1] + 1))
        engine.process_block(source[fed : fed + frames], output[fed : fed + frames])
        fed += frames
        if pace:
            time.sleep(pace * frames / SR)
    return output[latency:].T


def test_separator_protocol_is_satisfied_by_the_double():
    assert isinstance(FilterSeparator(), Separator)


def test_inline_engine_reproduces_offline_separation():
    signal = make_signal(6.0)
    engine = StreamingEngine(FilterSeparator(), config(), threaded=False, query=Query("voice"))
    assert engine.latency_samples == int((HOP + LOOKAHEAD) * SR)  # H + L when the model runs inline
    out = stream(engine, signal)
    reference = offline(signal)
    assert snr_db(reference, out) > 100  # the same arithmetic: equal up to float rounding
    stats = engine.stats()
    assert stats.windows == (signal.shape[1] + engine.latency_samples) // int(HOP * SR)
    assert stats.output_underflows == stats.input_overflows == stats.degradations == 0


@pytest.mark.parametrize("lookahead", [0.0, 0.5, 0.75])
def test_inline_engine_matches_offline_at_other_lookaheads(lookahead):
    signal = make_signal(3.0, seed=1)
    engine = StreamingEngine(
        FilterSeparator(), config(lookahead_seconds=lookahead), threaded=False, query=Query("voice")
    )
    out = stream(engine, signal, rng=np.random.default_rng(7))
    assert snr_db(offline(signal, lookahead=lookahead), out) > 100


def test_render_lines_up_with_the_input():
    signal = make_signal(2.0, seed=2)
    engine = StreamingEngine(FilterSeparator(), config(), threaded=False, query=Query("voice"))
    assert snr_db(offline(signal), engine.render(signal, block_frames=1000)) > 100


def test_threaded_engine_reproduces_offline_separation_in_real_time():
    signal = make_signal(4.0, seed=3)
    separator = FilterSeparator()
    engine = StreamingEngine(separator, config(), threaded=True, query=Query("voice"))
    # H + L + compute budget (default: the longest hop, 2 x H here).
    assert engine.latency_samples == int((HOP + LOOKAHEAD + 2 * HOP) * SR)
    with engine:
        out = stream(engine, signal, block_sizes=(256, 2048), pace=0.5)  # twice real time
    assert snr_db(offline(signal), out) >= 40
    stats = engine.stats()
    assert stats.output_underflows == stats.late_frames == stats.degradations == 0
    assert threading.get_ident() not in separator.threads  # the model never ran in the callback


def test_remove_mode_is_mixture_minus_target():
    signal = make_signal(3.0, seed=4)
    engine = StreamingEngine(FilterSeparator(), config(), threaded=False, query=Query("voice", mode="remove"))
    out = stream(engine, signal)
    assert snr_db(signal - offline(signal), out) > 80
    assert snr_db(offline(signal, mode="remove"), out) > 80


def changes_at(engine, seconds, action):
    """A ``between`` hook for :func:`stream`: runs ``action`` once ``seconds`` of input were fed."""
    fired = []

    def hook(fed):
        if not fired and fed >= seconds * SR:
            fired.append(fed)
            action()

    return hook, fired


def max_step(*signals) -> np.ndarray:
    """Largest sample-to-sample step of each channel over ``signals`` (each (2, N)), shape (2,)."""
    return np.max([np.abs(np.diff(signal, axis=1)).max(axis=1) for signal in signals], axis=0)


def check_switch(out, before, after, switched_at):
    """Output equals ``before`` until the change, ``after`` from one hop plus the cross-fade later,
    and no channel ever steps more than it does in the signals themselves."""
    hop, fade = int(HOP * SR), int(0.05 * SR)
    reach = int((HOP + LOOKAHEAD) * SR)
    old_until = switched_at - reach  # the oldest sample the next window can touch
    new_from = switched_at + hop + fade
    assert snr_db(before[:, :old_until], out[:, :old_until]) > 80
    assert snr_db(after[:, new_from:], out[:, new_from:]) > 80
    assert np.all(max_step(out[:, old_until - hop : new_from + hop]) <= 1.05 * max_step(before, after))


def test_query_change_switches_within_a_hop_and_a_crossfade():
    signal = make_signal(5.0, seed=5)
    engine = StreamingEngine(FilterSeparator(), config(), threaded=False, query=Query("voice"))
    hook, fired = changes_at(engine, 2.3, lambda: engine.set_query(Query("music")))
    out = stream(engine, signal, between=hook)
    voice, music = offline(signal, "voice"), offline(signal, "music")
    check_switch(out, voice, music, fired[0])
    # On the tonal channel an abrupt switch would step by up to (1 - 0.25) * |target|,
    # far more than the signal itself does, so the step check above would catch it.
    assert 0.75 * np.abs(voice[0]).max() > 3 * max_step(voice, music)[0]


def test_mode_change_is_crossfaded_without_a_second_prepare():
    signal = make_signal(5.0, seed=6)
    separator = FilterSeparator()
    engine = StreamingEngine(separator, config(), threaded=False, query=Query("voice"))
    hook, fired = changes_at(engine, 2.6, lambda: engine.set_mode("remove"))
    out = stream(engine, signal, between=hook)
    extract, remove = offline(signal, mode="extract"), offline(signal, mode="remove")
    check_switch(out, extract, remove, fired[0])
    assert separator.prepared == ["voice"]  # same text: the condition is cached


def test_wet_dry_mix_and_bypass():
    signal = make_signal(4.0, seed=7)
    wet = offline(signal)
    engine = StreamingEngine(FilterSeparator(), config(wet=0.5), threaded=False, query=Query("voice"))
    out = stream(engine, signal)
    assert snr_db(0.5 * wet + 0.5 * signal, out) > 80

    engine = StreamingEngine(FilterSeparator(), config(), threaded=False, query=Query("voice"))
    fade = int(0.05 * SR)
    hook1, on = changes_at(engine, 1.0, lambda: engine.set_bypass(True))
    hook2, off = changes_at(engine, 2.5, lambda: engine.set_bypass(False))
    hook3, mixed = changes_at(engine, 3.2, lambda: engine.set_wet(0.25))
    out = stream(engine, signal, between=lambda fed: (hook1(fed), hook2(fed), hook3(fed)))
    latency = engine.latency_samples
    # Bypass and wet apply in the callback: at once (with a fade) in output time.
    bypassed = slice(on[0] - latency + fade, off[0] - latency)
    np.testing.assert_array_equal(out[:, bypassed], signal[:, bypassed])
    back = slice(off[0] - latency + fade, mixed[0] - latency)
    assert snr_db(wet[:, back], out[:, back]) > 80
    quarter = slice(mixed[0] - latency + fade, None)
    assert snr_db(0.25 * wet[:, quarter] + 0.75 * signal[:, quarter], out[:, quarter]) > 80
    assert np.all(max_step(out) <= 1.05 * max_step(wet, signal))


def test_output_is_the_input_delayed_by_exactly_the_latency():
    signal = make_signal(2.0, seed=8)
    for threaded in (False, True):
        engine = StreamingEngine(FilterSeparator(), config(wet=0.0), threaded=threaded, query=Query("voice"))
        out = stream(engine, signal)  # threaded but never started: the worker output is missing
        np.testing.assert_array_equal(out, signal)


def test_no_query_plays_the_dry_signal_then_fades_into_the_first_query():
    signal = make_signal(4.0, seed=9)
    engine = StreamingEngine(FilterSeparator(), config(), threaded=False)
    hook, fired = changes_at(engine, 1.5, lambda: engine.set_query(Query("voice")))
    out = stream(engine, signal, between=hook)
    until = fired[0] - engine.timing.reach
    np.testing.assert_array_equal(out[:, :until], signal[:, :until])
    later = fired[0] + int(1.0 * SR)  # a full window after the query: every contributing window is new
    assert snr_db(offline(signal)[:, later:], out[:, later:]) > 80
    assert np.all(max_step(out) <= 1.05 * max_step(signal, offline(signal)))


def test_unstarted_threaded_engine_counts_underflows_and_overflows():
    engine = StreamingEngine(FilterSeparator(), config(input_buffer_seconds=0.0), threaded=True, query=Query("voice"))
    block = np.ones((4096, 2), dtype=np.float32)
    out = np.zeros_like(block)
    for _ in range(20):
        engine.process_block(block, out)
    stats = engine.stats()
    assert stats.output_underflows > 0 and stats.output_underflow_frames > 0
    assert stats.input_overflows > 0 and stats.input_overflow_frames % 4096 == 0
    np.testing.assert_array_equal(out, 1.0)  # dry on underflow
    assert stats.latency_seconds == pytest.approx(engine.latency_samples / SR)
    engine.set_device_latency(0.02)
    assert engine.stats().latency_seconds == pytest.approx(engine.latency_samples / SR + 0.02)


def test_worker_resynchronises_after_dropped_input():
    signal = make_signal(6.0, seed=10)
    engine = StreamingEngine(FilterSeparator(), config(input_buffer_seconds=0.0), threaded=True, query=Query("voice"))
    latency = engine.latency_samples
    source = np.zeros((signal.shape[1] + latency, 2), dtype=np.float32)
    source[: signal.shape[1]] = signal.T
    output = np.zeros_like(source)
    dropped_until = 3 * SR  # fed before the worker starts: more than the input ring holds
    for start in range(0, dropped_until, 4000):
        engine.process_block(source[start : start + 4000], output[start : start + 4000])
    assert engine.stats().input_overflows > 0
    with engine:
        for start in range(dropped_until, source.shape[0], 1000):
            engine.process_block(source[start : start + 1000], output[start : start + 1000])
            time.sleep(0.5 * 1000 / SR)
    out = output[latency:].T
    settled = dropped_until + SR + int(HOP * SR)  # one window after the restart, on the hop grid
    assert snr_db(offline(signal)[:, settled:], out[:, settled:]) >= 40
    assert np.all(np.isfinite(out))


def test_slow_model_degrades_then_recovers_without_slowing_the_callback():
    separator = FilterSeparator(delay=0.6)  # a window takes longer than the longest hop (0.5 s)
    engine = StreamingEngine(separator, config(), threaded=True, query=Query("voice"))
    assert engine.timing.hops == (int(HOP * SR), int(2 * HOP * SR))
    block_frames = 2048
    block_seconds = block_frames / SR
    signal = make_signal(7.5, seed=11)
    out = np.zeros((block_frames, 2), dtype=np.float32)
    levels, call_times = [], []
    with engine:
        start = time.perf_counter()
        for i, begin in enumerate(range(0, signal.shape[1], block_frames)):
            block = np.ascontiguousarray(signal[:, begin : begin + block_frames].T)
            t0 = time.perf_counter()
            engine.process_block(block, out[: block.shape[0]])
            call_times.append(time.perf_counter() - t0)
            assert np.all(np.isfinite(out))
            levels.append(engine.stats().level)
            if begin >= 3.0 * SR:
                separator.delay = 0.0  # compute is fast again
            # real time: wait until this block's end is due
            time.sleep(max(0.0, start + (i + 1) * block_seconds - time.perf_counter()))
    stats = engine.stats()
    assert 1 in levels and 2 in levels  # a longer hop first, then pass-through (level len(hops))
    assert levels.index(1) < levels.index(2)
    assert stats.degradations >= 2 and stats.recoveries >= 2
    assert stats.level == 0 and not stats.passthrough
    assert stats.mean_compute_seconds > 0 and stats.last_compute_seconds < 0.1
    assert max(call_times) < 0.5 * block_seconds, f"slowest callback {max(call_times) * 1e3:.1f} ms"
    assert np.median(call_times) < 0.002


def test_callback_allocates_no_audio_memory():
    separator = FilterSeparator()
    engine = StreamingEngine(separator, config(), threaded=True, query=Query("voice"))
    block = np.random.default_rng(12).standard_normal((4096, 2)).astype(np.float32)
    out = np.zeros_like(block)
    with engine:  # fill the output ring with separated audio
        for _ in range(12):
            engine.process_block(block, out)
            time.sleep(0.05)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for i in range(30):
            if i % 10 == 3:
                engine.set_wet(0.3)  # fades run in the callback too
            if i % 10 == 7:
                engine.set_bypass(i % 20 == 7)
            engine.process_block(block, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert engine.stats().output_underflows > 0  # the underflow path was measured as well
    assert peak < 4096, f"process_block allocated {peak} bytes; one block is {block.nbytes}"


def test_model_errors_are_counted_and_play_dry():
    class Failing(FilterSeparator):
        def separate(self, window, condition):
            raise RuntimeError("no model")

    signal = make_signal(1.5, seed=13)
    engine = StreamingEngine(Failing(), config(wet=1.0), threaded=True, query=Query("voice"))
    with engine:
        out = stream(engine, signal, block_sizes=(1024, 1024), pace=0.25)
    np.testing.assert_array_equal(out, signal)
    assert engine.stats().errors >= 1 and "no model" in engine.stats().last_error


def test_config_validation():
    with pytest.raises(ValueError):
        StreamingEngine(FilterSeparator(), config(hop_seconds=2.0))  # longer than the window
    with pytest.raises(ValueError):
        StreamingEngine(FilterSeparator(), config(lookahead_seconds=-0.1))
    with pytest.raises(ValueError):
        Query()
    with pytest.raises(ValueError):
        Query("voice", mode="louder")
    timing = StreamingEngine(FilterSeparator(), config(lookahead_seconds=5.0), threaded=False).timing
    assert timing.lookahead == SR - int(HOP * SR)  # clamped: no window offers more right context

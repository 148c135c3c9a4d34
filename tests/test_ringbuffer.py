"""Tests for the single-producer single-consumer audio ring buffer."""

import threading
import time
import tracemalloc

import numpy as np
import pytest

from hybridsep_rt.ringbuffer import RingBuffer


def ramp(start: int, frames: int, channels: int = 2) -> np.ndarray:
    """(channels, frames) block whose values are the absolute frame index (+ channel offset)."""
    index = np.arange(start, start + frames, dtype=np.float32)
    return np.stack([index + 0.5 * c for c in range(channels)])


def test_random_writes_and_reads_wrap_around_in_order():
    rng = np.random.default_rng(0)
    ring = RingBuffer(2, 1000)
    written = read = 0
    for _ in range(2000):
        if rng.random() < 0.5:
            frames = int(rng.integers(1, ring.space + 1)) if ring.space else 0
            assert ring.write(ramp(written, frames)) == frames
            written += frames
        else:
            frames = int(rng.integers(1, ring.available + 1)) if ring.available else 0
            out = np.full((2, frames), -1.0, dtype=np.float32)
            assert ring.read(out) == frames
            np.testing.assert_array_equal(out, ramp(read, frames))
            read += frames
        assert ring.available == written - read
    assert written > 10 * ring.capacity  # the indices wrapped many times
    assert ring.overflows == ring.underflows == ring.late_frames == 0


def test_overflow_drops_the_tail_and_is_counted():
    ring = RingBuffer(1, 8)
    assert ring.write(ramp(0, 6, 1)) == 6
    assert ring.write(ramp(6, 5, 1)) == 2
    assert (ring.overflows, ring.overflow_frames) == (1, 3)
    out = np.zeros((1, 8), dtype=np.float32)
    assert ring.read(out) == 8
    np.testing.assert_array_equal(out, ramp(0, 8, 1))


def test_whole_block_overflow_stores_nothing():
    ring = RingBuffer(1, 8)
    ring.write(ramp(0, 6, 1))
    assert ring.write(ramp(6, 5, 1), partial=False) == 0
    assert (ring.overflows, ring.overflow_frames, ring.write_count) == (1, 5, 6)
    assert ring.write(ramp(6, 2, 1), partial=False) == 2


def test_underflow_zero_fills_and_is_counted():
    ring = RingBuffer(2, 16)
    ring.write(ramp(0, 3))
    out = np.full((2, 5), 7.0, dtype=np.float32)
    assert ring.read(out) == 3
    np.testing.assert_array_equal(out[:, :3], ramp(0, 3))
    np.testing.assert_array_equal(out[:, 3:], 0.0)
    assert (ring.underflows, ring.underflow_frames, ring.read_count) == (1, 2, 3)


def test_keep_time_reader_skips_missing_frames_and_writer_drops_them_as_late():
    ring = RingBuffer(1, 16)
    ring.write(ramp(0, 2, 1))
    out = np.zeros((1, 5), dtype=np.float32)
    assert ring.read(out, keep_time=True) == 2  # frames 2..4 are missing: the reader moves on anyway
    assert ring.read_count == 5 and ring.available == 0
    assert ring.write(ramp(2, 6, 1)) == 3  # frames 2..4 arrive too late and are dropped
    assert ring.late_frames == 3 and ring.write_count == 8
    assert ring.read(out[:, :3]) == 3
    np.testing.assert_array_equal(out[:, :3], ramp(5, 3, 1))  # stream position is preserved


def test_write_zeros_and_discard():
    ring = RingBuffer(1, 10)
    ring.write(ramp(1, 7, 1))
    ring.discard(7)
    ring.write_zeros(6)  # wraps around
    out = np.ones((1, 6), dtype=np.float32)
    assert ring.read(out) == 6
    np.testing.assert_array_equal(out, 0.0)
    assert ring.discard(3) == 0


def test_read_and_write_do_not_allocate_audio_memory():
    ring = RingBuffer(2, 3 * 4096 + 17)
    block = np.random.default_rng(0).standard_normal((4096, 2)).astype(np.float32)
    out = np.zeros((4096, 2), dtype=np.float32)
    for _ in range(3):  # warm up
        ring.write(block.T)
        ring.read(out.T)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for i in range(50):
            ring.write(block.T)  # transposed views, wrapping writes
            ring.read(out.T, keep_time=bool(i % 2))
            ring.write_zeros(100)
            ring.read(out[:200].T)  # underflow path
            ring.discard(ring.available)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2048, f"ring buffer allocated {peak} bytes; one block is {block.nbytes}"


def test_one_writer_thread_and_one_reader_thread_see_an_intact_stream():
    ring = RingBuffer(2, 512)
    total = 100_000
    received = np.zeros((2, total), dtype=np.float32)

    def writer():
        sent = 0
        rng = np.random.default_rng(1)
        while sent < total:
            frames = min(int(rng.integers(1, 300)), total - sent, ring.space)
            if frames:
                assert ring.write(ramp(sent, frames)) == frames
                sent += frames
            else:
                time.sleep(0)  # let the reader run

    thread = threading.Thread(target=writer)
    thread.start()
    got = 0
    rng = np.random.default_rng(2)
    while got < total:
        frames = min(int(rng.integers(1, 300)), ring.available)
        if frames:
            assert ring.read(received[:, got : got + frames]) == frames
            got += frames
        else:
            time.sleep(0)
    thread.join()
    np.testing.assert_array_equal(received, ramp(0, total))
    assert ring.overflows == ring.underflows == 0


def test_rejects_empty_shapes():
    with pytest.raises(ValueError):
        RingBuffer(0, 10)
    with pytest.raises(ValueError):
        RingBuffer(1, 0)

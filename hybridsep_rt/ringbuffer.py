"""A single-producer single-consumer ring buffer of float32 audio frames.

The buffer is a preallocated ``(channels, capacity)`` float32 array and two
monotonically increasing frame counters: ``write_count`` (frames published by
the writer) and ``read_count`` (frames consumed by the reader). The frame with
absolute index ``i`` lives in column ``i % capacity``.

Thread safety without locks
---------------------------
Exactly one thread writes and exactly one thread reads. Each counter is owned
by one side: only the writer stores ``_write_count`` and only the reader stores
``_read_count``; each side merely *reads* the other's counter. A side always
copies the audio first and publishes its counter afterwards, in a separate
Python statement. In CPython a store to an attribute is a single bytecode that
runs under the global interpreter lock, so the other thread sees either the
old or the new integer, never a torn value, and taking the GIL acts as a
memory barrier, so data copied before the store is visible to a thread that
sees the new counter. NumPy may release the GIL *during* a copy, which is fine:
the counter covering those frames is only published after the copy returns.
The writer only touches columns the reader has released and the reader only
touches columns the writer has published, so the two copies never overlap.

No method allocates audio-sized memory: copies go through ``np.copyto`` into
slices of the preallocated array (at most two slices when a block wraps).

Counters
--------
``overflows`` / ``overflow_frames`` (writer side): frames dropped because the
buffer was full. ``underflows`` / ``underflow_frames`` (reader side): frames
asked for but not yet written (the reader gets zeros for them).
``late_frames`` (writer side): frames dropped because a ``keep_time`` reader
had already moved past their position (see :meth:`RingBuffer.read`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["RingBuffer"]


class RingBuffer:
    """SPSC float32 ring buffer of ``channels`` x ``capacity`` frames.

    Args:
        channels: number of audio channels (rows).
        capacity: number of frames the buffer holds (columns).
    """

    def __init__(self, channels: int, capacity: int):
        if channels < 1 or capacity < 1:
            raise ValueError(f"channels and capacity must be >= 1, got {channels}, {capacity}")
        self._data = np.zeros((channels, capacity), dtype=np.float32)
        self._capacity = capacity
        self._write_count = 0
        self._read_count = 0
        # Writer-owned counters.
        self.overflows = 0
        self.overflow_frames = 0
        self.late_frames = 0
        # Reader-owned counters.
        self.underflows = 0
        self.underflow_frames = 0

    @property
    def channels(self) -> int:
        return self._data.shape[0]

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def write_count(self) -> int:
        """Absolute index of the next frame the writer will publish."""
        return self._write_count

    @property
    def read_count(self) -> int:
        """Absolute index of the next frame the reader will consume."""
        return self._read_count

    @property
    def available(self) -> int:
        """Frames the reader can read now (never negative)."""
        return max(0, self._write_count - self._read_count)

    @property
    def space(self) -> int:
        """Frames the writer can write now without dropping any."""
        return self._capacity - self.available

    # ------------------------------------------------------------------ writer side

    def write(self, block: np.ndarray, *, partial: bool = True) -> int:
        """Append ``block`` (channels, frames); returns the number of frames stored.

        If the reader has moved past the write position (``keep_time`` reads),
        the leading frames whose time has passed are dropped and counted in
        ``late_frames``. If the buffer lacks room, the trailing frames are
        dropped and counted as an overflow; with ``partial=False`` the whole
        block is dropped instead, so every block is either fully stored or not
        at all.
        """
        return self._put(block, block.shape[1], partial)

    def write_zeros(self, frames: int, *, partial: bool = True) -> int:
        """Append ``frames`` frames of silence; same rules as :meth:`write`."""
        return self._put(None, frames, partial)

    def _put(self, block: np.ndarray | None, frames: int, partial: bool) -> int:
        read = self._read_count
        write = self._write_count
        skip = 0
        if read > write:
            skip = min(frames, read - write)
            self.late_frames += skip
            write += skip
        room = self._capacity - max(0, write - read)
        count = frames - skip
        if count > room:
            dropped = count if not partial else count - room
            self.overflows += 1
            self.overflow_frames += dropped
            count -= dropped
        if count > 0:
            self._copy_in(block, skip, count, write)
        self._write_count = write + count
        return count

    def _copy_in(self, block: np.ndarray | None, offset: int, count: int, position: int) -> None:
        start = position % self._capacity
        first = min(count, self._capacity - start)
        if block is None:
            self._data[:, start : start + first] = 0.0
            if count > first:
                self._data[:, : count - first] = 0.0
            return
        np.copyto(self._data[:, start : start + first], block[:, offset : offset + first])
        if count > first:
            np.copyto(self._data[:, : count - first], block[:, offset + first : offset + count])

    # ------------------------------------------------------------------ reader side

    def read(self, out: np.ndarray, *, keep_time: bool = False) -> int:
        """Fill ``out`` (channels, frames) with the oldest unread frames.

        Returns the number of frames that were available; if that is fewer
        than asked, the rest of ``out`` is zero-filled and counted as an
        underflow. With ``keep_time=True`` the read position advances by the
        full request even on underflow, so the reader stays on its own clock
        (a real-time consumer): the missing frames, if written later, are
        discarded by the writer as late.
        """
        frames = out.shape[1]
        read = self._read_count
        count = min(frames, max(0, self._write_count - read))
        if count > 0:
            start = read % self._capacity
            first = min(count, self._capacity - start)
            np.copyto(out[:, :first], self._data[:, start : start + first])
            if count > first:
                np.copyto(out[:, first:count], self._data[:, : count - first])
        if count < frames:
            out[:, count:] = 0.0
            self.underflows += 1
            self.underflow_frames += frames - count
        self._read_count = read + (frames if keep_time else count)
        return count

    def discard(self, frames: int) -> int:
        """Drop up to ``frames`` unread frames without copying; returns how many."""
        count = min(frames, self.available)
        self._read_count += count
        return count

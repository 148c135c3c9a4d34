"""A tap in the audio callback that gives the window copies of the live audio.

:class:`AudioTap` stands in for the engine in ``hybridsep_rt.stream.AudioHost``: its ``process_block`` calls the
engine's and then copies the input and output blocks into ring buffers (``hybridsep_rt.ringbuffer.RingBuffer``:
preallocated, lock-free, one writer and one reader) that the GUI thread drains for the meters and spectrograms,
and hands the output block to a ``hybridsep_rt.stream.Recorder`` while one records. The callback therefore
only copies: it never allocates audio-sized memory, waits, or touches a file.
"""

from __future__ import annotations

import numpy as np

from hybridsep_rt.ringbuffer import RingBuffer

__all__ = ["AudioTap"]

DISPLAY_BUFFER_SECONDS = 2.0  # audio the display rings hold between two screen updates (they drop the rest)


class AudioTap:
    """Wraps a ``StreamingEngine`` for the audio host and copies what passes through it.

    Every other attribute is the engine's (``timing``, ``config``, ``set_device_latency`` ...), so the host
    can use the tap as its engine. Blocks are at the engine's (the model's) sample rate.

    Attributes:
        input_ring, output_ring: (channels, rate x ``DISPLAY_BUFFER_SECONDS``) rings the GUI thread reads.
        recorder: a ``hybridsep_rt.stream.Recorder`` fed with the output, or None.
        blocks: engine blocks processed.
    """

    def __init__(self, engine):
        self.engine = engine
        channels = engine.config.channels
        capacity = int(DISPLAY_BUFFER_SECONDS * engine.timing.sample_rate)
        self.input_ring = RingBuffer(channels, capacity)
        self.output_ring = RingBuffer(channels, capacity)
        self.recorder = None
        self.blocks = 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def process_block(self, inp: np.ndarray, out: np.ndarray) -> None:
        """The audio callback side: ``inp`` and ``out`` are (frames, channels) float32."""
        self.engine.process_block(inp, out)
        self.input_ring.write(inp.T)
        self.output_ring.write(out.T)
        recorder = self.recorder  # one read: the GUI thread may swap it at any time
        if recorder is not None:
            recorder.push(out)
        self.blocks += 1

    @staticmethod
    def drain(ring: RingBuffer) -> np.ndarray:
        """Everything ``ring`` holds, (channels, frames); called by the ring's one reader (the GUI thread)."""
        block = np.empty((ring.channels, ring.available), dtype=np.float32)
        ring.read(block)
        return block

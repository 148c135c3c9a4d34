"""`hybridsep stream`: real-time separation from an audio input to an audio output, headless.

::

    hybridsep stream --input pulse:daw.monitor --output pulse:speakers -q "a dog barking" [--mode remove]
                     [--hop 1] [--lookahead 1] [--wet 1] [--record out.wav] [--control-port 0] [--reconnect]

How it runs
-----------
* An input and an output sounddevice stream open the devices at the bundle's sample rate (PulseAudio
  converts any rate; when a PortAudio device cannot run at the model's rate the streams run at the device's
  rate and :class:`RateAdapter` converts in the callback). Channels: ``--channels``, else the devices' (at
  most 2). The input callback only copies into a ring buffer (:class:`AudioHost` explains why there are two
  streams).
* The output callback only calls ``StreamingEngine.process_block`` and copies the blocks into the
  preallocated ring buffers of the recorders (``--record`` the output, ``--record-input`` the input going
  into the engine); a thread per recorder writes the file, which is renamed into place when the stream stops.
* The query changes while it runs: command lines on stdin and, with ``--control-port``, on a TCP socket bound
  to 127.0.0.1 (``hybridsep_rt.control``: ``q TEXT``, ``mode remove``, ``wet 0.5``, ``bypass on``,
  ``stats``, ``quit``). Replies to stdin commands go to stdout.
* Every ``--status-interval`` seconds a status line goes to stderr: query, latency, compute per window,
  device over/underflows, engine over/underflows, late samples, degradations.
* Ctrl-C, SIGTERM, ``quit`` or ``--duration`` stop it cleanly: files are finalised and ``--stats-json``
  receives the final counters.

Latency
-------
``latency = hop + lookahead + compute budget`` (the engine's, see ``hybridsep_rt.engine``) plus the input
and output latency PortAudio reports for the streams (``--latency`` asks for it), the bridge between them
(about the input latency again, see :class:`AudioHost`) and, with a :class:`RateAdapter`, its resamplers'
delay and queue. It is printed at start and in every status line.

Devices that disappear
----------------------
A device is lost when PortAudio stops the stream with an error, when the callback stops being called, or
(PulseAudio) when the chosen source or sink leaves the server: the server would move the stream to its
default device, so the stream is closed instead. The message names the device; without ``--reconnect`` the
command exits with status 1, with it the stream waits for the device and reopens it (the engine, query and
recordings carry on).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hybridsep_rt.control import Controller
from hybridsep_rt.ringbuffer import RingBuffer

DEFAULT_HOP_SECONDS = 1.0  # DESIGN.md, "The streaming engine": hop H = 1 s by default
DEFAULT_LOOKAHEAD_SECONDS = 1.0
DEFAULT_BLOCK_FRAMES = 1024  # frames per callback
DEFAULT_DEVICE_LATENCY_SECONDS = 0.2  # asked of PortAudio per direction; small next to hop + lookahead
MAX_DEFAULT_CHANNELS = 2  # without --channels: the devices' channels, at most stereo
RECORD_BUFFER_SECONDS = 20.0  # a recorder's ring: how long its writer thread may stall before frames drop
RECORD_WRITE_INTERVAL_SECONDS = 0.1  # how often a recorder's writer thread empties the ring
MAIN_LOOP_SECONDS = 0.1  # how often the main thread looks at the stream, the devices and the clock
PULSE_CHECK_SECONDS = 0.5  # how often the PulseAudio source/sink in use is looked for on the server
STALL_MIN_SECONDS = 2.0  # no callback for this long (or 20 blocks, if longer) means the device is gone
RECONNECT_INTERVAL_SECONDS = 1.0  # how often a lost device is looked for with --reconnect
CLOSE_TIMEOUT_SECONDS = 5.0  # how long closing the streams may take before a stuck device is left behind
STREAM_THREADS = max(1, (os.cpu_count() or 1) - 1)  # default model threads: one core is left to the audio
RATE_ADAPTER_PREFILL_BLOCKS = 2  # output blocks buffered by a RateAdapter to absorb the resamplers' jitter
RATE_ADAPTER_CALIBRATION_SECONDS = 1.0  # silence run through a RateAdapter's resamplers to measure their bursts
BRIDGE_PREFILL_BLOCKS = 2  # blocks buffered between the input and the output callback, beyond the input latency


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import (setting the umask to read it is not thread-safe)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hybridsep_rt.control import HELP
    from hybridsep_rt.separate import DEFAULT_BUNDLE

    parser.epilog = (f"While it runs, command lines on stdin (and on the --control-port socket) change it; {HELP}. "
                     f"See `hybridsep devices` for the device names.")
    devices = parser.add_argument_group("devices")
    devices.add_argument("--input", metavar="DEV", default=None,
                         help="input device: index, name, part of a name or pulse:SOURCE (default: the system "
                              "default); `hybridsep devices` lists them, loopback sources marked")
    devices.add_argument("--output", metavar="DEV", default=None, help="output device (default: the system default)")
    devices.add_argument("--channels", type=int, default=None,
                         help=f"audio channels (default: the devices', at most {MAX_DEFAULT_CHANNELS})")
    devices.add_argument("--block", type=int, default=DEFAULT_BLOCK_FRAMES, metavar="N",
                         help=f"frames per audio callback (default: {DEFAULT_BLOCK_FRAMES}; 0 lets PortAudio "
                              f"choose)")
    devices.add_argument("--latency", type=float, default=DEFAULT_DEVICE_LATENCY_SECONDS, metavar="SECONDS",
                         help=f"device buffering asked of PortAudio per direction (default: "
                              f"{DEFAULT_DEVICE_LATENCY_SECONDS}); raise it if the status shows device xruns")
    devices.add_argument("--reconnect", action="store_true",
                         help="when a device disappears, wait for it and reopen it instead of exiting")

    model = parser.add_argument_group("separation")
    model.add_argument("-q", "--query", default=None, help="text describing the sound to separate")
    model.add_argument("--example", type=Path, default=None, metavar="CLIP",
                       help="an audio clip of the sound to separate (query by example) instead of -q")
    model.add_argument("--mode", choices=("extract", "remove"), default="extract",
                       help="extract the queried sound or remove it (default: extract)")
    model.add_argument("--bundle", type=Path, default=None, help=f"model bundle folder (default: {DEFAULT_BUNDLE})")
    model.add_argument("--hop", type=float, default=DEFAULT_HOP_SECONDS, metavar="SECONDS",
                       help=f"time between model windows (default: {DEFAULT_HOP_SECONDS})")
    model.add_argument("--lookahead", type=float, default=DEFAULT_LOOKAHEAD_SECONDS, metavar="SECONDS",
                       help=f"right context of every output sample (default: {DEFAULT_LOOKAHEAD_SECONDS}); "
                            f"latency = hop + lookahead + compute budget + device buffers")
    model.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                       help="time a window's model call may take before its output is due (default: the longest "
                            "hop the engine degrades to)")
    model.add_argument("--wet", type=float, default=1.0, help="wet/dry mix, 1 = separated only (default: 1)")
    model.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where the model runs (default: auto, CUDA when available)")
    model.add_argument("--threads", type=int, default=STREAM_THREADS,
                       help=f"CPU threads per graph (default: {STREAM_THREADS}, all cores but one, which is left "
                            f"to the audio callbacks)")
    model.add_argument("--precision", choices=("auto", "fp32", "fp16"), default="auto",
                       help="graph precision (default: auto, fp16 on CUDA when the bundle has it)")

    host = parser.add_argument_group("control and output")
    host.add_argument("--record", type=Path, default=None, metavar="FILE", help="record the output to FILE")
    host.add_argument("--record-input", type=Path, default=None, metavar="FILE", help="record the input to FILE")
    host.add_argument("--control-port", type=int, default=None, metavar="PORT",
                      help="accept commands on this TCP port of 127.0.0.1 (0: pick a free port and print it)")
    host.add_argument("--stats-json", type=Path, default=None, metavar="FILE",
                      help="write the final counters to FILE as JSON when the stream stops")
    host.add_argument("--status-interval", type=float, default=2.0, metavar="SECONDS",
                      help="seconds between status lines on stderr (0: none; default: 2)")
    host.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                      help="stop after this many seconds (default: run until Ctrl-C or quit)")


# ---------------------------------------------------------------------------------------------- recording


class Recorder:
    """Records blocks from the audio callback to a file without blocking the callback.

    The callback copies each (frames, channels) block into a preallocated ring buffer (:meth:`push`); a
    thread moves the frames into the file. The file is written under a temporary name and renamed to
    ``path`` by :meth:`close`. Blocks that find the ring full are dropped and counted (``dropped_frames``).
    """

    def __init__(self, path: Path, rate: int, channels: int, buffer_seconds: float = RECORD_BUFFER_SECONDS):
        from hybridsep_rt.audio import file_format

        if file_format(path) is None:
            raise ValueError(f"cannot record to {path}: unknown audio file extension (use .wav or .flac)")
        self.path = Path(path)
        self.rate = rate
        self.channels = channels
        self._ring = RingBuffer(channels, max(1, int(buffer_seconds * rate)))
        self._chunk = np.zeros((channels, self._ring.capacity), dtype=np.float32)
        self._files = contextlib.ExitStack()
        self._file = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_written = 0

    @property
    def dropped_frames(self) -> int:
        return self._ring.overflow_frames

    def start(self) -> None:
        import soundfile as sf

        from hybridsep_rt.atomic import atomic_path
        from hybridsep_rt.audio import file_format, writable_subtype

        temporary = self._files.enter_context(atomic_path(self.path, suffix=self.path.suffix))
        self._file = self._files.enter_context(sf.SoundFile(
            str(temporary), "w", samplerate=self.rate, channels=self.channels, format=file_format(self.path),
            subtype=writable_subtype(self.path, "FLOAT")))
        self._thread = threading.Thread(target=self._write_loop, name=f"record-{self.path.name}", daemon=True)
        self._thread.start()

    def push(self, block: np.ndarray) -> None:
        """Audio callback side: copy a (frames, channels) block; never blocks."""
        self._ring.write(block.T, partial=False)

    def _drain(self) -> None:
        count = self._ring.available
        if count:
            chunk = self._chunk[:, :count]
            self._ring.read(chunk)
            self._file.write(chunk.T)
            self.frames_written += count

    def _write_loop(self) -> None:
        while not self._stop.wait(RECORD_WRITE_INTERVAL_SECONDS):
            self._drain()

    def close(self) -> None:
        """Write what is left and finalise the file (renamed into place, with ordinary permissions)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._drain()
        self._file.close()
        os.chmod(self._file.name, 0o666 & ~_UMASK)  # the temporary file was created private
        self._files.close()


# ---------------------------------------------------------------------------------------------- rates


class RateAdapter:
    """Runs the engine at the model's rate inside a callback at a device's rate (when a device cannot run at
    the model's rate; PulseAudio devices never need it).

    Each callback block is resampled to the model's rate (soxr, streaming), processed, resampled back and
    queued; the callback reads its block from the queue. soxr returns its output in bursts (tens of
    milliseconds), so the adapter first runs ``RATE_ADAPTER_CALIBRATION_SECONDS`` of silence through both
    resamplers, in blocks of the callback's size, and measures how far the output falls behind the input at
    most; the queue starts with that much silence plus ``RATE_ADAPTER_PREFILL_BLOCKS`` blocks. (The
    resamplers allocate their small output arrays; the engine still never waits on the model.)
    """

    def __init__(self, engine, device_rate: int, model_rate: int, channels: int, block_frames: int):
        import soxr

        self.engine = engine
        self.device_rate = device_rate
        self.model_rate = model_rate
        self._to_model = soxr.ResampleStream(device_rate, model_rate, channels, dtype="float32")
        self._to_device = soxr.ResampleStream(model_rate, device_rate, channels, dtype="float32")
        block_frames = block_frames or DEFAULT_BLOCK_FRAMES
        spread, self._held = self._calibrate(block_frames, channels)
        self.prefill = spread + RATE_ADAPTER_PREFILL_BLOCKS * block_frames
        most = engine.config.max_block_frames * 4
        self._model_out = np.zeros((most, channels), dtype=np.float32)
        self._queue = RingBuffer(channels, self.prefill + 4 * most)
        self._queue.write_zeros(self.prefill)

    def _calibrate(self, block_frames: int, channels: int) -> tuple[int, int]:
        """Run silence through both resamplers. Returns the spread of (input - output) frames once the filters
        are full, and the frames they hold at the end, in device frames."""
        silence = np.zeros((block_frames, channels), dtype=np.float32)
        behind = []
        frames_in = frames_out = 0
        for _ in range(int(np.ceil(RATE_ADAPTER_CALIBRATION_SECONDS * self.device_rate / block_frames))):
            frames_out += self._to_device.resample_chunk(self._to_model.resample_chunk(silence)).shape[0]
            frames_in += block_frames
            behind.append(frames_in - frames_out)
        steady = behind[len(behind) // 2 :]  # after the filters filled up
        return max(steady) - min(steady), behind[-1]

    @property
    def latency_seconds(self) -> float:
        """Delay the adapter adds: the frames its resamplers hold and the queue's prefill."""
        return (self.prefill + self._held) / self.device_rate

    @property
    def underflow_frames(self) -> int:
        return self._queue.underflow_frames

    def process_block(self, inp: np.ndarray, out: np.ndarray) -> None:
        model_in = self._to_model.resample_chunk(inp)
        frames = model_in.shape[0]
        model_out = self._model_out[:frames]
        if frames:
            self.engine.process_block(model_in, model_out)
        self._queue.write(self._to_device.resample_chunk(model_out).T)
        self._queue.read(out.T)


# ---------------------------------------------------------------------------------------------- devices


@dataclass
class DeviceCounters:
    """PortAudio's callback status flags, counted (callback side only)."""

    input_overflows: int = 0
    input_underflows: int = 0
    output_overflows: int = 0
    output_underflows: int = 0

    def add(self, status) -> None:
        self.input_overflows += bool(status.input_overflow)
        self.input_underflows += bool(status.input_underflow)
        self.output_overflows += bool(status.output_overflow)
        self.output_underflows += bool(status.output_underflow)

    @property
    def xruns(self) -> int:
        return self.input_overflows + self.input_underflows + self.output_overflows + self.output_underflows


def choose_samplerate(input_device, output_device, channels: int, model_rate: int) -> int:
    """The model's rate if both devices accept it, else a rate both accept (their default rates)."""
    import sounddevice as sd

    candidates = [model_rate, output_device.default_samplerate, input_device.default_samplerate]
    for rate in dict.fromkeys(candidates):
        try:
            sd.check_input_settings(device=input_device.index, channels=channels, dtype="float32",
                                    samplerate=rate)
            sd.check_output_settings(device=output_device.index, channels=channels, dtype="float32",
                                     samplerate=rate)
        except Exception:  # sounddevice raises PortAudioError or ValueError for unsupported settings
            continue
        return int(rate)
    raise RuntimeError(f"{input_device.name} and {output_device.name} share no sample rate of "
                       f"{', '.join(str(r) for r in dict.fromkeys(candidates))} Hz with {channels} channels")


def choose_channels(input_device, output_device, requested: int | None) -> int:
    """``requested``, or the devices' own channel count (at most ``MAX_DEFAULT_CHANNELS``); PulseAudio
    devices take any count (the server remixes)."""
    limits = [d.channels for d in (input_device, output_device) if not d.is_pulse]
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--channels must be >= 1, got {requested}")
        if limits and requested > min(limits):
            raise ValueError(f"--channels {requested}: the devices have at most {min(limits)} channels")
        return requested
    native = [d.channels for d in (input_device, output_device) if d.channels > 0]
    return max(1, min([MAX_DEFAULT_CHANNELS, *native]))


class AudioHost:
    """The audio streams: opens the devices, runs the callbacks, notices when a device is lost.

    Input and output are two PortAudio streams (a duplex stream over ALSA's ``pulse`` device fails at random
    when the machine is busy). The input callback copies each block into a preallocated ring buffer, the
    *bridge*; the output callback takes the same number of frames from it and runs
    ``engine.process_block`` on them, so the engine sees one callback, on one thread. The bridge starts once
    it holds ``bridge_prefill`` frames (the input latency plus two blocks: PortAudio delivers input in bursts
    of up to its latency), which absorbs the jitter between the two callbacks; if it runs dry the engine gets
    zeros (counted in ``bridge_underflow_frames``), and if the input gets ahead by more than a prefill (the
    clocks of two devices drifting apart) the excess is dropped (``bridge_dropped_frames``).

    Args:
        engine: the :class:`StreamingEngine`.
        input_device, output_device: :class:`hybridsep_rt.devices.AudioDevice`.
        channels: stream channels (the engine's).
        block_frames: frames per callback (0: PortAudio chooses).
        latency: device latency asked of PortAudio, seconds per direction.
        recorders: ``(recorder, "input" | "output")`` pairs, fed from the output callback with the blocks
            going into and coming out of the engine.
    """

    def __init__(self, engine, input_device, output_device, channels: int, block_frames: int, latency: float,
                 recorders: list[tuple[Recorder, str]]):
        self.engine = engine
        self.input_device = input_device
        self.output_device = output_device
        self.channels = channels
        self.block_frames = block_frames
        self.latency = latency
        self.model_rate = engine.timing.sample_rate
        self.samplerate = self.model_rate
        self._input_recorders = [r for r, side in recorders if side == "input"]
        self._output_recorders = [r for r, side in recorders if side == "output"]
        self.counters = DeviceCounters()
        self.processor = engine
        self.adapter: RateAdapter | None = None
        self.streams: list = []
        self.frames = 0
        self.device_latency = 0.0
        self.bridge_prefill = 0  # set by open(), from the input latency
        self._piece = max(block_frames, DEFAULT_BLOCK_FRAMES) * 4  # frames the output callback handles at once
        self._bridge = RingBuffer(channels, 1)
        self._block = np.zeros((self._piece, channels), dtype=np.float32)
        self._bridge_started = False
        self.bridge_dropped_frames = 0
        self._bridge_underflow_base = 0  # underflows of bridges replaced by larger ones
        self.last_input_callback = self.last_output_callback = time.monotonic()
        self._closing = False
        self._finished = threading.Event()
        self._last_pulse_check = 0.0

    @property
    def bridge_underflow_frames(self) -> int:
        return self._bridge_underflow_base + self._bridge.underflow_frames

    # -------------------------------------------------------------- the audio callbacks

    def _input_callback(self, indata, frames, time_info, status) -> None:
        if status:
            self.counters.add(status)
        self._bridge.write(indata.T, partial=False)
        self.last_input_callback = time.monotonic()

    def _output_callback(self, outdata, frames, time_info, status) -> None:
        if status:
            self.counters.add(status)
        self.last_output_callback = time.monotonic()
        bridge = self._bridge
        if not self._bridge_started:
            if bridge.available < self.bridge_prefill + frames:
                outdata.fill(0.0)
                return
            bridge.discard(bridge.available - self.bridge_prefill - frames)  # start in step with the input
            self._bridge_started = True
        elif bridge.available > 2 * self.bridge_prefill + frames:
            excess = bridge.available - self.bridge_prefill - frames
            bridge.discard(excess)
            self.bridge_dropped_frames += excess
        done = 0
        while done < frames:
            count = min(self._piece, frames - done)
            block = self._block[:count]
            out = outdata[done : done + count]
            bridge.read(block.T)
            self.processor.process_block(block, out)
            for recorder in self._input_recorders:
                recorder.push(block)
            for recorder in self._output_recorders:
                recorder.push(out)
            done += count
        self.frames += frames

    def _on_finished(self) -> None:
        self._finished.set()

    # -------------------------------------------------------------- opening and closing

    def open(self) -> None:
        """Open and start the streams (raises on failure: PortAudioError, DeviceError, RuntimeError)."""
        import sounddevice as sd

        from hybridsep_rt.devices import pulse_environment

        os.environ.update(pulse_environment(self.input_device, self.output_device))
        rate = choose_samplerate(self.input_device, self.output_device, self.channels, self.model_rate)
        if rate == self.model_rate:
            self.adapter = None
        elif self.adapter is None or self.adapter.device_rate != rate:
            self.adapter = RateAdapter(self.engine, rate, self.model_rate, self.channels, self.block_frames)
        self.processor = self.adapter or self.engine
        self.samplerate = rate
        self._finished.clear()
        self._closing = False
        self._bridge_started = False
        settings = {"samplerate": rate, "channels": self.channels, "dtype": "float32",
                    "blocksize": self.block_frames, "latency": self.latency, "finished_callback": self._on_finished}
        try:
            self.streams.append(sd.InputStream(device=self.input_device.index, callback=self._input_callback,
                                               **settings))
            self.streams.append(sd.OutputStream(device=self.output_device.index, callback=self._output_callback,
                                                **settings))
            self._size_bridge(self.streams[0].latency, rate)
            self.last_input_callback = self.last_output_callback = time.monotonic()
            for stream in self.streams:
                stream.start()
        except Exception:
            self.close()
            raise
        input_latency, output_latency = self.streams[0].latency, self.streams[1].latency
        self.device_latency = input_latency + output_latency + self.bridge_prefill / rate
        if self.adapter is not None:
            self.device_latency += self.adapter.latency_seconds
        self.engine.set_device_latency(self.device_latency)

    def _size_bridge(self, input_latency: float, rate: int) -> None:
        """Prefill: the input latency (PortAudio delivers input in bursts of up to about that much) plus
        ``BRIDGE_PREFILL_BLOCKS`` blocks. The ring holds several times that."""
        block = self.block_frames or DEFAULT_BLOCK_FRAMES
        self.bridge_prefill = int(np.ceil(input_latency * rate)) + BRIDGE_PREFILL_BLOCKS * block
        capacity = 4 * self.bridge_prefill + 2 * self._piece
        if self._bridge.capacity < capacity:
            self._bridge_underflow_base += self._bridge.underflow_frames
            self._bridge = RingBuffer(self.channels, capacity)
        self._bridge.discard(self._bridge.available)

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> bool:
        """Abort and close the streams. Returns False when PortAudio has not returned within ``timeout``
        seconds (a driver stuck on a vanished device): the streams are then left to a background thread."""
        self._closing = True
        streams, self.streams = self.streams, []
        if not streams:
            return True
        closer = threading.Thread(target=_abort_and_close, args=(streams,), name="hybridsep-close", daemon=True)
        _closers.append(closer)
        closer.start()
        closer.join(timeout)
        return not closer.is_alive()

    # -------------------------------------------------------------- health

    def problem(self) -> str | None:
        """Why the streams cannot go on (a lost device), or None."""
        if not self.streams:
            return "the stream is closed"
        if self._finished.is_set() and not self._closing:
            return "the audio stream stopped with an error (PortAudio); a device was probably disconnected"
        stall = max(STALL_MIN_SECONDS, 20 * (self.block_frames or DEFAULT_BLOCK_FRAMES) / self.samplerate)
        stall += self.device_latency
        now = time.monotonic()
        for side, last in (("input", self.last_input_callback), ("output", self.last_output_callback)):
            if now - last > stall:
                return f"the {side} callback has not run for {stall:.1f} s: the {side} device stopped"
        if now - self._last_pulse_check >= PULSE_CHECK_SECONDS:
            self._last_pulse_check = now
            return self._missing_pulse_device()
        return None

    def _missing_pulse_device(self) -> str | None:
        from hybridsep_rt.devices import device_present

        for device in (self.input_device, self.output_device):
            if device_present(device) is False:
                return (f"{device.kind} device {device.name} left the sound server (PulseAudio would move the "
                        f"stream to its default {'source' if device.kind == 'input' else 'sink'}, so it was "
                        f"stopped)")
        return None

    def devices_back(self) -> bool:
        """With a lost device: True once both devices can be opened again (PortAudio re-scanned)."""
        from hybridsep_rt.devices import DeviceError, device_present, refreshed, reinitialise_portaudio

        if any(device_present(d) is False for d in (self.input_device, self.output_device)):
            return False
        try:
            reinitialise_portaudio()  # refused while a stuck stream is still closing: the next check tries again
            self.input_device = refreshed(self.input_device)
            self.output_device = refreshed(self.output_device)
        except DeviceError:
            return False
        return self.input_device.index is not None and self.output_device.index is not None


_closers: list[threading.Thread] = []  # the threads of AudioHost.close, also those left behind by a timeout


def streams_closing() -> bool:
    """Whether a stream that AudioHost.close gave up waiting for is still closing (its driver has not returned).
    PortAudio must not be terminated or re-initialised while one is."""
    _closers[:] = [thread for thread in _closers if thread.is_alive()]
    return bool(_closers)


def _abort_and_close(streams: list) -> None:
    for stream in streams:
        with contextlib.suppress(Exception):  # a stream whose device vanished may fail to stop
            stream.abort(ignore_errors=True)
        with contextlib.suppress(Exception):
            stream.close(ignore_errors=True)


# ---------------------------------------------------------------------------------------------- the command


class StreamSession:
    """Everything one ``hybridsep stream`` run holds: engine, audio host, recorders, control, counters."""

    def __init__(self, args, engine, host: AudioHost, recorders: list[Recorder], input_name: str,
                 output_name: str):
        self.args = args
        self.engine = engine
        self.host = host
        self.recorders = recorders
        self.input_name = input_name
        self.output_name = output_name
        self.stop_requested = threading.Event()
        self.started = time.monotonic()
        self.reconnects = 0
        self.devices_lost = 0
        self.last_problem: str | None = None
        self.next_reconnect = 0.0
        self.stopped = False
        self.controller = Controller(engine, self.describe, self.stop_requested.set)

    def lost(self, problem: str) -> None:
        """A device is gone (the stream is closed): count it, say so, and look for it from now on."""
        self.devices_lost += 1
        self.last_problem = problem
        self.next_reconnect = time.monotonic() + RECONNECT_INTERVAL_SECONDS
        _log(f"hybridsep stream: {problem}; waiting for {self.host.input_device.name} and "
             f"{self.host.output_device.name} to come back")

    def try_reconnect(self) -> None:
        """Reopen the stream once the devices are back (called every main-loop turn while closed)."""
        now = time.monotonic()
        if now < self.next_reconnect:
            return
        self.next_reconnect = now + RECONNECT_INTERVAL_SECONDS
        host = self.host
        if not host.devices_back():
            return
        try:
            host.open()
        except Exception as e:  # PortAudioError and friends: the device is not ready yet
            host.close()
            self.last_problem = f"reopening failed: {e}"
            return
        self.reconnects += 1
        _install_stop_signal(self.stop_requested)
        _log(f"reconnected: streaming {host.input_device.name} -> {host.output_device.name} again "
             f"(latency {self.engine.latency_seconds:.2f} s)")

    def describe(self) -> dict:
        """The counters and settings (the ``stats`` command, status lines and ``--stats-json``)."""
        stats = asdict(self.engine.stats())
        query = self.engine.query
        counters = self.host.counters
        stats.update({
            "query": None if query is None else (query.text if query.text is not None else "(example clip)"),
            "mode": None if query is None else query.mode,
            "wet": self.controller.wet,
            "bypass": self.controller.bypass,
            "elapsed_seconds": round(time.monotonic() - self.started, 3),
            "input": self.input_name,
            "output": self.output_name,
            "samplerate": self.host.samplerate,
            "model_samplerate": self.host.model_rate,
            "channels": self.host.channels,
            "block_frames": self.host.block_frames,
            "device_latency_seconds": self.host.device_latency,
            "frames": self.host.frames,
            "device_input_overflows": counters.input_overflows,
            "device_input_underflows": counters.input_underflows,
            "device_output_overflows": counters.output_overflows,
            "device_output_underflows": counters.output_underflows,
            "device_xruns": counters.xruns,
            "rate_adapter_underflow_frames": self.host.adapter.underflow_frames if self.host.adapter else 0,
            "record_dropped_frames": sum(r.dropped_frames for r in self.recorders),
            "devices_lost": self.devices_lost,
            "reconnects": self.reconnects,
            "last_device_problem": self.last_problem,
            "bridge_underflow_frames": self.host.bridge_underflow_frames,
            "bridge_dropped_frames": self.host.bridge_dropped_frames,
            "streaming": bool(self.host.streams),
        })
        return stats

    def status_line(self) -> str:
        s = self.describe()
        query = "none (dry)" if s["query"] is None else f"{s['query']!r} ({s['mode']})"
        state = "" if s["streaming"] or self.stopped else " | WAITING FOR DEVICE"
        if s["passthrough"]:
            state += " | PASS-THROUGH (model too slow)"
        if s["bypass"]:
            state += " | bypass"
        return (f"[{s['elapsed_seconds']:7.1f} s] query {query} | latency {s['latency_seconds']:.2f} s | compute "
                f"{s['last_compute_seconds'] * 1000:.0f} ms/window (mean {s['mean_compute_seconds'] * 1000:.0f}) "
                f"| hop {s['hop_seconds']:.2f} s | windows {s['windows']} | device xruns {s['device_xruns']} | "
                f"engine overflows {s['input_overflows']} underflows {s['output_underflows']} late "
                f"{s['late_frames']} | degradations {s['degradations']}{state}")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _separator_and_query(args):
    """The bundle's separator and the initial query (None: dry until a ``q`` command)."""
    from hybridsep_rt.audio import read_audio, to_model_rate
    from hybridsep_rt.engine import Query
    from hybridsep_rt.separate import _bundle_path
    from hybridsep_rt.separator import OnnxSeparator

    if args.query is not None and args.example is not None:
        raise ValueError("give -q QUERY or --example CLIP, not both")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.query is not None and not args.query.strip():
        raise ValueError("the text query is empty: describe the sound to separate, e.g. -q \"a dog barking\"")
    separator = OnnxSeparator(_bundle_path(args), device=args.device, threads=args.threads,
                              precision=args.precision)
    query = None
    if args.query is not None:
        query = Query(text=args.query, mode=args.mode)
    elif args.example is not None:
        clip, rate = read_audio(args.example)
        query = Query(example=to_model_rate(clip, rate, separator.sample_rate), mode=args.mode)
    return separator, query


def _install_stop_signal(event: threading.Event) -> None:
    """SIGTERM stops the stream; SIGINT (Ctrl-C) gets Python's handler back, which native audio code that
    opens a device may have replaced. Called at start and after every (re)open."""
    with contextlib.suppress(ValueError):  # only the main thread may set signal handlers
        signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
        signal.signal(signal.SIGINT, signal.default_int_handler)


def stream(args) -> int:
    """Run the stream until stopped; returns the exit status (1 when a device was lost without --reconnect)."""
    import sounddevice as sd

    from hybridsep_rt.control import ControlServer, read_commands
    from hybridsep_rt.devices import INPUT, OUTPUT, find_device, list_devices
    from hybridsep_rt.engine import EngineConfig, StreamingEngine

    if args.block < 0:
        raise ValueError(f"--block must be >= 0, got {args.block}")
    if args.latency <= 0:
        raise ValueError(f"--latency must be > 0, got {args.latency}")
    devices = list_devices()
    input_device = find_device(args.input, INPUT, devices)
    output_device = find_device(args.output, OUTPUT, devices)
    channels = choose_channels(input_device, output_device, args.channels)

    separator, query = _separator_and_query(args)
    config = EngineConfig(hop_seconds=args.hop, lookahead_seconds=args.lookahead, wet=args.wet,
                          compute_budget_seconds=args.budget, channels=channels,
                          max_block_frames=max(EngineConfig.max_block_frames, args.block))
    engine = StreamingEngine(separator, config, query=query)
    rate = separator.sample_rate
    sides = [(path, side) for path, side in ((args.record, "output"), (args.record_input, "input")) if path]
    recorders = [(Recorder(path, rate, channels), side) for path, side in sides]
    host = AudioHost(engine, input_device, output_device, channels, args.block, args.latency, recorders)
    session = StreamSession(args, engine, host, [r for r, _ in recorders], input_device.name, output_device.name)
    server = None
    exit_status = 0
    closed = True
    _install_stop_signal(session.stop_requested)
    faulthandler.enable()  # a crash or SIGABRT in native audio code prints every thread's Python stack
    try:
        if args.control_port is not None:
            server = ControlServer(session.controller, args.control_port)
            server.start()
            _log(f"control: listening on 127.0.0.1:{server.port}")
        read_commands(sys.stdin, session.controller, lambda reply: print(reply, flush=True))
        engine.start()
        try:
            host.open()
        except (sd.PortAudioError, RuntimeError) as e:
            if not args.reconnect:
                raise
            session.lost(f"cannot open the devices ({e})")
        for recorder in session.recorders:
            recorder.rate = host.samplerate  # what the callback sees (the model's rate unless adapted)
            recorder.start()
        _install_stop_signal(session.stop_requested)
        if host.streams:
            timing = engine.timing
            _log(f"streaming {input_device.name} -> {output_device.name}: {host.samplerate} Hz (model {rate} Hz), "
                 f"{channels} ch, block {args.block or 'auto'}, on {separator.provider}; latency "
                 f"{engine.latency_seconds:.2f} s = hop {timing.hop / rate:.2f} + lookahead "
                 f"{timing.lookahead / rate:.2f} + compute budget {timing.compute_budget / rate:.2f} + devices "
                 f"{host.device_latency:.3f}")
        exit_status = _main_loop(session)
    except KeyboardInterrupt:
        _log("stopping (Ctrl-C)")
    finally:
        session.stopped = True
        closed = host.close()
        if not closed:
            _log(f"the audio devices did not close within {CLOSE_TIMEOUT_SECONDS:.0f} s; leaving them behind")
        engine.stop()
        if server is not None:
            server.close()
        for recorder in session.recorders:
            recorder.close()
            if recorder.frames_written:
                _log(f"wrote {recorder.path} ({recorder.frames_written / recorder.rate:.1f} s)")
        if args.stats_json is not None:
            from hybridsep_rt.atomic import atomic_write_text

            atomic_write_text(args.stats_json, json.dumps(session.describe(), indent=2, sort_keys=True) + "\n")
            os.chmod(args.stats_json, 0o666 & ~_UMASK)
        _log("final: " + session.status_line())
    if not closed:  # PortAudio would wait for the stuck streams when the interpreter exits
        sys.stdout.flush()
        os._exit(exit_status)
    return exit_status


def _main_loop(session: StreamSession) -> int:
    """Watch the clock, the devices and the status interval until a stop is requested."""
    args, host = session.args, session.host
    interval = args.status_interval
    next_status = time.monotonic() + interval if interval and interval > 0 else None
    deadline = time.monotonic() + args.duration if args.duration is not None else None
    while not session.stop_requested.wait(MAIN_LOOP_SECONDS):
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if next_status is not None and now >= next_status:
            _log(session.status_line())
            next_status = now + interval
        if not host.streams:
            session.try_reconnect()
            continue
        problem = host.problem()
        if problem is None:
            continue
        if not host.close():
            problem += f"; its stream did not close within {CLOSE_TIMEOUT_SECONDS:.0f} s and was left behind"
        if not args.reconnect:
            session.devices_lost += 1
            session.last_problem = problem
            _log(f"hybridsep stream: error: {problem}; stopping (pass --reconnect to wait for the device)")
            return 1
        session.lost(problem)
    return 0


def run(args) -> int:
    from hybridsep_rt.audio import AudioError
    from hybridsep_rt.bundle import BundleError
    from hybridsep_rt.devices import DeviceError

    try:
        import sounddevice  # noqa: F401  (fails when the PortAudio library is missing)
    except OSError as e:
        print(f"hybridsep stream: error: cannot load PortAudio ({e}); install libportaudio2", file=sys.stderr)
        return 2
    import sounddevice as sd

    try:
        return stream(args)
    except (BundleError, AudioError, DeviceError, FileNotFoundError, ValueError, RuntimeError,
            sd.PortAudioError) as e:
        print(f"hybridsep stream: error: {e}", file=sys.stderr)
        return 2

"""The live stream behind the window: engine, audio host, recording, and recovery when a device is lost.

The stream is ``hybridsep_rt``'s: a ``StreamingEngine`` (worker thread) behind ``hybridsep_rt.stream.AudioHost``
(the PortAudio callbacks), with an :class:`gui.audio_io.AudioTap` between them for the display. Settings that
the engine fixes at construction (separator, hop, lookahead, channels, devices) rebuild it; the others (query,
mode, wet, bypass) are passed on at once. A :class:`gui.device_watch.DeviceWatcher` thread notices a lost
device (the controller closes the stream and says so) and changed devices (``devices_changed``); the window
calls :meth:`LiveController.poll` from a timer, which reopens a waiting stream once its devices are back.

States (``state_changed(state, message)``): "stopped" (nothing to run: no model or no device chosen), "streaming",
"waiting" (a device is lost or cannot be opened; retried every ``RECONNECT_INTERVAL_SECONDS``), "error" (the
settings cannot work, e.g. a hop longer than the model's window).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from PyQt6.QtCore import QObject, pyqtSignal

from gui.audio_io import AudioTap
from gui.device_watch import DeviceWatcher
from hybridsep_rt.devices import (
    INPUT,
    OUTPUT,
    AudioDevice,
    DeviceError,
    find_device,
    list_devices,
    reinitialise_portaudio,
)
from hybridsep_rt.engine import EngineConfig, Query, StreamingEngine
from hybridsep_rt.stream import (
    DEFAULT_BLOCK_FRAMES,
    DEFAULT_DEVICE_LATENCY_SECONDS,
    RECONNECT_INTERVAL_SECONDS,
    AudioHost,
    Recorder,
)

__all__ = ["LiveController", "device_label"]


def device_label(device: AudioDevice) -> str:
    """How the device lists show a device: its description, loopback mark and where it lives."""
    mark = "  [loopback]" if device.loopback else ""
    where = "PulseAudio" if device.is_pulse else f"{device.host_api} #{device.index}"
    return f"{device.description}{mark}  ({where})"


class LiveController(QObject):
    """Owns the live engine and audio streams for the window (used from the GUI thread only).

    Attributes:
        separator: the loaded ``OnnxSeparator`` (None: nothing streams).
        tap: the running engine wrapped in an :class:`AudioTap` (None when no stream is built).
        recorder: a ``hybridsep_rt.stream.Recorder`` of the output while recording.
        state, message: the last state reported.
    """

    state_changed = pyqtSignal(str, str)
    devices_changed = pyqtSignal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.separator = None
        self.tap: AudioTap | None = None
        self.host: AudioHost | None = None
        self.recorder: Recorder | None = None
        self.input_name: str | None = None
        self.output_name: str | None = None
        self.channels = 2
        self.hop_seconds = 1.0
        self.lookahead_seconds = 1.0
        self.query: Query | None = None
        self.wet = 1.0
        self.bypass = False
        self.state = "stopped"
        self.message = ""
        self.reconnects = 0
        self._next_reconnect = 0.0
        self._devices: list[AudioDevice] = []
        self.watcher = DeviceWatcher(lambda: self.host, self)
        self.watcher.lost.connect(self._lost)
        self.watcher.devices_changed.connect(self.devices_changed)
        self.watcher.start()

    # ------------------------------------------------------------------ devices

    def list_devices(self) -> tuple[list[AudioDevice], list[AudioDevice]]:
        """(inputs, outputs): PulseAudio sources and sinks first (monitors marked loopback), then PortAudio's."""
        devices = sorted(list_devices(), key=lambda d: not d.is_pulse)
        self._devices = devices
        return [d for d in devices if d.kind == INPUT], [d for d in devices if d.kind == OUTPUT]

    def default_device_name(self, devices: list[AudioDevice]) -> str | None:
        """The name of the system default among ``devices`` (all of one kind), None when there is none."""
        if not devices:
            return None
        try:
            return find_device(None, devices[0].kind, devices).name
        except DeviceError:
            return None

    def rescan(self) -> None:
        """Make PortAudio scan the hardware again (PulseAudio devices are listed live anyway). Open streams
        must be closed for that: a running stream is reopened afterwards, also when the rescan is refused
        (DeviceError while a stream of a stuck driver is still closing)."""
        running = self.host is not None and bool(self.host.streams)
        if self.host is not None:
            self.host.close()
        try:
            reinitialise_portaudio()
        finally:
            self._devices = []
            if running:
                self.restart()

    def output_device(self) -> AudioDevice | None:
        """The output device chosen (for file playback), None when it cannot be found."""
        try:
            return find_device(self.output_name, OUTPUT, self._devices or None)
        except DeviceError:
            return None

    def retry_soon(self) -> None:
        """The device list changed: try at once to open a stream that is waiting for its devices."""
        if self.state == "waiting":
            self._next_reconnect = 0.0

    # ------------------------------------------------------------------ settings that rebuild the stream

    def open(self, input_name: str | None, output_name: str | None) -> None:
        """Stream from ``input_name`` to ``output_name`` (device names; None: the system default)."""
        self.input_name, self.output_name = input_name, output_name
        self.restart()

    def set_separator(self, separator) -> None:
        """Use ``separator`` from the next :meth:`restart` (None: stop streaming)."""
        self.separator = separator
        if separator is None:
            self.stop()

    def set_timing(self, hop_seconds: float, lookahead_seconds: float) -> None:
        changed = (hop_seconds, lookahead_seconds) != (self.hop_seconds, self.lookahead_seconds)
        self.hop_seconds, self.lookahead_seconds = hop_seconds, lookahead_seconds
        if changed and self.tap is not None:
            self.restart()

    def set_channels(self, channels: int) -> None:
        changed = channels != self.channels
        self.channels = channels
        if changed and self.tap is not None:
            self.restart()

    def restart(self) -> None:
        """(Re)build the engine and open the streams with the current settings."""
        self._close_stream()
        if self.separator is None:
            self._set_state("stopped", "No model loaded: the live stream starts once a bundle loads.")
            return
        try:
            devices = self._devices or list_devices()
            input_device = find_device(self.input_name, INPUT, devices)
            output_device = find_device(self.output_name, OUTPUT, devices)
        except DeviceError as e:
            self._set_state("waiting", f"Audio device unavailable: {e}")
            self._next_reconnect = time.monotonic() + RECONNECT_INTERVAL_SECONDS
            return
        window_seconds = self.separator.window_samples / self.separator.sample_rate
        hop = min(self.hop_seconds, window_seconds)
        config = EngineConfig(hop_seconds=hop, lookahead_seconds=self.lookahead_seconds, wet=self.wet,
                              channels=self.channels)
        try:
            engine = StreamingEngine(self.separator, config, query=self.query)
        except ValueError as e:
            self._set_state("error", f"Cannot stream with these settings: {e}")
            return
        engine.set_bypass(self.bypass)
        self.tap = AudioTap(engine)
        if self.recorder is not None:
            if (self.recorder.rate, self.recorder.channels) == (self.sample_rate, self.channels):
                self.tap.recorder = self.recorder
            else:  # a recording cannot change its rate or channels midway
                self.stop_recording()
        self.host = AudioHost(self.tap, input_device, output_device, self.channels, DEFAULT_BLOCK_FRAMES,
                              DEFAULT_DEVICE_LATENCY_SECONDS, [])
        engine.start()
        self._try_open()

    def _try_open(self) -> bool:
        host = self.host
        try:
            host.open()
        except Exception as e:  # PortAudioError, DeviceError, RuntimeError: the device is missing or busy
            host.close()
            self._next_reconnect = time.monotonic() + RECONNECT_INTERVAL_SECONDS
            self._set_state("waiting", f"Cannot open {host.input_device.name} → {host.output_device.name}: {e}. "
                                       f"Retrying…")
            return False
        adapted = f", converted from {host.samplerate} Hz" if host.adapter is not None else ""
        self._set_state("streaming", f"Streaming {host.input_device.description} → "
                                     f"{host.output_device.description}, {self.sample_rate} Hz{adapted}, "
                                     f"{self.channels} ch")
        return True

    def _close_stream(self) -> None:
        if self.host is not None:
            self.host.close()
        if self.tap is not None:
            self.tap.recorder = None
            self.tap.engine.stop()
        self.host = None
        self.tap = None

    # ------------------------------------------------------------------ settings passed on at once

    def set_query(self, query: Query | None) -> None:
        self.query = query
        if self.tap is not None:
            self.tap.engine.set_query(query)

    def set_wet(self, wet: float) -> None:
        self.wet = wet
        if self.tap is not None:
            self.tap.engine.set_wet(wet)

    def set_bypass(self, bypass: bool) -> None:
        self.bypass = bool(bypass)
        if self.tap is not None:
            self.tap.engine.set_bypass(self.bypass)

    # ------------------------------------------------------------------ what the window shows

    @property
    def sample_rate(self) -> int | None:
        """The rate the engine runs at (the streams', unless the host converts)."""
        return self.tap.timing.sample_rate if self.tap is not None else None

    @property
    def device_rate(self) -> int | None:
        """The rate the audio devices run at (the model's unless the host converts), None without a stream."""
        return self.host.samplerate if self.host is not None and self.host.streams else None

    @property
    def timing(self):
        return self.tap.timing if self.tap is not None else None

    @property
    def engine(self) -> StreamingEngine | None:
        return self.tap.engine if self.tap is not None else None

    def stats(self):
        """The engine's ``EngineStats``, or None without an engine."""
        return self.tap.engine.stats() if self.tap is not None else None

    def _lost(self, host: AudioHost, problem: str) -> None:
        """The watcher found ``host`` unable to go on: close it and wait for the device."""
        if host is not self.host or not host.streams:
            return  # a stream closed or replaced since
        host.close()
        self._next_reconnect = time.monotonic() + RECONNECT_INTERVAL_SECONDS
        self._set_state("waiting", f"Audio device lost: {problem}. Waiting for it to come back…")

    def poll(self) -> None:
        """Reopen a waiting stream once its devices are back (tried every ``RECONNECT_INTERVAL_SECONDS``)."""
        host = self.host
        if self.state != "waiting" or time.monotonic() < self._next_reconnect:
            return
        if host is None:
            self.restart()
            return
        if host.streams:
            return
        self._next_reconnect = time.monotonic() + RECONNECT_INTERVAL_SECONDS
        if host.devices_back() and self._try_open():
            self.reconnects += 1

    # ------------------------------------------------------------------ recording

    def start_recording(self, path: str | Path) -> None:
        """Record the output to ``path`` (.wav, .flac ...) until :meth:`stop_recording`."""
        if self.tap is None:
            raise RuntimeError("nothing is streaming")
        if self.recorder is not None:
            self.stop_recording()
        recorder = Recorder(Path(path), self.tap.timing.sample_rate, self.channels)
        recorder.start()
        self.recorder = recorder
        self.tap.recorder = recorder

    def stop_recording(self) -> Path | None:
        """Finish the recording; returns its path (None when none was running)."""
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return None
        if self.tap is not None:
            self.tap.recorder = None
        recorder.close()
        return recorder.path

    # ------------------------------------------------------------------ ending

    def stop(self) -> None:
        """Stop recording and streaming."""
        with contextlib.suppress(Exception):
            self.stop_recording()
        self._close_stream()
        self._set_state("stopped", "Stopped")

    def close(self) -> None:
        """Stop recording, streaming and watching the devices (the controller is not used after this)."""
        self.watcher.stop()
        self.stop()

    def _set_state(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        self.state_changed.emit(state, message)

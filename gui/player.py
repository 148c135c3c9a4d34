"""Playing a separated file through the output device (file mode's "Listen").

A sounddevice output stream whose callback only copies the next frames of the stem; the GUI thread reads how
far it got (:meth:`FilePlayer.take_played`) to draw what is playing. PulseAudio sinks are selected as the
live stream selects them (``hybridsep_rt.devices.pulse_environment``).
"""

from __future__ import annotations

import os

import numpy as np
from PyQt6.QtCore import QObject, QTimer, pyqtSignal

from hybridsep_rt.audio import resample
from hybridsep_rt.devices import AudioDevice, pulse_environment

__all__ = ["FilePlayer"]

PLAYER_LATENCY_SECONDS = 0.1  # output buffering asked of PortAudio
FINISH_CHECK_MS = 100  # how often the GUI thread looks whether playback has ended


class FilePlayer(QObject):
    """Plays one (channels, samples) array at a time.

    Signals:
        finished(): playback reached the end or was stopped.
        failed(str): the device could not be opened.
    """

    finished = pyqtSignal()
    failed = pyqtSignal(str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._stream = None
        self._audio = np.zeros((0, 1), dtype=np.float32)  # (frames, channels), the callback's layout
        self._position = 0  # written by the callback only
        self._taken = 0  # read position of take_played (GUI thread)
        self.rate = 0  # the playing stream's sample rate
        self._timer = QTimer(self, interval=FINISH_CHECK_MS, timeout=self._check_finished)

    @property
    def playing(self) -> bool:
        return self._stream is not None

    def play(self, audio: np.ndarray, rate: int, device: AudioDevice | None) -> None:
        """Play ``audio`` (channels, samples) at ``rate`` on ``device`` (None: the system default)."""
        import sounddevice as sd

        self.stop()
        if device is None:
            self.failed.emit("cannot play: the output device is not available")
            return
        try:
            stream_rate = self._stream_rate(sd, device, rate, audio.shape[0])
            if stream_rate != rate:
                audio = resample(audio, rate, stream_rate)
            channels = audio.shape[0] if device.is_pulse else min(audio.shape[0], device.channels)
            self._audio = np.ascontiguousarray(audio[:channels].T, dtype=np.float32)
            self._position = self._taken = 0
            self.rate = stream_rate
            os.environ.update(pulse_environment(None, device))
            stream = sd.OutputStream(device=device.index, samplerate=stream_rate, channels=channels,
                                     dtype="float32", latency=PLAYER_LATENCY_SECONDS, callback=self._callback)
            stream.start()
        except Exception as e:  # PortAudioError and friends
            self.failed.emit(f"cannot play on {device.name}: {e}")
            return
        self._stream = stream
        self._timer.start()

    @staticmethod
    def _stream_rate(sd, device: AudioDevice, rate: int, channels: int) -> int:
        """``rate`` when the device takes it (PulseAudio always does), else the device's default rate."""
        if device.is_pulse:
            return rate
        try:
            sd.check_output_settings(device=device.index, samplerate=rate, dtype="float32",
                                     channels=min(channels, device.channels))
            return rate
        except Exception:  # PortAudioError or ValueError: the rate is not supported
            return int(device.default_samplerate)

    def _callback(self, outdata, frames, time_info, status) -> None:
        import sounddevice as sd

        start = self._position
        count = max(0, min(frames, self._audio.shape[0] - start))
        outdata[:count] = self._audio[start : start + count]
        outdata[count:] = 0.0
        self._position = start + count
        if count < frames:
            raise sd.CallbackStop()

    def take_played(self) -> np.ndarray | None:
        """The (channels, frames) audio played since the last call, None when nothing plays."""
        if self._stream is None:
            return None
        end = self._position
        played = self._audio[self._taken : end].T
        self._taken = end
        return played

    def _check_finished(self) -> None:
        if self._stream is not None and not self._stream.active:
            self.stop()

    def stop(self) -> None:
        self._timer.stop()
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)
        except Exception:  # a stream whose device vanished may fail to close
            pass
        self.finished.emit()

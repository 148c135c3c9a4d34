"""Watching the audio devices off the GUI thread.

Asking the sound server (``pactl``) takes tens of milliseconds, long enough to stutter the display, so a thread
does it: it checks the running stream (``AudioHost.problem``: callbacks stopped, or the chosen PulseAudio
device left the server) and notices when PulseAudio sources or sinks come or go. It only reports; the GUI
thread acts (closes the stream, refreshes the lists). It never calls PortAudio, which the GUI thread may be
re-initialising at the same time.
"""

from __future__ import annotations

from PyQt6.QtCore import QThread, pyqtSignal

from hybridsep_rt.devices import INPUT, OUTPUT, pulse_names

__all__ = ["DeviceWatcher"]

STREAM_CHECK_MS = 250  # how often the running stream is checked
DEVICE_CHECK_MS = 1000  # how often the sound server's device names are compared


class DeviceWatcher(QThread):
    """Reports a lost stream and changed devices.

    Args:
        current_host: returns the ``hybridsep_rt.stream.AudioHost`` to watch (None: none runs).

    Signals:
        lost(host, problem): ``host`` cannot go on, for the reason ``problem``.
        devices_changed(): the PulseAudio sources or sinks changed (or the server came or went).
    """

    lost = pyqtSignal(object, str)
    devices_changed = pyqtSignal()

    def __init__(self, current_host, parent=None):
        super().__init__(parent)
        self.current_host = current_host
        self._names = None

    def run(self) -> None:
        since_devices = DEVICE_CHECK_MS
        while not self.isInterruptionRequested():
            host = self.current_host()
            if host is not None and host.streams:
                problem = host.problem()
                if problem is not None:
                    self.lost.emit(host, problem)
            if since_devices >= DEVICE_CHECK_MS:
                since_devices = 0
                names = (pulse_names(INPUT), pulse_names(OUTPUT))
                if names != self._names:
                    self._names = names
                    self.devices_changed.emit()
            self.msleep(STREAM_CHECK_MS)
            since_devices += STREAM_CHECK_MS

    def stop(self) -> None:
        self.requestInterruption()
        self.wait()

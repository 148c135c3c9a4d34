"""Real audio devices for tests: a private PulseAudio server with null sinks.

:func:`pulse_server` returns a :class:`PulseServer` for the test session: it starts its own ``pulseaudio``
daemon on a socket in a temporary folder (so tests neither disturb nor depend on a sound server the user or
another test run may have) and points the environment at it (``PULSE_SERVER``), so ``pactl``, ``paplay``,
``parec`` and PortAudio's ALSA ``pulse`` device in this process and its children all use it. It needs no
sound card and works as root (CI). When the ``pulseaudio`` program is missing but a server answers (e.g.
PipeWire's), that server is used; with neither, the tests are skipped.

Null sinks are created with ``norewinds=1``: a sink that rewinds (rewrites audio it already rendered when a
new stream starts) garbles what its ``.monitor`` source recorded, and the tests compare recordings sample by
sample.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

START_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class NullSink:
    """A null sink: an output whose ``monitor`` source records what is played into it."""

    name: str
    module: int  # pactl module index (unload it to make the device disappear)
    rate: int
    channels: int

    @property
    def monitor(self) -> str:
        return f"{self.name}.monitor"


class PulseServer:
    """A PulseAudio server the tests can create devices on."""

    def __init__(self, process: subprocess.Popen | None, folder: Path | None):
        self.process = process
        self.folder = folder

    def pactl(self, *args: str) -> str:
        result = subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=10, check=False,
                                env={**os.environ, "LC_ALL": "C"})
        if result.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def add_null_sink(self, name: str, rate: int, channels: int = 1, description: str | None = None) -> NullSink:
        """Create a float32 null sink ``name`` (its monitor is ``name.monitor``)."""
        module = self.pactl("load-module", "module-null-sink", f"sink_name={name}", f"rate={rate}",
                            "format=float32le", f"channels={channels}", "norewinds=1",
                            f"sink_properties=device.description={description or name}")
        return NullSink(name, int(module.strip()), rate, channels)

    def remove(self, sink: NullSink) -> None:
        self.pactl("unload-module", str(sink.module))

    def sink_names(self) -> set[str]:
        return {line.split("\t")[1] for line in self.pactl("list", "short", "sinks").splitlines() if "\t" in line}

    def record(self, source: str, path: Path, rate: int, channels: int = 1) -> subprocess.Popen:
        """Start recording ``source`` as raw float32 to ``path`` (stop with :func:`stop_recording`)."""
        return subprocess.Popen(["parec", "-d", source, "--format=float32le", f"--rate={rate}",
                                 f"--channels={channels}", "--raw", str(path)])

    def play(self, sink: str, path: Path) -> subprocess.Popen:
        """Start playing an audio file into ``sink``."""
        return subprocess.Popen(["paplay", "-d", sink, str(path)])

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def stop_recording(process: subprocess.Popen, path: Path, channels: int = 1) -> np.ndarray:
    """Stop a :meth:`PulseServer.record` process; its recording, (samples, channels) float32."""
    process.terminate()
    process.wait(10)
    data = np.fromfile(path, dtype=np.float32)
    return data[: len(data) // channels * channels].reshape(-1, channels)


def _answers() -> bool:
    if shutil.which("pactl") is None:
        return False
    try:
        return subprocess.run(["pactl", "info"], capture_output=True, timeout=5, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _start_private_server() -> PulseServer:
    folder = Path(tempfile.mkdtemp(prefix="hybridsep-pulse-"))
    socket = folder / "native"
    environment = {**os.environ, "PULSE_RUNTIME_PATH": str(folder), "PULSE_STATE_PATH": str(folder / "state")}
    environment.pop("PULSE_SERVER", None)
    process = subprocess.Popen(
        ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n", "--use-pid-file=no", "--disallow-exit",
         "--log-target=stderr", "--log-level=error",
         f"--load=module-native-protocol-unix socket={socket} auth-anonymous=1"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    os.environ["PULSE_SERVER"] = f"unix:{socket}"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _answers():
            return PulseServer(process, folder)
        time.sleep(0.1)
    error = process.stderr.read() if process.poll() is not None else "it did not answer in time"
    process.kill()
    os.environ.pop("PULSE_SERVER", None)
    shutil.rmtree(folder, ignore_errors=True)
    raise RuntimeError(f"could not start a PulseAudio server: {error}")


_server: PulseServer | None = None


def pulse_server() -> PulseServer:
    """The test session's server (started on first use, stopped at exit); skips when there can be none."""
    global _server
    if _server is None:
        if shutil.which("pulseaudio") is not None and shutil.which("pactl") is not None:
            _server = _start_private_server()
            atexit.register(_server.close)
        elif _answers():
            _server = PulseServer(None, None)
        else:
            reason = ("PulseAudio is not installed (apt-get install pulseaudio pulseaudio-utils "
                      "libasound2-plugins libportaudio2): no audio devices to test on")
            if os.environ.get("CI"):  # `make test` installs it: missing in CI is a failure, not a skip
                pytest.fail(reason)
            pytest.skip(reason)
    return _server

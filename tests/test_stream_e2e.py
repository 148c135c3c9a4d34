"""`hybridsep stream` end to end on real audio devices, and its control protocol.

Devices are null sinks of a private PulseAudio server (tests/pulse.py): a mixture is played into sink A,
`hybridsep stream` runs as a subprocess from ``A.monitor`` to sink B, and ``B.monitor`` is recorded. The
model is a `small` HybridSep with random weights, exported to a bundle with a 2 s window at 16 kHz so that
a model call takes well under the hop on a busy 2-core machine.

What the stream played must be the offline separation (``separate_offline``, same hop and lookahead) of
what it captured: the stream records the input its engine got (``--record-input``), which holds the
mixture at an offset the test cannot choose; the windows are placed from the stream's first sample, so the
reference is the offline separation of that recording. The stream must count no over- or underflow.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from export.bundle import synthetic_audio
from hybridsep_rt.control import HELP, Controller, ControlServer
from hybridsep_rt.engine import EngineConfig, Query, StreamingEngine
from hybridsep_rt.overlap import separate_offline
from hybridsep_rt.separator import OnnxSeparator
from hybridsep_rt.stream import AudioHost, RateAdapter, Recorder
from tests.pulse import pulse_server, stop_recording

RATE = 16000
WINDOW_SECONDS = 2.0
HOP_SECONDS = 0.5
LOOKAHEAD_SECONDS = 0.5
MIXTURE_SECONDS = 8.0
QUERY = "a dog barking"
MIN_OUTPUT_SNR_DB = 20.0  # the played output against the offline separation (the task's requirement)
MIN_EXACT_SNR_DB = 60.0  # digital paths (float32 sinks, the stream's own recordings) are near bit-exact
START_TIMEOUT_SECONDS = 90.0  # python, onnxruntime and the bundle on a busy machine
STREAM_ARGS = ["--threads", "1", "--device", "cpu", "--channels", "1", "--block", "512", "--latency", "0.5",
               "--status-interval", "0.5"]

@pytest.fixture(scope="module")
def server():
    return pulse_server()


@pytest.fixture(scope="module")
def bundle(small_bundle):
    return small_bundle(window_seconds=WINDOW_SECONDS, sample_rate=RATE)


def unique(name: str) -> str:
    return f"hs{os.getpid()}_{name}"


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    error = np.sum((reference - estimate) ** 2)
    return float(10 * np.log10(np.sum(reference**2) / max(error, 1e-30)))


def find_lag(signal: np.ndarray, template: np.ndarray) -> int:
    """Where ``template`` starts in ``signal`` (the cross-correlation peak)."""
    size = 1 << int(np.ceil(np.log2(len(signal) + len(template))))
    spectrum = np.fft.rfft(signal, size) * np.conj(np.fft.rfft(template, size))
    return int(np.argmax(np.fft.irfft(spectrum, size)[: len(signal) - len(template) + 1]))


class StreamProcess:
    """`hybridsep stream` as a subprocess; its stderr lines are collected as they come."""

    def __init__(self, bundle: Path, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hybridsep_rt.cli", "stream", "--bundle", str(bundle), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
        self.lines: list[str] = []
        self._new = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first stderr line (seen so far or coming) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                match = re.search(pattern, line)
                if match:
                    return match
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0 or (self.process.poll() is not None and self._new.empty()):
                raise AssertionError(f"no line matching {pattern!r}; stderr:\n" + "\n".join(self.lines))
            try:
                self._new.get(timeout=min(left, 0.5))
            except queue.Empty:
                pass

    def command(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = 30.0) -> int:
        """The exit status; a process still running after ``timeout`` gets SIGABRT, so that its threads'
        SIGINT masks and stacks (faulthandler) are in the failure message."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            masks = signal_masks(self.process.pid)
            self.process.send_signal(signal.SIGABRT)
            self.process.wait(10)
            time.sleep(0.5)  # the reader thread takes the last lines
            raise AssertionError(f"the stream did not exit within {timeout} s; signal masks (SIGINT blocked, "
                                 f"ignored, caught per thread): {masks}; stderr:\n{self.stderr()}") from None
        finally:
            if self.process.poll() is None:
                self.process.kill()

    def stderr(self) -> str:
        return "\n".join(self.lines)


def signal_masks(pid: int) -> list[str]:
    """Per thread of ``pid``: its name and whether SIGINT is blocked, ignored and caught (/proc)."""
    masks = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:  # a thread (or the process) may end while it is read
            text = (task / "status").read_text()
        except OSError:
            continue
        status = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        bits = ["SigBlk", "SigIgn", "SigCgt"]
        masks.append(status["Name"].strip() + " " + "".join("1" if int(status[b], 16) & 2 else "0" for b in bits))
    return masks


def streaming_latency(stream: StreamProcess) -> float:
    return float(stream.wait_for(r"^streaming .* latency ([0-9.]+) s", START_TIMEOUT_SECONDS).group(1))


# ---------------------------------------------------------------------------------------------- end to end


def test_stream_plays_the_offline_separation_of_what_it_captured(server, bundle, tmp_path):
    mixture = synthetic_audio(int(MIXTURE_SECONDS * RATE), RATE, seed=3)
    mixture_path = tmp_path / "mixture.wav"
    sf.write(mixture_path, mixture, RATE, subtype="FLOAT")
    source, sink = server.add_null_sink(unique("a"), RATE), server.add_null_sink(unique("b"), RATE)
    stats_path = tmp_path / "stats.json"
    try:
        stream = StreamProcess(
            bundle, "--input", f"pulse:{source.monitor}", "--output", f"pulse:{sink.name}", "-q", QUERY,
            "--hop", str(HOP_SECONDS), "--lookahead", str(LOOKAHEAD_SECONDS), *STREAM_ARGS,
            "--record-input", str(tmp_path / "input.wav"), "--record", str(tmp_path / "output.wav"),
            "--stats-json", str(stats_path))
        latency = streaming_latency(stream)
        recording = server.record(sink.monitor, tmp_path / "played.raw", RATE)
        time.sleep(0.5)
        assert server.play(source.name, mixture_path).wait(MIXTURE_SECONDS + 30) == 0
        time.sleep(latency + 2.0)
        played = stop_recording(recording, tmp_path / "played.raw")[:, 0]
        stream.command("quit")
        assert stream.finish() == 0, stream.stderr()
    finally:
        server.remove(source)
        server.remove(sink)

    stats = json.loads(stats_path.read_text())
    print(f"\nlatency {stats['latency_seconds']:.2f} s (devices {stats['device_latency_seconds']:.3f} s), "
          f"compute {stats['mean_compute_seconds'] * 1000:.0f} ms per window, {stats['windows']} windows")
    for counter in ("device_xruns", "input_overflows", "output_underflows", "late_frames", "degradations",
                    "bridge_underflow_frames", "bridge_dropped_frames", "record_dropped_frames", "errors"):
        assert stats[counter] == 0, (counter, stats)
    assert stats["query"] == QUERY and stats["samplerate"] == RATE

    captured, rate = sf.read(tmp_path / "input.wav", dtype="float32")
    assert rate == RATE
    start = find_lag(captured, mixture)
    assert snr_db(mixture, captured[start : start + len(mixture)]) >= MIN_EXACT_SNR_DB

    separator = OnnxSeparator(bundle, device="cpu", threads=1)
    reference = separate_offline(captured[None, :], separator, separator.prepare(Query(text=QUERY)),
                                 hop_samples=int(HOP_SECONDS * RATE),
                                 lookahead_samples=int(LOOKAHEAD_SECONDS * RATE))[0]
    engine_latency = round((stats["latency_seconds"] - stats["device_latency_seconds"]) * RATE)
    output, _ = sf.read(tmp_path / "output.wav", dtype="float32")
    assert snr_db(reference[: len(output) - engine_latency], output[engine_latency:]) >= MIN_EXACT_SNR_DB

    # What reached sink B: the separation over the span of the mixture, found by correlation.
    expected = reference[start : start + len(mixture)]
    assert np.sqrt(np.mean(expected**2)) > 1e-3  # the random model does not output silence
    offset = find_lag(played, expected)
    snr = snr_db(expected, played[offset : offset + len(expected)])
    print(f"played output against the offline separation: SNR {snr:.1f} dB")
    assert snr >= MIN_OUTPUT_SNR_DB


def test_query_changes_through_the_control_socket(server, bundle, tmp_path):
    source, sink = server.add_null_sink(unique("c"), RATE), server.add_null_sink(unique("d"), RATE)
    try:
        stream = StreamProcess(
            bundle, "--input", f"pulse:{source.monitor}", "--output", f"pulse:{sink.name}", "-q", QUERY,
            "--hop", str(HOP_SECONDS), "--lookahead", "0", *STREAM_ARGS, "--control-port", "0")
        port = int(stream.wait_for(r"^control: listening on 127\.0\.0\.1:(\d+)$", START_TIMEOUT_SECONDS).group(1))
        streaming_latency(stream)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            replies = connection.makefile("r", encoding="utf-8")

            def send(line: str) -> str:
                connection.sendall(line.encode() + b"\n")
                return replies.readline().rstrip("\n")

            before = json.loads(send("stats"))
            assert before["query"] == QUERY and before["mode"] == "extract"
            assert send("q rain on a tin roof") == "ok query 'rain on a tin roof'"
            assert send("mode remove") == "ok mode remove"
            assert send("wet 0.5") == "ok wet 0.5"
            assert send("bypass on") == "ok bypass on"
            assert send("wet 2").startswith("error: wet must be within [0, 1]")
            assert send("shout").startswith("error: unknown command 'shout'")
            time.sleep(3 * HOP_SECONDS)
            after = json.loads(send("stats"))
            assert (after["query"], after["mode"], after["wet"], after["bypass"]) == (
                "rain on a tin roof", "remove", 0.5, True)
            assert after["windows"] > before["windows"] and after["errors"] == 0
            stream.wait_for(r"query 'rain on a tin roof' \(remove\).*\| bypass$", 10)
            assert send("quit") == "ok quit"
        assert stream.finish() == 0, stream.stderr()
    finally:
        server.remove(source)
        server.remove(sink)


def test_lost_output_device_is_reported_and_reconnected(server, bundle, tmp_path):
    noise = (0.2 * np.random.default_rng(0).standard_normal(int(60 * RATE))).astype(np.float32)
    noise_path = tmp_path / "noise.wav"
    sf.write(noise_path, noise, RATE, subtype="FLOAT")
    source, sink = server.add_null_sink(unique("e"), RATE), server.add_null_sink(unique("f"), RATE)
    player = server.play(source.name, noise_path)
    stats_path = tmp_path / "stats.json"
    try:
        stream = StreamProcess(
            bundle, "--input", f"pulse:{source.monitor}", "--output", f"pulse:{sink.name}", "-q", QUERY,
            "--hop", "0.25", "--lookahead", "0", "--budget", "0.5", "--wet", "0", *STREAM_ARGS, "--reconnect",
            "--stats-json", str(stats_path))
        latency = streaming_latency(stream)
        server.remove(sink)
        stream.wait_for(rf"output device pulse:{sink.name} left the sound server.*waiting for", 10)
        assert stream.process.poll() is None  # --reconnect: it waits
        time.sleep(1.0)
        sink = server.add_null_sink(sink.name, RATE)
        stream.wait_for(rf"^reconnected: streaming pulse:{source.monitor} -> pulse:{sink.name}", 15)
        recording = server.record(sink.monitor, tmp_path / "after.raw", RATE)
        time.sleep(latency + 1.5)
        after = stop_recording(recording, tmp_path / "after.raw")[:, 0]
        stream.process.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        assert stream.finish() == 0, stream.stderr()
        assert "stopping (Ctrl-C)" in stream.stderr()
    finally:
        player.kill()
        server.remove(source)
        if sink.name in server.sink_names():
            server.remove(sink)
    assert np.sqrt(np.mean(after[-RATE:] ** 2)) > 0.1  # the dry noise (wet 0) reaches the new sink
    stats = json.loads(stats_path.read_text())
    assert (stats["devices_lost"], stats["reconnects"]) == (1, 1)


def test_lost_input_device_without_reconnect_stops_with_a_clear_message(server, bundle, tmp_path):
    source, sink = server.add_null_sink(unique("g"), RATE), server.add_null_sink(unique("h"), RATE)
    recording = tmp_path / "kept.wav"
    try:
        stream = StreamProcess(
            bundle, "--input", f"pulse:{source.monitor}", "--output", f"pulse:{sink.name}", "-q", QUERY,
            "--hop", "0.25", "--lookahead", "0", *STREAM_ARGS, "--record", str(recording))
        streaming_latency(stream)
        stream.wait_for(r"\| windows [1-9]", 15)  # audio is flowing through the engine
        server.remove(source)
        assert stream.finish(15) == 1, stream.stderr()
    finally:
        server.remove(sink)
        if source.name in server.sink_names():
            server.remove(source)
    assert re.search(rf"error: input device pulse:{source.monitor} left the sound server.*--reconnect",
                     stream.stderr())
    assert sf.info(recording).frames > 0  # what was recorded is kept, the file finalised


# ---------------------------------------------------------------------------------------------- control


class Identity:
    sample_rate = RATE
    window_samples = RATE

    def prepare(self, query):
        return query.text

    def separate(self, window, condition):
        return window.copy()


def test_controller_commands_and_errors():
    engine = StreamingEngine(Identity(), EngineConfig(hop_seconds=0.5, lookahead_seconds=0.5), threaded=False)
    stopped = []
    controller = Controller(engine, lambda: {"query": engine.query and engine.query.text}, lambda: stopped.append(1))
    assert controller.execute("mode remove").startswith("error: there is no query yet")
    assert controller.execute("q  a dog barking ") == "ok query 'a dog barking'"
    assert engine.query.text == "a dog barking" and engine.query.mode == "extract"
    assert controller.execute("mode remove") == "ok mode remove"
    assert controller.execute("query birds") == "ok query 'birds'" and engine.query.mode == "remove"
    assert controller.execute("mode sideways").startswith("error: mode must be one of")
    assert controller.execute("wet 0.25") == "ok wet 0.25" and engine._wet == 0.25
    for bad in ("wet", "wet nan", "wet -1", "bypass maybe", "q", ""):
        assert controller.execute(bad).startswith("error: "), bad
    assert controller.execute("bypass on") == "ok bypass on" and engine._bypass
    assert json.loads(controller.execute("stats")) == {"query": "birds"}
    assert controller.execute("help") == "ok " + HELP
    assert controller.execute("quit") == "ok quit" and stopped == [1]


def test_control_server_listens_on_localhost_only():
    engine = StreamingEngine(Identity(), EngineConfig(), threaded=False)
    server = ControlServer(Controller(engine, dict, lambda: None), port=0)
    server.start()
    try:
        assert server._server.server_address[0] == "127.0.0.1" and server.port > 0
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
            replies = connection.makefile("r", encoding="utf-8")
            connection.sendall(b"q piano\nstats\n")
            assert replies.readline() == "ok query 'piano'\n"
            assert replies.readline() == "{}\n"
        assert engine.query.text == "piano"
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------- rates, recording


class CopyEngine:
    """Stands in for the engine: output = input, no delay."""

    config = EngineConfig()

    def process_block(self, inp, out):
        out[:] = inp


def lowpass_noise(samples: int, rate: int, cutoff: float, seed: int) -> np.ndarray:
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(samples))
    spectrum[np.fft.rfftfreq(samples, 1 / rate) > cutoff] = 0
    signal = np.fft.irfft(spectrum, samples)
    return (0.3 * signal / signal.std()).astype(np.float32)


@pytest.mark.parametrize("device_rate, model_rate, block", [(48000, 16000, 480), (44100, 16000, 1024),
                                                            (22050, 44100, 256)])
def test_rate_adapter_is_a_delay_of_its_reported_latency(device_rate, model_rate, block):
    cutoff = 0.4 * min(device_rate, model_rate)  # inside both resamplers' passbands
    signal = np.stack([lowpass_noise(3 * device_rate, device_rate, cutoff, seed) for seed in (1, 2)], axis=1)
    adapter = RateAdapter(CopyEngine(), device_rate, model_rate, 2, block)
    output = np.zeros_like(signal)
    for start in range(0, len(signal) - block + 1, block):
        adapter.process_block(signal[start : start + block], output[start : start + block])
    delay = round(adapter.latency_seconds * device_rate)
    assert adapter.underflow_frames == 0
    assert 0 < delay < 0.2 * device_rate
    middle = slice(device_rate // 2, 2 * device_rate)
    for channel in range(2):
        expected = signal[middle, channel]
        assert snr_db(expected, output[middle.start + delay : middle.stop + delay, channel]) >= MIN_EXACT_SNR_DB


def test_recorder_writes_what_the_callback_pushed_and_finalises_the_file(tmp_path):
    path = tmp_path / "take.wav"
    recorder = Recorder(path, RATE, 2)
    recorder.start()
    blocks = [np.random.default_rng(i).uniform(-1, 1, (512, 2)).astype(np.float32) for i in range(40)]
    pusher = threading.Thread(target=lambda: [recorder.push(b) or time.sleep(0.002) for b in blocks])
    pusher.start()
    pusher.join()
    assert not path.exists()  # written under a temporary name until closed
    recorder.close()
    written, rate = sf.read(path, dtype="float32")
    assert rate == RATE and recorder.dropped_frames == 0
    np.testing.assert_array_equal(written, np.concatenate(blocks))
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert [p.name for p in tmp_path.iterdir()] == ["take.wav"]
    with pytest.raises(ValueError, match="unknown audio file extension"):
        Recorder(tmp_path / "take.xyz", RATE, 2)


class StuckStream:
    """A PortAudio stream stand-in whose abort blocks until released, like a driver stuck on a lost device."""

    def __init__(self, release: threading.Event):
        self.release, self.closed = release, False

    def abort(self, ignore_errors=True):
        self.release.wait()

    def close(self, ignore_errors=True):
        self.closed = True


def test_closing_a_stuck_stream_gives_up_after_the_timeout():
    engine = types.SimpleNamespace(timing=types.SimpleNamespace(sample_rate=RATE))
    host = AudioHost(engine, None, None, 1, 512, 0.1, [])
    release = threading.Event()
    host.streams = [StuckStream(release), StuckStream(release)]
    stuck = list(host.streams)
    started = time.monotonic()
    assert host.close(timeout=0.3) is False
    assert 0.3 <= time.monotonic() - started < 2.0
    assert host.streams == [] and host.problem() == "the stream is closed"
    release.set()  # the driver comes back: the streams left behind get closed
    deadline = time.monotonic() + 5
    while not all(s.closed for s in stuck) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(s.closed for s in stuck)
    host.streams = [StuckStream(release)]
    assert host.close(timeout=0.3) is True and host.streams == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

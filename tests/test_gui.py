"""The desktop app (gui/): offscreen Qt windows on real audio devices.

Devices are null sinks of a private PulseAudio server (tests/pulse.py): a tone is played into sink "mic", the
window streams from ``mic.monitor`` to sink "out". The model is a `small` HybridSep with random weights
exported to a bundle with a 2 s window at 16 kHz (a model call takes well under the hop on a busy 2-core
machine; the ``small_bundle`` fixture of conftest.py exports it once per test run). One streaming window serves
the live tests, in order; the settings and error tests build their own windows.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

from export.bundle import synthetic_audio  # noqa: E402
from tests.pulse import pulse_server  # noqa: E402

pytest.importorskip("PyQt6.QtWidgets", reason="the GUI needs PyQt6 (pip install 'hybridsep-rt[gui]')")
pytest.importorskip("pyqtgraph")

from PyQt6.QtCore import Qt  # noqa: E402

from gui.display import METER_FLOOR_DB, SpectrogramColumns, block_levels  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402
from gui.settings import HISTORY_SIZE, GuiSettings, load_settings, open_store, save_settings  # noqa: E402

RATE = 16000
WINDOW_SECONDS = 2.0
HOP_SECONDS = 0.5
LOOKAHEAD_SECONDS = 0.5
TONE_SECONDS = 120.0
START_TIMEOUT_MS = 60_000  # python threads, onnxruntime sessions and PulseAudio on a busy machine
TIMEOUT_MS = 20_000

# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bundle(small_bundle):
    return small_bundle(window_seconds=WINDOW_SECONDS, sample_rate=RATE)


@pytest.fixture(scope="module")
def server():
    return pulse_server()


@pytest.fixture(scope="module")
def tone(tmp_path_factory):
    """A 1 kHz tone at -12 dBFS with a little noise, long enough to play through every live test."""
    t = np.arange(int(TONE_SECONDS * RATE)) / RATE
    noise = 0.01 * np.random.default_rng(0).standard_normal(t.size)
    path = tmp_path_factory.mktemp("tone") / "tone.wav"
    sf.write(path, (0.25 * np.sin(2 * np.pi * 1000 * t) + noise).astype(np.float32), RATE, subtype="FLOAT")
    return path


class Rig:
    """The null sinks of the live tests and the tone playing into the input."""

    def __init__(self, server, tone):
        self.server = server
        self.tone = tone
        self.mic_name = f"gui{os.getpid()}_mic"
        self.mic = server.add_null_sink(self.mic_name, RATE, description="TestMicrophone")
        self.out = server.add_null_sink(f"gui{os.getpid()}_out", RATE, description="TestSpeakers")
        self.player = server.play(self.mic.name, tone)

    def unplug_input(self) -> None:
        self.player.kill()
        self.player.wait()
        self.server.remove(self.mic)

    def plug_input_back(self) -> None:
        self.mic = self.server.add_null_sink(self.mic_name, RATE, description="TestMicrophone")
        self.player = self.server.play(self.mic.name, self.tone)

    def close(self) -> None:
        self.player.kill()
        self.player.wait()
        for sink in (self.mic, self.out):
            if sink.name in self.server.sink_names():
                self.server.remove(sink)


@pytest.fixture(scope="module")
def rig(server, tone):
    rig = Rig(server, tone)
    yield rig
    rig.close()


def write_settings(path, rig: Rig | None = None, **values) -> None:
    settings = GuiSettings(channels=1, hop_seconds=HOP_SECONDS, lookahead_seconds=LOOKAHEAD_SECONDS,
                           compute_device="cpu", **values)
    if rig is not None:
        settings.input_device = f"pulse:{rig.mic.monitor}"
        settings.output_device = f"pulse:{rig.out.name}"
    save_settings(open_store(path), settings)


@pytest.fixture(scope="module")
def live(qapp, rig, bundle, tmp_path_factory):
    """A window streaming from the test microphone to the test speakers."""
    settings_path = tmp_path_factory.mktemp("settings") / "gui.ini"
    write_settings(settings_path, rig)
    environment = {name: os.environ.get(name) for name in ("PULSE_SOURCE", "PULSE_SINK")}
    window = MainWindow(settings_path=settings_path, bundle=bundle)
    window.show()
    yield window
    window.shutdown()
    window.deleteLater()
    for name, value in environment.items():  # the stream pointed them at this module's devices
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def wait_streaming(qtbot, window, timeout=START_TIMEOUT_MS) -> None:
    qtbot.waitUntil(lambda: window.live.state == "streaming" and window.live.tap.blocks > 0, timeout=timeout)


# ---------------------------------------------------------------------------------------------- display maths


def test_levels_of_a_full_scale_sine_and_of_silence():
    t = np.arange(4800) / 48000
    sine = np.sin(2 * np.pi * 1000 * t).astype(np.float32)[None, :]
    peak, rms = block_levels(np.concatenate([sine, np.zeros_like(sine)]))
    assert peak[0] == pytest.approx(0.0, abs=0.01) and rms[0] == pytest.approx(-3.01, abs=0.05)
    assert peak[1] == rms[1] == METER_FLOOR_DB


def test_spectrogram_columns_put_a_tone_in_its_band():
    columns = SpectrogramColumns(RATE, fft_size=1024, hop=512, bands=100)
    tone = 0.5 * np.sin(2 * np.pi * 1500 * np.arange(RATE) / RATE)
    out = np.concatenate([columns.feed(tone[i : i + 700]) for i in range(0, RATE, 700)])
    assert out.shape == (RATE // 512, 100)
    loudest = np.argmax(out[-1])
    assert abs(loudest - columns.band_of(1500)) <= 1.5
    assert out[-1, loudest] == pytest.approx(20 * np.log10(0.5), abs=1.5)  # a sine reads its amplitude


def test_history_keeps_recent_queries_once():
    settings = GuiSettings()
    for query in ["a", "b", "a", "  ", *[f"q{i}" for i in range(HISTORY_SIZE)]]:
        settings.remember(query)
    assert len(settings.history) == HISTORY_SIZE
    assert settings.history[0] == f"q{HISTORY_SIZE - 1}" and "  " not in settings.history
    assert settings.history.count("a") <= 1


# ---------------------------------------------------------------------------------------------- live


def test_window_streams_and_shows_the_devices_and_the_model(qtbot, live, rig):
    wait_streaming(qtbot, live)
    inputs = [live.devices.input.itemText(i) for i in range(live.devices.input.count())]
    assert any("Monitor of TestMicrophone" in text and "[loopback]" in text for text in inputs)
    assert live.devices.input.currentData() == f"pulse:{rig.mic.monitor}"
    assert live.devices.output.currentData() == f"pulse:{rig.out.name}"
    assert live.devices.rate.text() == f"{RATE} Hz"
    assert live.model.provider.text() == "on CPU (fp32)"
    assert live.live.engine.config.channels == 1
    assert not live.banner.isVisible()


def test_typing_a_query_changes_what_the_engine_separates(qtbot, live):
    wait_streaming(qtbot, live)
    separator = live.separator
    prepared = []
    original_prepare = separator.prepare

    def spy(query):
        prepared.append(query.text)
        return original_prepare(query)

    separator.prepare = spy
    try:
        line = live.query.query.lineEdit()
        line.clear()
        qtbot.keyClicks(line, "a dog barking")  # no Enter: applied after a pause in typing
        qtbot.waitUntil(lambda: live.live.engine.query is not None
                        and live.live.engine.query.text == "a dog barking", timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: "a dog barking" in prepared, timeout=TIMEOUT_MS)
        windows = live.live.stats().windows
        qtbot.waitUntil(lambda: live.live.stats().windows > windows + 1, timeout=TIMEOUT_MS)

        line.selectAll()
        qtbot.keyClicks(line, "rain on a roof")
        qtbot.keyClick(line, Qt.Key.Key_Return)  # Enter applies at once
        assert live.live.engine.query.text == "rain on a roof"
        qtbot.waitUntil(lambda: "rain on a roof" in prepared, timeout=TIMEOUT_MS)
    finally:
        del separator.prepare
    qtbot.mouseClick(live.query.remove, Qt.MouseButton.LeftButton)
    assert live.live.engine.query.mode == "remove" and live.live.engine.query.text == "rain on a roof"
    assert live.query.active.text() == "remove: rain on a roof"
    history = [live.query.query.itemText(i) for i in range(live.query.query.count())]
    assert history[:2] == ["rain on a roof", "a dog barking"]
    assert live.live.stats().errors == 0


def test_dropping_a_clip_queries_by_example(qtbot, live, tmp_path):
    from PyQt6.QtCore import QMimeData, QPointF, QUrl
    from PyQt6.QtGui import QDropEvent

    wait_streaming(qtbot, live)
    clip_path = tmp_path / "bark.flac"
    sf.write(clip_path, synthetic_audio(int(0.5 * 44100), 44100, seed=7), 44100)  # converted to the model's rate
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(clip_path))])
    drop = QDropEvent(QPointF(400, 300), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    live.dropEvent(drop)
    query = live.live.engine.query
    assert query.example is not None and query.text is None and query.mode == "remove"
    assert query.example.shape == (1, RATE // 2)
    assert live.query.example.text() == "bark.flac"
    assert live.query.active.text() == "remove: example bark"
    windows = live.live.stats().windows
    qtbot.waitUntil(lambda: live.live.stats().windows > windows + 1, timeout=TIMEOUT_MS)
    assert live.live.stats().errors == 0

    line = live.query.query.lineEdit()  # a typed query replaces the example
    line.selectAll()
    qtbot.keyClicks(line, "rain on a roof")
    qtbot.keyClick(line, Qt.Key.Key_Return)
    assert live.example is None and live.live.engine.query.text == "rain on a roof"
    assert live.live.engine.query.example is None


def test_meters_spectrograms_and_counters_receive_data(qtbot, live):
    wait_streaming(qtbot, live)
    scope = live.scope
    updates, columns = scope.input_meter.updates, scope.output_spectrogram.columns_received
    qtbot.waitUntil(lambda: scope.input_meter.updates > updates + 10, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: scope.output_spectrogram.columns_received > columns + 20, timeout=TIMEOUT_MS)
    assert np.max(scope.input_meter.peak) > -20.0  # the -12 dBFS tone
    tone_row = int(scope.input_spectrogram.analyser.band_of(1000))
    newest = scope.input_spectrogram.data[:, -1]
    assert np.argmax(newest) in range(tone_row - 2, tone_row + 3)

    # Bypass: the output becomes the (delayed) input, so the output meter shows the tone.
    live.mix.bypass.setChecked(True)
    qtbot.waitUntil(lambda: np.max(live.scope.output_meter.peak) > -20.0, timeout=TIMEOUT_MS)
    live.mix.bypass.setChecked(False)

    qtbot.waitUntil(lambda: live.engine_panel.values["windows"].text() not in ("–", "0"), timeout=TIMEOUT_MS)
    assert live.engine_panel.values["compute"].text().endswith(")")  # "N ms (mean M)"
    assert live.latency.latency.text().endswith(" s")
    assert "hop 0.50 + lookahead 0.50" in live.latency.breakdown.text()


def test_recording_the_output_writes_a_file(qtbot, live, tmp_path):
    wait_streaming(qtbot, live)
    path = tmp_path / "take.wav"
    live.start_recording(path)
    assert live.mix.record.isChecked()
    qtbot.waitUntil(lambda: live.live.recorder.frames_written > RATE, timeout=TIMEOUT_MS)
    assert live.stop_recording() == path
    audio, rate = sf.read(path, dtype="float32")
    assert rate == RATE and audio.ndim == 1 and len(audio) >= RATE
    assert not live.mix.record.isChecked()


def test_changing_hop_and_lookahead_restarts_with_the_new_latency(qtbot, live):
    wait_streaming(qtbot, live)
    live.latency.hop.setValue(1.0)
    live.latency.lookahead.setValue(0.0)
    qtbot.waitUntil(lambda: live.live.timing is not None and live.live.timing.hop == RATE
                    and live.live.timing.lookahead == 0, timeout=TIMEOUT_MS)
    wait_streaming(qtbot, live)
    qtbot.waitUntil(lambda: "hop 1.00 + lookahead 0.00" in live.latency.breakdown.text(), timeout=TIMEOUT_MS)
    assert live.live.engine.query.text == "rain on a roof"  # the query survives the restart
    live.latency.hop.setValue(HOP_SECONDS)
    live.latency.lookahead.setValue(LOOKAHEAD_SECONDS)
    qtbot.waitUntil(lambda: live.live.timing.hop == int(HOP_SECONDS * RATE), timeout=TIMEOUT_MS)
    wait_streaming(qtbot, live)


def test_losing_the_input_device_shows_it_and_the_stream_resumes(qtbot, live, rig):
    wait_streaming(qtbot, live)
    rig.unplug_input()
    qtbot.waitUntil(lambda: live.live.state == "waiting" and live.banner.isVisible(), timeout=TIMEOUT_MS)
    assert rig.mic.monitor in live.banner.text()
    assert "waiting" in live.devices.state.text()
    qtbot.waitUntil(lambda: "(not available)" in live.devices.input.currentText(), timeout=TIMEOUT_MS)

    rig.plug_input_back()
    qtbot.waitUntil(lambda: live.live.state == "streaming", timeout=TIMEOUT_MS)
    blocks = live.live.tap.blocks
    qtbot.waitUntil(lambda: live.live.tap.blocks > blocks + 10, timeout=TIMEOUT_MS)
    assert not live.banner.isVisible()
    assert live.live.reconnects >= 1
    assert live.devices.input.currentData() == f"pulse:{rig.mic.monitor}"


def test_refresh_rescans_the_devices_and_streams_again(qtbot, live, rig):
    wait_streaming(qtbot, live)
    old_engine = live.live.engine
    qtbot.mouseClick(live.devices.refresh, Qt.MouseButton.LeftButton)
    wait_streaming(qtbot, live)
    assert live.live.engine is not old_engine  # PortAudio was re-initialised and the stream reopened
    assert live.devices.input.currentData() == f"pulse:{rig.mic.monitor}"


def test_refresh_while_a_stuck_stream_is_still_closing_reopens_and_says_why(monkeypatch):
    import threading
    import time
    from types import SimpleNamespace

    import hybridsep_rt.devices
    from gui.live import LiveController
    from hybridsep_rt.devices import DeviceError
    from hybridsep_rt.stream import AudioHost, streams_closing

    release = threading.Event()

    class StuckStream:  # a driver that does not return from abort (a vanished device)
        def abort(self, ignore_errors=False):
            release.wait(10)

        def close(self, ignore_errors=False):
            pass

    calls = []
    portaudio = SimpleNamespace(_terminate=lambda: calls.append("terminate"),
                                _initialize=lambda: calls.append("initialise"))
    monkeypatch.setattr(hybridsep_rt.devices, "_sounddevice", lambda: portaudio)
    host = SimpleNamespace(streams=[StuckStream()], _closing=False)
    host.close = lambda: AudioHost.close(host, timeout=0.05)
    controller = SimpleNamespace(host=host, _devices=[], restart=lambda: calls.append("restart"))
    with pytest.raises(DeviceError, match="still closing"):
        LiveController.rescan(controller)
    assert calls == ["restart"]  # PortAudio left alone, the stream reopened
    release.set()
    deadline = time.monotonic() + 5
    while streams_closing() and time.monotonic() < deadline:
        time.sleep(0.05)
    LiveController.rescan(controller)  # the driver returned: the rescan goes ahead
    assert calls == ["restart", "terminate", "initialise"]


def test_file_mode_separates_plays_and_exports_stems(qtbot, live, tmp_path):
    rate, seconds = 22050, 3.0  # not the model's rate: the file is converted there and back
    mixture = np.stack([synthetic_audio(int(seconds * rate), rate, seed=5),
                        0.5 * synthetic_audio(int(seconds * rate), rate, seed=6)])
    path = tmp_path / "song.wav"
    sf.write(path, mixture.T, rate, subtype="PCM_16")
    live.query.query.setEditText("a piano")
    live.apply_query()
    live.open_file(path)
    assert live.file.separate.isEnabled() and not live.file.export.isEnabled()
    live.separate_file()
    qtbot.waitUntil(lambda: live.file_result is not None and live.file_job is None, timeout=TIMEOUT_MS)
    assert live.file.progress.value() == live.file.progress.maximum() > 0
    result = live.file_result
    assert result.label == "a piano" and result.target.shape == mixture.shape

    live.listen("target")
    assert live.player.playing
    qtbot.waitUntil(lambda: live.file.result_spectrogram.columns_received > 5, timeout=TIMEOUT_MS)
    live.player.stop()
    assert not live.player.playing

    paths = live.export_stems(tmp_path / "stems")
    assert [p.name for p in paths] == ["a_piano.wav", "without_a_piano.wav"]
    assert np.allclose(result.target + result.residual, result.mixture, atol=1e-6)
    for exported, stem in zip(paths, (result.target, result.residual)):
        audio, exported_rate = sf.read(exported, dtype="float32", always_2d=True)
        assert exported_rate == rate and audio.shape == mixture.T.shape
        assert sf.info(exported).subtype == "PCM_16"  # the source's sample format is kept
        assert np.max(np.abs(audio.T - np.clip(stem, -1, 1))) < 2 / 32768


# ---------------------------------------------------------------------------------------------- settings, errors


def test_settings_persist_across_a_restart(qtbot, qapp, bundle, tmp_path):
    settings_path = tmp_path / "gui.ini"
    write_settings(settings_path)
    first = MainWindow(settings_path=settings_path, bundle=bundle, autostart=False)
    qtbot.addWidget(first)
    line = first.query.query.lineEdit()
    qtbot.keyClicks(line, "a cello")
    qtbot.keyClick(line, Qt.Key.Key_Return)
    line.selectAll()
    qtbot.keyClicks(line, "birdsong")
    qtbot.keyClick(line, Qt.Key.Key_Return)
    first.query.remove.click()
    first.mix.wet.setValue(40)
    first.latency.hop.setValue(0.75)
    first.latency.lookahead.setValue(0.25)
    first.devices.channels.setCurrentIndex(first.devices.channels.findData(2))
    first._channels_chosen()
    first.resize(1250, 760)
    first.close()  # saves the settings

    stored = load_settings(open_store(settings_path))
    assert (stored.query, stored.mode, stored.wet, stored.channels) == ("birdsong", "remove", 0.4, 2)
    second = MainWindow(settings_path=settings_path, autostart=False)
    qtbot.addWidget(second)
    assert second.query.query.currentText() == "birdsong"
    assert [second.query.query.itemText(i) for i in range(2)] == ["birdsong", "a cello"]
    assert second.query.remove.isChecked() and second.mix.wet.value() == 40
    assert (second.latency.hop.value(), second.latency.lookahead.value()) == (0.75, 0.25)
    assert second.devices.channels.currentData() == 2
    assert second.model.bundle.currentData() == str(bundle)
    assert stored.geometry  # the window geometry is kept too (restored within the screen's bounds)
    second.shutdown()


def test_an_invalid_bundle_is_reported_in_the_window(qtbot, qapp, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    settings_path = tmp_path / "gui.ini"
    write_settings(settings_path)
    window = MainWindow(settings_path=settings_path, bundle=broken)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.banner.isVisible() and "bundle" in window.banner.text(), timeout=TIMEOUT_MS)
    assert "not valid JSON" in window.banner.text()
    assert window.separator is None and window.live.tap is None and window.live.state == "stopped"
    window.shutdown()


def test_no_devices_is_reported_in_the_window(qtbot, qapp, tmp_path, monkeypatch):
    from gui.live import LiveController

    monkeypatch.setattr(LiveController, "list_devices", lambda self: ([], []))
    settings_path = tmp_path / "gui.ini"
    write_settings(settings_path)
    window = MainWindow(settings_path=settings_path, autostart=False)
    qtbot.addWidget(window)
    window.show()
    assert window.banner.isVisible() and "No audio input and output devices" in window.banner.text()
    window.shutdown()


def test_the_gui_command_is_listed(capsys):
    from hybridsep_rt.cli import main

    with pytest.raises(SystemExit):
        main(["gui", "--help"])
    assert "--settings" in capsys.readouterr().out
    assert main(["gui", "--size", "big"]) == 2

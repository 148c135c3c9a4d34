"""The main window: connects the panels to the live stream (``gui.live``), file mode and the settings.

The GUI thread only draws and edits settings. Audio runs in the audio callback and the engine's worker thread
(``hybridsep_rt``); bundles load, files separate and devices are watched in worker threads. Timers poll the
engine: the display timer moves tapped audio into the meters and spectrograms, the status timer reads
``engine.stats()`` and lets the live controller reopen a stream whose lost device came back.
"""

from __future__ import annotations

from pathlib import Path

from PyQt6.QtCore import QTimer
from PyQt6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QMainWindow,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from gui import theme
from gui.audio_io import AudioTap
from gui.bundle_loader import BundleLoader, default_bundle, provider_name
from gui.display import block_levels, to_mono
from gui.file_mode import SeparationJob, export_stems
from gui.live import LiveController, device_label
from gui.panels import (
    EXAMPLE_HINT,
    DevicePanel,
    EnginePanel,
    FilePanel,
    LatencyPanel,
    MixPanel,
    ModelPanel,
    QueryPanel,
    ScopePanel,
)
from gui.player import FilePlayer
from gui.settings import GuiSettings, load_settings, open_store, save_settings
from gui.widgets import Banner
from hybridsep_rt.engine import Query

WINDOW_TITLE = "HybridSep-RT — live sound separation"
DEFAULT_SIZE = (1280, 800)
DISPLAY_INTERVAL_MS = 33  # meters and spectrograms, about 30 frames per second
STATUS_INTERVAL_MS = 250  # engine statistics and stream health
QUERY_PAUSE_MS = 700  # a typed query is applied after this pause in typing
TIMING_PAUSE_MS = 500  # hop / lookahead edits are applied after this pause (the stream restarts)
STEM_TITLES = {"target": "the separated target", "residual": "the residual (everything else)",
               "mixture": "the original"}


class MainWindow(QMainWindow):
    """The app window.

    Args:
        settings_path: an ini file for the settings (None: ``$HYBRIDSEP_GUI_SETTINGS`` or the platform store).
        bundle: a model bundle folder to use instead of the remembered one.
        autostart: load the bundle and open the stream at once (tests may drive it step by step).
    """

    def __init__(self, settings_path: str | Path | None = None, bundle: str | Path | None = None,
                 autostart: bool = True):
        super().__init__()
        self.setWindowTitle(WINDOW_TITLE)
        self.setAcceptDrops(True)
        self.store = open_store(settings_path)
        self.settings: GuiSettings = load_settings(self.store)
        if bundle is not None:
            self.settings.bundle = str(bundle)
        elif self.settings.bundle is None and default_bundle() is not None:
            self.settings.bundle = str(default_bundle())

        self.live = LiveController(self)
        self.loader: BundleLoader | None = None
        self.separator = None
        self.example: tuple[str, object] | None = None  # (clip path, clip at the model's rate)
        self._errors_seen = 0  # model errors already reported
        self.file_path: Path | None = None
        self.file_job: SeparationJob | None = None
        self.file_result = None
        self.player = FilePlayer(self)

        self._build()
        self._restore()
        self._connect()

        self.display_timer = QTimer(self, interval=DISPLAY_INTERVAL_MS, timeout=self._update_display)
        self.status_timer = QTimer(self, interval=STATUS_INTERVAL_MS, timeout=self._update_status)
        self.query_timer = QTimer(self, singleShot=True, interval=QUERY_PAUSE_MS, timeout=self.apply_text_query)
        self.timing_timer = QTimer(self, singleShot=True, interval=TIMING_PAUSE_MS, timeout=self._apply_timing)
        self.refresh_devices()
        if autostart:
            self.start()

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.banner = Banner()
        self.devices = DevicePanel()
        self.model = ModelPanel()
        self.query = QueryPanel()
        self.scope = ScopePanel()
        self.mix = MixPanel()
        self.latency = LatencyPanel()
        self.engine_panel = EnginePanel()
        self.file = FilePanel()

        top = QHBoxLayout()
        top.addWidget(self.devices, 1)
        top.addWidget(self.model, 1)
        side = QVBoxLayout()
        side.addWidget(self.mix)
        side.addWidget(self.latency)
        side.addWidget(self.engine_panel)
        side.addStretch(1)
        side_widget = QWidget()
        side_widget.setLayout(side)
        side_widget.setFixedWidth(430)
        live = QWidget()
        live_layout = QHBoxLayout(live)
        live_layout.addWidget(self.scope, 1)
        live_layout.addWidget(side_widget)
        self.tabs = QTabWidget()
        self.tabs.addTab(live, "Live")
        self.tabs.addTab(self.file, "File")

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(10, 8, 10, 4)
        layout.addWidget(self.banner)
        layout.addLayout(top)
        layout.addWidget(self.query)
        layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        self.statusBar().showMessage("Starting…")
        self.resize(*DEFAULT_SIZE)

    def _restore(self) -> None:
        s = self.settings
        if s.geometry:
            self.restoreGeometry(s.geometry)
        self._fill_bundles()
        index = self.model.compute.findData(s.compute_device)
        self.model.compute.setCurrentIndex(max(0, index))
        self.query.query.addItems(s.history)
        self.query.query.setEditText(s.query)
        (self.query.remove if s.mode == "remove" else self.query.extract).setChecked(True)
        self.mix.wet.setValue(round(100 * s.wet))
        self.mix.wet_value.setText(f"{round(100 * s.wet)} % wet")
        self.latency.hop.setValue(s.hop_seconds)
        self.latency.lookahead.setValue(s.lookahead_seconds)
        self.devices.channels.setCurrentIndex(max(0, self.devices.channels.findData(s.channels)))
        self.live.set_channels(s.channels)
        self.live.set_wet(s.wet)
        self.live.set_timing(s.hop_seconds, s.lookahead_seconds)
        self._update_file_buttons()

    def _fill_bundles(self) -> None:
        combo = self.model.bundle
        combo.blockSignals(True)
        combo.clear()
        paths = []
        if default_bundle() is not None:
            paths.append(str(default_bundle()))
        if self.settings.bundle and self.settings.bundle not in paths:
            paths.append(self.settings.bundle)
        for path in paths:
            label = f"{path}  (default)" if default_bundle() is not None and path == str(default_bundle()) else path
            combo.addItem(label, path)
        if not paths:
            combo.addItem("no bundle — choose one with Open…", None)
        index = combo.findData(self.settings.bundle)
        combo.setCurrentIndex(max(0, index))
        combo.blockSignals(False)

    def _connect(self) -> None:
        self.devices.refresh.clicked.connect(self.rescan_devices)
        self.devices.input.activated.connect(self._devices_chosen)
        self.devices.output.activated.connect(self._devices_chosen)
        self.devices.channels.activated.connect(lambda _: self._channels_chosen())
        self.model.bundle.activated.connect(lambda _: self.load_bundle(self.model.bundle.currentData()))
        self.model.browse.clicked.connect(self._browse_bundle)
        self.model.compute.activated.connect(self._compute_chosen)
        line = self.query.query.lineEdit()
        line.returnPressed.connect(self.apply_text_query)
        line.textEdited.connect(lambda _: self.query_timer.start())
        self.query.query.activated.connect(lambda _: self.apply_text_query())
        self.query.apply.clicked.connect(self.apply_text_query)
        self.query.modes.buttonClicked.connect(lambda _: self._mode_chosen())
        self.query.clear_example.clicked.connect(self.clear_example)
        self.mix.wet.valueChanged.connect(self._wet_changed)
        self.mix.bypass.toggled.connect(self.live.set_bypass)
        self.mix.record.clicked.connect(self._record_clicked)
        self.latency.hop.valueChanged.connect(lambda _: self.timing_timer.start())
        self.latency.lookahead.valueChanged.connect(lambda _: self.timing_timer.start())
        self.live.state_changed.connect(self._stream_state)
        self.live.devices_changed.connect(self.refresh_devices)
        self.file.open.clicked.connect(self._browse_file)
        self.file.separate.clicked.connect(self.separate_file)
        self.file.stop.clicked.connect(self._stop_file_job)
        self.file.listen_target.clicked.connect(lambda: self.listen("target"))
        self.file.listen_residual.clicked.connect(lambda: self.listen("residual"))
        self.file.listen_mixture.clicked.connect(lambda: self.listen("mixture"))
        self.file.stop_playback.clicked.connect(self.player.stop)
        self.file.export.clicked.connect(self._export_clicked)
        self.player.finished.connect(self._update_file_buttons)
        self.player.failed.connect(lambda message: self.show_error(message))

    # ------------------------------------------------------------------ start and messages

    def start(self) -> None:
        """Start the timers and load the bundle (the stream opens when it has loaded)."""
        self.display_timer.start()
        self.status_timer.start()
        if self.settings.bundle:
            self.load_bundle(self.settings.bundle)
        else:
            self.show_error("No model bundle: choose one with Model ▸ Open… (export one with `hybridsep export`). "
                            "The live stream starts once a bundle is loaded.", "warning", "bundle")
            self._open_stream()

    def show_error(self, message: str, level: str = "error", source: str = "") -> None:
        """Show a message in the banner (and the status bar); ``source`` names what it is about."""
        self.banner.show_message(message, level, source)
        self.statusBar().showMessage(message.splitlines()[0], 10_000)

    def clear_error(self, source: str | None = None) -> None:
        """Hide the banner if it shows a message from ``source`` (any message when None)."""
        self.banner.clear_message(source)

    # ------------------------------------------------------------------ devices

    def refresh_devices(self) -> None:
        """List the devices again; keeps the chosen ones, and reports when none exist."""
        try:
            inputs, outputs = self.live.list_devices()
        except Exception as e:  # the audio system itself is unavailable (no PortAudio library ...)
            self.show_error(f"Cannot list audio devices: {e}", "error", "devices")
            inputs, outputs = [], []
        changed = self._fill_devices(self.devices.input, inputs, self.settings.input_device or
                                     self.live.default_device_name(inputs))
        changed |= self._fill_devices(self.devices.output, outputs, self.settings.output_device or
                                      self.live.default_device_name(outputs))
        if not inputs or not outputs:
            missing = " and ".join(k for k, v in (("input", inputs), ("output", outputs)) if not v)
            self.show_error(f"No audio {missing} devices found. Connect or enable one (on Linux, start "
                            f"PulseAudio or PipeWire); the list refreshes by itself.", "error", "devices")
            return
        self.clear_error("devices")
        if changed:
            self.live.retry_soon()

    def rescan_devices(self) -> None:
        """The Refresh button: make PortAudio scan the hardware again (for a device plugged in since the start;
        the stream restarts), then list the devices."""
        self.player.stop()
        try:
            self.live.rescan()
        except Exception as e:  # PortAudio failing to initialise
            self.show_error(f"Cannot scan the audio devices: {e}", "error", "devices")
        self.refresh_devices()

    def _fill_devices(self, combo, devices, chosen: str | None) -> bool:
        """Show ``devices`` in ``combo`` with ``chosen`` selected (listed as not available when it is missing,
        so that the choice survives a device that comes and goes); returns True when the list changed."""
        entries = [(device_label(d), d.name) for d in devices]
        if chosen is not None and all(name != chosen for _, name in entries):
            entries.insert(0, (f"{chosen}  (not available)", chosen))
        current = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())]
        if entries == current:
            return False
        combo.blockSignals(True)
        combo.clear()
        for label, name in entries:
            combo.addItem(label, name)
        combo.setCurrentIndex(max(0, combo.findData(chosen)) if entries else -1)
        combo.blockSignals(False)
        return True

    def _devices_chosen(self) -> None:
        self.settings.input_device = self.devices.input.currentData()
        self.settings.output_device = self.devices.output.currentData()
        self._open_stream()

    def _channels_chosen(self) -> None:
        self.settings.channels = self.devices.channels.currentData()
        self.live.set_channels(self.settings.channels)

    def _open_stream(self) -> None:
        self.live.open(self.devices.input.currentData(), self.devices.output.currentData())

    STATE_TEXT = {"streaming": "● streaming", "waiting": "● waiting for device", "error": "● error",
                  "stopped": "○ stopped"}

    def _stream_state(self, state: str, message: str) -> None:
        self.devices.state.setText(self.STATE_TEXT.get(state, state))
        colour = {"streaming": theme.GOOD, "waiting": theme.WARN, "error": theme.BAD}.get(state, theme.MUTED)
        self.devices.state.setStyleSheet(f"color: {colour};")
        rate, device_rate = self.live.sample_rate, self.live.device_rate
        self.devices.rate.setText(f"{device_rate} Hz" if device_rate else "–")
        self.devices.rate.setToolTip(f"devices at {device_rate} Hz, model at {rate} Hz" if device_rate else "")
        if state in ("waiting", "error"):
            self.player.stop()  # its device may be the lost one, and reopening re-initialises PortAudio
            self.show_error(message, "warning" if state == "waiting" else "error", "stream")
            return
        self.clear_error("stream")
        self.statusBar().showMessage(message)
        if state == "streaming":
            for view in (self.scope.input_spectrogram, self.scope.output_spectrogram):
                view.set_sample_rate(rate)

    # ------------------------------------------------------------------ model bundle

    def load_bundle(self, path: str | Path | None) -> None:
        """Load a bundle in a worker thread; the stream restarts with it once loaded."""
        if not path:
            return
        self.settings.bundle = str(path)
        self._fill_bundles()
        self.model.provider.setText("loading…")
        self.model.details.setText(str(path))
        self.statusBar().showMessage(f"Loading model bundle {path}…")
        loader = BundleLoader(path, self.model.compute.currentData() or "auto", self)
        loader.loaded.connect(self._bundle_loaded)
        loader.failed.connect(self._bundle_failed)
        loader.finished.connect(loader.deleteLater)
        self.loader = loader
        loader.start()

    def _bundle_loaded(self, separator) -> None:
        if self.sender() is not self.loader:
            return  # an older load finished after a newer one started
        self.separator = separator
        self.loader = None
        provider = provider_name(separator.provider)
        self.model.provider.setText(f"on {provider} ({separator.precision})")
        self.model.provider.setStyleSheet(f"color: {theme.GOOD if provider == 'CUDA' else theme.ACCENT};")
        self.model.details.setText(f"{separator.window_samples / separator.sample_rate:g} s window · "
                                   f"{separator.sample_rate} Hz · {'one' if separator.bundle.one_stage else 'two'}"
                                   f"-stage")
        self.latency.hop.setMaximum(separator.window_samples / separator.sample_rate)
        self.latency.lookahead.setMaximum(separator.window_samples / separator.sample_rate)
        self.clear_error("bundle")
        if self.model.compute.currentData() == "cuda" and provider != "CUDA":
            self.show_error("CUDA was asked for but is not available: the model runs on the CPU "
                            "(install onnxruntime-gpu and the CUDA libraries).", "warning", "bundle")
        self.live.set_separator(separator)
        if self.example is not None:  # read it again at the new model's rate
            self.load_example(self.example[0])
        self._errors_seen = 0
        self.apply_query()
        self._open_stream()
        self._update_file_buttons()

    def _bundle_failed(self, message: str) -> None:
        if self.sender() is not self.loader:
            return
        self.loader = None
        self.separator = None
        self.live.set_separator(None)
        self.model.provider.setText("–")
        self.model.details.setText("no model loaded")
        self.show_error(message, "error", "bundle")
        self._open_stream()
        self._update_file_buttons()

    def _browse_bundle(self) -> None:
        start = self.settings.bundle or str(Path.cwd())
        folder = QFileDialog.getExistingDirectory(self, "Choose a model bundle folder", start)
        if folder:
            self.load_bundle(folder)

    def _compute_chosen(self) -> None:
        self.settings.compute_device = self.model.compute.currentData()
        self.load_bundle(self.settings.bundle)

    # ------------------------------------------------------------------ query

    def current_query(self) -> Query | None:
        """The query the controls describe: the example clip if one is set, else the text (None when empty)."""
        mode = self.mode
        if self.example is not None:
            return Query(example=self.example[1], mode=mode)
        text = self.query.query.currentText().strip()
        return Query(text=text, mode=mode) if text else None

    def query_label(self) -> str:
        if self.example is not None:
            return f"example {Path(self.example[0]).stem}"
        return self.query.query.currentText().strip()

    @property
    def mode(self) -> str:
        return "remove" if self.query.remove.isChecked() else "extract"

    def apply_query(self) -> None:
        """Send the query in the controls to the engine (it takes effect on the next window)."""
        self.query_timer.stop()
        text = self.query.query.currentText().strip()
        if self.example is None and text:
            self.settings.remember(text)
            self._update_history()
        self.settings.query = text
        query = self.current_query()
        self.live.set_query(query)
        if query is None:
            self.query.active.setText("dry (no query)")
        else:
            self.query.active.setText(f"{'remove' if query.mode == 'remove' else 'extract'}: {self.query_label()}")

    def apply_text_query(self) -> None:
        """The text box was confirmed (Enter, a pause in typing, a history pick, Apply): a text replaces an
        example clip."""
        if self.example is not None and self.query.query.currentText().strip():
            self._forget_example()
        self.apply_query()

    def _update_history(self) -> None:
        combo = self.query.query
        text = combo.currentText()
        position = combo.lineEdit().cursorPosition()
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(self.settings.history)
        combo.setEditText(text)
        combo.lineEdit().setCursorPosition(position)
        combo.blockSignals(False)

    def _mode_chosen(self) -> None:
        self.settings.mode = self.mode
        self.apply_query()

    def set_example(self, name: str, clip) -> None:
        """Query by example: ``clip`` (channels, samples) at the model's rate."""
        self.example = (name, clip)
        self.query.example.setText(Path(name).name)
        self.apply_query()

    def clear_example(self) -> None:
        self._forget_example()
        self.apply_query()

    def _forget_example(self) -> None:
        self.example = None
        self.query.example.setText(EXAMPLE_HINT)

    def load_example(self, path: str | Path) -> None:
        """Read an audio clip and use it as the query."""
        from hybridsep_rt.audio import read_audio, to_model_rate

        if self.separator is None:
            self.show_error("Load a model bundle before querying by example.", "warning", "example")
            return
        try:
            clip, rate = read_audio(path)
        except (OSError, ValueError) as e:
            self.show_error(f"Cannot use {Path(path).name} as an example: {e}", "error", "example")
            return
        self.clear_error("example")
        self.set_example(str(path), to_model_rate(clip, rate, self.separator.sample_rate))
        self.statusBar().showMessage(f"Querying by example: {Path(path).name}", 5000)

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        files = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if files:
            self.load_example(files[0])
            event.acceptProposedAction()

    # ------------------------------------------------------------------ mix, timing, recording

    def _wet_changed(self, value: int) -> None:
        self.settings.wet = value / 100
        self.mix.wet_value.setText(f"{value} % wet")
        self.live.set_wet(value / 100)

    def _apply_timing(self) -> None:
        self.settings.hop_seconds = self.latency.hop.value()
        self.settings.lookahead_seconds = self.latency.lookahead.value()
        self.live.set_timing(self.settings.hop_seconds, self.settings.lookahead_seconds)

    def _record_clicked(self, checked: bool) -> None:
        if not checked:
            self.stop_recording()
            return
        start = str(Path(self.settings.record_folder or Path.home()) / "hybridsep-output.wav")
        path, _ = QFileDialog.getSaveFileName(self, "Record the output to", start, "Audio (*.wav *.flac)")
        if not path:
            self.mix.record.setChecked(False)
            return
        self.start_recording(path)

    def start_recording(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix == "":
            path = path.with_suffix(".wav")
        try:
            self.live.start_recording(path)
        except Exception as e:
            self.mix.record.setChecked(False)
            self.show_error(f"Cannot record: {e}")
            return
        self.settings.record_folder = str(path.parent)
        self.mix.record.setChecked(True)
        self.mix.record.setText("Stop recording")
        self.mix.record_state.setText("● 0.0 s")

    def stop_recording(self) -> Path | None:
        self.mix.record.setChecked(False)
        self.mix.record.setText("Record output…")
        try:
            path = self.live.stop_recording()
        except Exception as e:
            self.show_error(f"Recording failed: {e}")
            return None
        if path is not None:
            self.mix.record_state.setText(f"saved {path.name}")
            self.mix.record_state.setToolTip(str(path))
            self.statusBar().showMessage(f"Recorded the output to {path}", 10_000)
        return path

    # ------------------------------------------------------------------ timers

    def _update_display(self) -> None:
        """Meters and spectrograms from the tapped audio (and the file being played)."""
        tap: AudioTap | None = self.live.tap
        sides = ((self.scope.input_meter, self.scope.input_spectrogram, tap and tap.input_ring),
                 (self.scope.output_meter, self.scope.output_spectrogram, tap and tap.output_ring))
        for meter, view, ring in sides:
            block = AudioTap.drain(ring) if ring is not None else None
            if block is not None and block.shape[1]:
                meter.set_levels(*block_levels(block))
                view.feed(to_mono(block))
            else:
                meter.idle()
        played = self.player.take_played()
        if played is not None and played.shape[1]:
            self.file.result_spectrogram.feed(to_mono(played))

    def _update_status(self) -> None:
        self.live.poll()
        stats = self.live.stats()
        values = self.engine_panel.values
        recorder = self.live.recorder
        if recorder is not None:
            dropped = f", {recorder.dropped_frames} frames dropped" if recorder.dropped_frames else ""
            self.mix.record_state.setText(f"● {recorder.frames_written / recorder.rate:.1f} s{dropped}")
            self.mix.record_state.setToolTip(f"recording to {recorder.path}")
        elif self.mix.record.isChecked():  # the stream stopped the recording (its rate or channels changed)
            self.mix.record.setChecked(False)
            self.mix.record.setText("Record output…")
        if stats is None:
            for label in values.values():
                label.setText("–")
            self.latency.latency.setText("–")
            self.latency.breakdown.setText("no stream")
            return
        timing = self.live.timing
        rate = timing.sample_rate
        device = stats.latency_seconds - timing.latency / rate
        self.latency.latency.setText(f"{stats.latency_seconds:.2f} s")
        self.latency.breakdown.setText(
            f"= hop {timing.hop / rate:.2f} + lookahead {timing.lookahead / rate:.2f} + compute budget "
            f"{timing.compute_budget / rate:.2f} + device buffers {device:.2f} s")
        values["compute"].setText(f"{stats.last_compute_seconds * 1000:.0f} ms (mean "
                                  f"{stats.mean_compute_seconds * 1000:.0f})")
        values["load"].setText(f"{100 * stats.last_compute_seconds / stats.hop_seconds:.0f} %"
                               if stats.windows else "–")
        values["windows"].setText(str(stats.windows))
        if self.live.query is None or self.separator is None:
            level = "dry (no query)" if self.separator is not None else "dry (no model)"
        elif stats.passthrough:
            level = "pass-through (too slow)"
        else:
            level = f"hop {stats.hop_seconds:.2f} s" + (", degraded" if stats.level else "")
        values["level"].setText(level)
        values["level"].setStyleSheet(f"color: {theme.WARN if stats.passthrough or stats.level else theme.TEXT};")
        values["degradations"].setText(f"{stats.degradations} / {stats.recoveries}")
        values["xruns"].setText(f"{stats.input_overflows} / {stats.output_underflows}")
        values["xruns"].setToolTip(f"input overflows: {stats.input_overflows} ({stats.input_overflow_frames} "
                                   f"frames dropped); output underflows: {stats.output_underflows} "
                                   f"({stats.output_underflow_frames} frames played dry)")
        values["late"].setText(str(stats.late_frames))
        values["errors"].setText(str(stats.errors))
        values["errors"].setToolTip(stats.last_error or "")
        if stats.errors > self._errors_seen:
            self._errors_seen = stats.errors
            self.show_error(f"The model failed on a window ({stats.last_error}); the dry signal plays while it "
                            f"retries.", "warning", "model")

    # ------------------------------------------------------------------ file mode

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an audio file", self.settings.file_folder or str(Path.home()),
                                              "Audio (*.wav *.flac *.ogg *.mp3 *.aiff *.aif);;All files (*)")
        if path:
            self.open_file(path)

    def open_file(self, path: str | Path) -> None:
        self.file_path = Path(path)
        self.file_result = None
        self.settings.file_folder = str(self.file_path.parent)
        self.file.path.setText(str(self.file_path))
        self.file.progress.setValue(0)
        self.file.info.setText("Press Separate to separate it with the current query.")
        self._update_file_buttons()

    def separate_file(self) -> None:
        """Separate the open file with the current query in a worker thread."""
        query = self.current_query()
        if self.file_path is None or self.separator is None or query is None:
            self.show_error("File mode needs a file, a model bundle and a query (text or example).", "warning")
            return
        self.player.stop()
        job = SeparationJob(self.separator, self.file_path, query, self.query_label(), self)
        job.progress.connect(self._file_progress)
        job.succeeded.connect(self._file_separated)
        job.failed.connect(self._file_failed)
        job.finished.connect(self._file_job_finished)
        self.file_job = job
        self.file_result = None
        self.file.info.setText(f"Separating {self.file_path.name} with “{self.query_label()}”…")
        job.start()
        self._update_file_buttons()

    def _file_progress(self, done: int, total: int) -> None:
        self.file.progress.setMaximum(max(1, total))
        self.file.progress.setValue(done)

    def _file_separated(self, result) -> None:
        self.file_result = result
        seconds = result.mixture.shape[1] / result.rate
        self.file.info.setText(f"Separated {result.source.name} ({seconds:.1f} s) with “{result.label}”. "
                               f"Listen to the stems or export them.")
        self.statusBar().showMessage(f"Separated {result.source.name}", 10_000)

    def _file_failed(self, message: str) -> None:
        self.file.info.setText(message)
        self.show_error(message, "warning" if message.endswith("stopped") else "error")

    def _file_job_finished(self) -> None:
        self.file_job = None
        self._update_file_buttons()

    def _stop_file_job(self) -> None:
        if self.file_job is not None:
            self.file_job.requestInterruption()

    def listen(self, which: str) -> None:
        """Play a stem of the separated file (or the original) through the output device."""
        if self.file_result is None:
            return
        self.player.play(self.file_result.stem(which), self.file_result.rate, self.live.output_device())
        if self.player.playing:
            view = self.file.result_spectrogram
            view.set_sample_rate(self.player.rate)
            view.erase()
            view.set_title(f"Playing: {STEM_TITLES[which]}")
        self._update_file_buttons()

    def _export_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export the stems to", self.settings.file_folder or
                                                  str(Path.home()))
        if folder:
            self.export_stems(folder)

    def export_stems(self, folder: str | Path) -> list[Path]:
        if self.file_result is None:
            return []
        try:
            paths = export_stems(self.file_result, folder)
        except (OSError, ValueError) as e:
            self.show_error(f"Cannot export the stems: {e}")
            return []
        self.file.info.setText("Exported " + ", ".join(p.name for p in paths) + f" to {Path(folder)}")
        return paths

    def _update_file_buttons(self) -> None:
        busy = self.file_job is not None
        done = self.file_result is not None
        self.file.separate.setEnabled(not busy and self.file_path is not None)
        self.file.stop.setEnabled(busy)
        for button in (self.file.listen_target, self.file.listen_residual, self.file.listen_mixture,
                       self.file.export):
            button.setEnabled(done and not busy)
        self.file.stop_playback.setEnabled(self.player.playing)

    # ------------------------------------------------------------------ closing

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Save the settings and stop everything (also called by tests)."""
        if self.query_timer.isActive():
            self.apply_text_query()
        for timer in (self.display_timer, self.status_timer, self.query_timer, self.timing_timer):
            timer.stop()
        self.settings.query = self.query.query.currentText().strip()
        self.settings.input_device = self.devices.input.currentData()
        self.settings.output_device = self.devices.output.currentData()
        self.settings.hop_seconds = self.latency.hop.value()
        self.settings.lookahead_seconds = self.latency.lookahead.value()
        self.settings.geometry = bytes(self.saveGeometry())
        save_settings(self.store, self.settings)
        if self.file_job is not None:
            self.file_job.requestInterruption()
            self.file_job.wait()
        if self.loader is not None:
            self.loader.wait()
        self.player.stop()
        if self.live.recorder is not None:
            self.stop_recording()
        self.live.close()

"""The window's panels: widgets and their layout only; ``gui.main_window`` connects them to the audio."""

from __future__ import annotations

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from gui.widgets import LevelMeter, SpectrogramView

EXAMPLE_HINT = "none — drop an audio clip on the window to query by example"
QUERY_PLACEHOLDER = "Describe the sound, e.g. \"a dog barking\"  (Enter applies; or drop an audio clip here)"


GROUP_MARGINS = (8, 2, 8, 4)  # left, top, right, bottom inside a panel's frame (the title sits above it)


def compact(layout):
    """Tight margins and spacing for a panel's layout (the window must fit 1280x800)."""
    layout.setContentsMargins(*GROUP_MARGINS)
    if isinstance(layout, QGridLayout):
        layout.setVerticalSpacing(4)
    else:
        layout.setSpacing(4)
    return layout


def caption(text: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("caption")
    return label


def value_label(text: str = "–") -> QLabel:
    label = QLabel(text)
    label.setObjectName("value")
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class DevicePanel(QGroupBox):
    """Input and output device, sample rate, stream state, and a refresh button."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Audio devices", parent)
        self.input = QComboBox()
        self.output = QComboBox()
        for combo, kind in ((self.input, "input"), (self.output, "output")):
            combo.setPlaceholderText(f"no {kind} devices found")
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(28)
            combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.channels = QComboBox()
        self.channels.addItem("Mono", 1)
        self.channels.addItem("Stereo", 2)
        self.channels.setToolTip("Channels of the stream; each channel is separated on its own (mono halves "
                                 "the compute)")
        self.refresh = QPushButton("Refresh")
        self.refresh.setToolTip("Scan the audio hardware again, for a device plugged in since the start (the "
                                "stream restarts); PulseAudio / PipeWire devices appear by themselves")
        self.rate = value_label()
        self.state = value_label("stopped")
        grid = compact(QGridLayout(self))
        grid.addWidget(caption("Input"), 0, 0)
        grid.addWidget(self.input, 0, 1)
        grid.addWidget(self.channels, 0, 2)
        grid.addWidget(self.refresh, 0, 3)
        grid.addWidget(caption("Output"), 1, 0)
        grid.addWidget(self.output, 1, 1)
        status = QHBoxLayout()
        status.addWidget(self.rate)
        status.addSpacing(8)
        status.addWidget(self.state, 1)
        grid.addLayout(status, 1, 2, 1, 2)
        grid.setColumnStretch(1, 1)


class ModelPanel(QGroupBox):
    """The model bundle and the compute device / execution provider."""

    COMPUTE_DEVICES = (("auto", "Auto (CUDA if present)"), ("cpu", "CPU"), ("cuda", "CUDA"))

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Model", parent)
        self.bundle = QComboBox()
        self.bundle.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.bundle.setMinimumContentsLength(24)
        self.bundle.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.browse = QPushButton("Open…")
        self.browse.setToolTip("Choose a model bundle folder (manifest.json + ONNX graphs)")
        self.compute = QComboBox()
        for key, text in self.COMPUTE_DEVICES:
            self.compute.addItem(text, key)
        self.provider = value_label()
        self.details = value_label()
        grid = compact(QGridLayout(self))
        grid.addWidget(caption("Bundle"), 0, 0)
        grid.addWidget(self.bundle, 0, 1, 1, 3)
        grid.addWidget(self.browse, 0, 4)
        grid.addWidget(caption("Compute"), 1, 0)
        grid.addWidget(self.compute, 1, 1)
        grid.addWidget(self.provider, 1, 2)
        grid.addWidget(self.details, 1, 3, 1, 2)
        grid.setColumnStretch(3, 1)


class QueryPanel(QGroupBox):
    """The text query with its history, extract / remove, and the query-by-example clip."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Query", parent)
        self.query = QComboBox()
        self.query.setObjectName("query")
        self.query.setEditable(True)
        self.query.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.query.setMaxVisibleItems(20)
        self.query.lineEdit().setPlaceholderText(QUERY_PLACEHOLDER)
        self.query.lineEdit().setClearButtonEnabled(True)
        self.query.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.query.setToolTip("Applied live: press Enter, pause typing, or pick an earlier query from the list")
        self.apply = QPushButton("Apply")
        self.extract = QPushButton("Extract")
        self.remove = QPushButton("Remove")
        self.modes = QButtonGroup(self)
        for button, tip in ((self.extract, "Output the described sound"),
                            (self.remove, "Output everything except the described sound")):
            button.setCheckable(True)
            button.setToolTip(tip)
            self.modes.addButton(button)
        self.extract.setChecked(True)
        self.example = value_label(EXAMPLE_HINT)
        self.clear_example = QPushButton("Clear example")
        self.active = value_label("dry (no query)")

        top = QHBoxLayout()
        top.addWidget(self.query, 1)
        top.addWidget(self.apply)
        top.addSpacing(12)
        top.addWidget(self.extract)
        top.addWidget(self.remove)
        bottom = QHBoxLayout()
        bottom.addWidget(caption("Example"))
        bottom.addWidget(self.example, 1)
        bottom.addWidget(self.clear_example)
        bottom.addSpacing(12)
        bottom.addWidget(caption("Separating"))
        bottom.addWidget(self.active, 1)
        layout = compact(QVBoxLayout(self))
        layout.addLayout(top)
        layout.addLayout(bottom)


class ScopePanel(QWidget):
    """Input and output spectrograms, each with its level meter."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.input_spectrogram = SpectrogramView("Input")
        self.input_meter = LevelMeter("Input")
        self.output_spectrogram = SpectrogramView("Output")
        self.output_meter = LevelMeter("Output")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.input_spectrogram, 1)
        layout.addWidget(self.input_meter)
        layout.addSpacing(4)
        layout.addWidget(self.output_spectrogram, 1)
        layout.addWidget(self.output_meter)


class MixPanel(QGroupBox):
    """Wet/dry, bypass and recording."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Mix", parent)
        self.wet = QSlider(Qt.Orientation.Horizontal)
        self.wet.setRange(0, 100)
        self.wet.setValue(100)
        self.wet.setToolTip("0 %: the dry input only; 100 %: the separated output only")
        self.wet_value = value_label("100 % wet")
        self.bypass = QPushButton("Bypass")
        self.bypass.setObjectName("bypass")
        self.bypass.setCheckable(True)
        self.bypass.setToolTip("Play the dry input (delayed by the latency, so timing does not jump)")
        self.record = QPushButton("Record output…")
        self.record.setObjectName("record")
        self.record.setCheckable(True)
        self.record_state = value_label("")
        grid = compact(QGridLayout(self))
        grid.addWidget(caption("Wet/dry"), 0, 0)
        grid.addWidget(self.wet, 0, 1, 1, 2)
        grid.addWidget(self.wet_value, 0, 3)
        grid.addWidget(self.bypass, 1, 0)
        grid.addWidget(self.record, 1, 1)
        grid.addWidget(self.record_state, 1, 2, 1, 2)
        grid.setColumnStretch(2, 1)


class LatencyPanel(QGroupBox):
    """Hop and lookahead (latency against quality) and the latency they give."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Latency / quality", parent)
        self.hop = QDoubleSpinBox()
        self.lookahead = QDoubleSpinBox()
        for box, tip in ((self.hop, "Time between model windows: shorter reacts sooner but costs more compute"),
                         (self.lookahead, "Right context every output sample gets: more is better quality "
                                          "and more latency")):
            box.setDecimals(2)
            box.setSingleStep(0.25)
            box.setSuffix(" s")
            box.setKeyboardTracking(False)
            box.setToolTip(tip)
        self.hop.setRange(0.1, 10.0)
        self.lookahead.setRange(0.0, 10.0)
        self.latency = value_label()
        self.latency.setStyleSheet("font-size: 15pt; font-weight: bold;")
        self.breakdown = caption("")
        self.breakdown.setWordWrap(True)
        grid = compact(QGridLayout(self))
        grid.addWidget(caption("Hop"), 0, 0)
        grid.addWidget(self.hop, 0, 1)
        grid.addWidget(caption("Lookahead"), 0, 2)
        grid.addWidget(self.lookahead, 0, 3)
        grid.addWidget(caption("Latency"), 1, 0)
        grid.addWidget(self.latency, 1, 1, 1, 3)
        grid.addWidget(self.breakdown, 2, 0, 1, 4)


class EnginePanel(QGroupBox):
    """Live engine figures: compute time per window, counters."""

    ROWS = (
        ("compute", "Compute / window"),
        ("load", "Load (compute / hop)"),
        ("windows", "Windows separated"),
        ("level", "Processing"),
        ("degradations", "Degraded / recovered"),
        ("xruns", "Overflows / underflows"),
        ("late", "Late frames"),
        ("errors", "Model errors"),
    )

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Engine", parent)
        self.values: dict[str, QLabel] = {}
        grid = compact(QGridLayout(self))
        for row, (key, text) in enumerate(self.ROWS):
            grid.addWidget(caption(text), row, 0)
            self.values[key] = value_label()
            grid.addWidget(self.values[key], row, 1)
        grid.setColumnStretch(1, 1)


class FilePanel(QWidget):
    """File mode: open, separate with the current query, listen, export stems."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.open = QPushButton("Open file…")
        self.path = value_label("no file")
        self.separate = QPushButton("Separate")
        self.stop = QPushButton("Stop")
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m windows")
        self.progress.setValue(0)
        self.listen_target = QPushButton("Listen: target")
        self.listen_residual = QPushButton("Listen: residual")
        self.listen_mixture = QPushButton("Listen: original")
        self.stop_playback = QPushButton("Stop playback")
        self.export = QPushButton("Export stems…")
        self.info = value_label("Open an audio file, then separate it with the current query.")
        self.info.setWordWrap(True)
        self.result_spectrogram = SpectrogramView("Playback", seconds=8.0)

        row1 = QHBoxLayout()
        row1.addWidget(self.open)
        row1.addWidget(self.path, 1)
        row2 = QHBoxLayout()
        row2.addWidget(self.separate)
        row2.addWidget(self.stop)
        row2.addWidget(self.progress, 1)
        row3 = QHBoxLayout()
        for button in (self.listen_target, self.listen_residual, self.listen_mixture, self.stop_playback):
            row3.addWidget(button)
        row3.addStretch(1)
        row3.addWidget(self.export)
        layout = QVBoxLayout(self)
        layout.addLayout(row1)
        layout.addLayout(row2)
        layout.addLayout(row3)
        layout.addWidget(self.info)
        layout.addWidget(self.result_spectrogram, 1)

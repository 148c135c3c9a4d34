"""Display widgets: level meters, scrolling spectrograms and the message banner."""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PyQt6.QtCore import QRectF, QSize, Qt
from PyQt6.QtGui import QColor, QFont, QPainter
from PyQt6.QtWidgets import QLabel, QSizePolicy, QWidget

from gui import theme
from gui.display import METER_FLOOR_DB, SPECTROGRAM_FLOOR_DB, SpectrogramColumns

PEAK_HOLD_SECONDS = 1.5  # how long a peak marker stays before it falls
METER_FALL_DB_PER_SECOND = 24.0  # how fast the bars fall (attack is immediate)
METER_TICKS_DB = (0, -6, -12, -24, -36, -48, -60)
METER_YELLOW_DB = -12.0  # bar colour changes: green below, yellow above, red above the next
METER_RED_DB = -3.0
METER_IDLE_SECONDS = 0.25  # without audio for this long, the bars fall (blocks arrive every few display frames)


class LevelMeter(QWidget):
    """A horizontal peak / RMS meter in dBFS, one bar per channel, with peak hold and a clip marker.

    Feed it with :meth:`set_levels` (peak and RMS dB per channel) when audio arrives and :meth:`idle` on display
    frames without audio. A click clears the clip marker.
    """

    def __init__(self, title: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.title = title
        self.peak = np.full(1, METER_FLOOR_DB)
        self.rms = np.full(1, METER_FLOOR_DB)
        self.hold = np.full(1, METER_FLOOR_DB)
        self._hold_time = np.zeros(1)
        self._last_update = self._last_audio = time.monotonic()
        self.clipped = False
        self.updates = 0  # level updates received (tests read it)
        self.setMinimumHeight(40)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(320, 42)

    def set_levels(self, peak_db: np.ndarray, rms_db: np.ndarray) -> None:
        """New levels from audio: peak and RMS dBFS, (channels,) each."""
        self._last_audio = time.monotonic()
        self.updates += 1
        self.clipped = self.clipped or bool(np.any(np.asarray(peak_db) >= 0.0))
        self._apply(np.asarray(peak_db, dtype=np.float64), np.asarray(rms_db, dtype=np.float64))

    def idle(self) -> None:
        """No audio arrived for this display frame: the bars fall once audio has stopped for a moment."""
        if time.monotonic() - self._last_audio > METER_IDLE_SECONDS:
            silent = np.full(self.peak.shape, METER_FLOOR_DB)
            self._apply(silent, silent)

    def _apply(self, peak_db: np.ndarray, rms_db: np.ndarray) -> None:
        """Bars rise at once and fall at ``METER_FALL_DB_PER_SECOND``; the peak marker holds."""
        now = time.monotonic()
        fall = METER_FALL_DB_PER_SECOND * (now - self._last_update)
        self._last_update = now
        if peak_db.shape != self.peak.shape:  # another channel count: start over
            self.peak, self.rms = peak_db.copy(), rms_db.copy()
            self.hold, self._hold_time = peak_db.copy(), np.full(peak_db.shape, now)
        else:
            self.peak = np.maximum(peak_db, self.peak - fall)
            self.rms = np.maximum(rms_db, self.rms - fall)
            renew = (peak_db >= self.hold) | (now - self._hold_time > PEAK_HOLD_SECONDS)
            self.hold = np.where(renew, peak_db, self.hold)
            self._hold_time = np.where(renew, now, self._hold_time)
        self.update()

    def mousePressEvent(self, event) -> None:  # a click clears the clip marker
        self.clipped = False
        self.update()

    def _x(self, db: float, left: float, width: float) -> float:
        return left + width * (min(0.0, max(METER_FLOOR_DB, db)) - METER_FLOOR_DB) / -METER_FLOOR_DB

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() - 2))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        label_width = metrics.horizontalAdvance("OUTPUT") + 8
        readout_width = metrics.horizontalAdvance("-60.0 dB") + 10
        left, right = label_width, self.width() - readout_width
        width = max(10.0, right - left)
        scale_height = metrics.height()
        bar_top, bar_bottom = 2, self.height() - scale_height - 2
        painter.fillRect(self.rect(), QColor(theme.PANEL))

        painter.setPen(QColor(theme.MUTED))
        painter.drawText(QRectF(0, bar_top, label_width - 4, bar_bottom - bar_top),
                         Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, self.title.upper())
        channels = len(self.peak)
        gap = 2
        bar_height = max(3.0, (bar_bottom - bar_top - gap * (channels - 1)) / channels)
        for c in range(channels):
            y = bar_top + c * (bar_height + gap)
            painter.fillRect(QRectF(left, y, width, bar_height), QColor(theme.FIELD))
            self._draw_bar(painter, self.rms[c], left, width, y, bar_height, dim=False)
            self._draw_bar(painter, self.peak[c], left, width, y + bar_height * 0.35, bar_height * 0.3, dim=True)
            x = self._x(self.hold[c], left, width)
            painter.fillRect(QRectF(x - 1, y, 2, bar_height), QColor(theme.TEXT))
        for tick in METER_TICKS_DB:
            x = self._x(tick, left, width)
            painter.setPen(QColor(theme.BORDER))
            painter.drawLine(int(x), bar_bottom, int(x), bar_bottom + 3)
            painter.setPen(QColor(theme.MUTED))
            text = str(tick)
            tw = metrics.horizontalAdvance(text)
            painter.drawText(int(min(max(left, x - tw / 2), right - tw)), self.height() - 3, text)
        readout = float(np.max(self.hold))
        painter.setPen(QColor(theme.BAD if self.clipped else theme.TEXT))
        text = "CLIP" if self.clipped else ("-inf dB" if readout <= METER_FLOOR_DB else f"{readout:.1f} dB")
        painter.drawText(QRectF(right + 6, bar_top, readout_width - 6, bar_bottom - bar_top),
                         Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, text)
        painter.end()

    def _draw_bar(self, painter: QPainter, db: float, left: float, width: float, y: float, height: float,
                  dim: bool) -> None:
        end = self._x(db, left, width)
        zones = ((METER_FLOOR_DB, METER_YELLOW_DB, theme.GOOD), (METER_YELLOW_DB, METER_RED_DB, theme.WARN),
                 (METER_RED_DB, 0.0, theme.BAD))
        for low, high, colour in zones:
            x0, x1 = self._x(low, left, width), min(end, self._x(high, left, width))
            if x1 > x0:
                c = QColor(colour)
                if dim:
                    c = c.lighter(140)
                painter.fillRect(QRectF(x0, y, x1 - x0, height), c)


class SpectrogramView(pg.GraphicsLayoutWidget):
    """A scrolling log-frequency spectrogram (pyqtgraph ImageItem), newest column on the right.

    Call :meth:`set_sample_rate` when the stream's rate is known and :meth:`feed` with mono samples.

    Args:
        title: shown above the plot.
        seconds: time span shown.
    """

    def __init__(self, title: str, seconds: float = 8.0, parent: QWidget | None = None):
        super().__init__(parent)
        self.setBackground(theme.PANEL)
        self.seconds = seconds
        self.columns_received = 0  # tests read it
        self.plot = self.addPlot()
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen(theme.MUTED)
            self.plot.getAxis(axis).setPen(theme.BORDER)
        self.plot.getAxis("left").setWidth(44)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setColorMap(pg.colormap.get("inferno"))
        self.plot.addItem(self.image)
        self.title = pg.TextItem(title, color=theme.TEXT, anchor=(0, 0), fill=pg.mkBrush(0, 0, 0, 140))
        self.plot.addItem(self.title)
        self.analyser: SpectrogramColumns | None = None
        self.data = np.zeros((1, 1), dtype=np.float32)
        self.setMinimumHeight(110)
        self.set_sample_rate(44100)

    def set_sample_rate(self, sample_rate: int) -> None:
        """Start over for a stream at ``sample_rate``."""
        if self.analyser is not None and self.analyser.sample_rate == sample_rate:
            return
        self.analyser = SpectrogramColumns(sample_rate)
        count = int(self.seconds * sample_rate / self.analyser.hop)
        self.data = np.full((self.analyser.bands, count), SPECTROGRAM_FLOOR_DB, dtype=np.float32)
        self.image.setImage(self.data, levels=(SPECTROGRAM_FLOOR_DB, 0.0), autoLevels=False)
        column_seconds = self.analyser.hop / sample_rate
        self.image.setRect(QRectF(-count * column_seconds, 0, count * column_seconds, self.analyser.bands))
        self.plot.setXRange(-count * column_seconds, 0, padding=0)
        self.plot.setYRange(0, self.analyser.bands, padding=0)
        self.title.setPos(-count * column_seconds, self.analyser.bands)
        ticks = [(self.analyser.band_of(hz), label) for hz, label in
                 ((100, "100"), (1000, "1k"), (10000, "10k")) if hz < sample_rate / 2]
        self.plot.getAxis("left").setTicks([ticks])
        self.plot.getAxis("left").setLabel("Hz", color=theme.MUTED)
        seconds_ticks = [(-s, f"{-s:g} s" if s else "now") for s in range(0, int(self.seconds) + 1, 2)]
        self.plot.getAxis("bottom").setTicks([seconds_ticks])

    def set_title(self, title: str) -> None:
        self.title.setText(title)

    def erase(self) -> None:
        """Blank the picture (the axes stay)."""
        self.data[:] = SPECTROGRAM_FLOOR_DB
        self.image.setImage(self.data, autoLevels=False)

    def feed(self, samples: np.ndarray) -> None:
        """Add (frames,) mono samples at the set rate."""
        columns = self.analyser.feed(samples)
        count = columns.shape[0]
        if count == 0:
            return
        count = min(count, self.data.shape[1])
        self.data[:, :-count] = self.data[:, count:]
        self.data[:, -count:] = columns[-count:].T
        self.columns_received += count
        self.image.setImage(self.data, autoLevels=False)


class Banner(QLabel):
    """A coloured one-line message above the controls: errors, warnings and notices. Hidden when empty."""

    LEVELS = ("error", "warning", "info")

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("banner")
        self.setWordWrap(True)
        self.setToolTip("Click to dismiss")
        self.level = ""
        self.source = ""
        self.hide()

    def show_message(self, text: str, level: str = "error", source: str = "") -> None:
        """Show ``text``; ``source`` names what it is about, so that only that part clears it."""
        if level not in self.LEVELS:
            raise ValueError(f"level must be one of {self.LEVELS}")
        self.level = level
        self.source = source
        self.setProperty("level", level)
        self.style().unpolish(self)
        self.style().polish(self)
        self.setText(text)
        self.show()

    def mousePressEvent(self, event) -> None:  # a click dismisses the message
        self.clear_message()

    def clear_message(self, source: str | None = None) -> None:
        """Hide the banner (only if it shows a message from ``source``, when given)."""
        if source is not None and source != self.source:
            return
        self.level = self.source = ""
        self.setText("")
        self.hide()

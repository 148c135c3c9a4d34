"""The dark theme: a Fusion palette and a small style sheet, readable on a studio screen."""

from __future__ import annotations

from PyQt6.QtGui import QColor, QFont, QPalette
from PyQt6.QtWidgets import QApplication

# Colours, shared with the meters and the spectrogram colour map.
BACKGROUND = "#1e2127"
PANEL = "#262a31"
FIELD = "#15171b"
BORDER = "#3a3f48"
TEXT = "#e1e4e8"
MUTED = "#9aa3ad"
ACCENT = "#4fb3ff"
GOOD = "#3ecf6e"
WARN = "#f2c14e"
BAD = "#ef5350"

STYLE_SHEET = f"""
QWidget {{ font-size: 10pt; }}
QGroupBox {{
    border: 1px solid {BORDER}; border-radius: 6px; margin-top: 12px; padding: 4px 2px 2px 2px;
    background: {PANEL};
}}
QGroupBox::title {{
    subcontrol-origin: margin; left: 10px; padding: 0 4px; color: {MUTED}; font-weight: bold;
}}
QLineEdit, QComboBox, QDoubleSpinBox, QSpinBox {{
    background: {FIELD}; border: 1px solid {BORDER}; border-radius: 4px; padding: 3px 6px; min-height: 20px;
}}
QLineEdit:focus, QComboBox:focus, QDoubleSpinBox:focus {{ border-color: {ACCENT}; }}
QComboBox#query {{ font-size: 13pt; min-height: 28px; }}
QPushButton {{
    background: #30353e; border: 1px solid {BORDER}; border-radius: 4px; padding: 4px 12px; min-height: 20px;
}}
QPushButton:hover {{ background: #383e48; }}
QPushButton:checked {{ background: {ACCENT}; color: #0b1420; border-color: {ACCENT}; }}
QPushButton#record:checked {{ background: {BAD}; color: white; border-color: {BAD}; }}
QPushButton#bypass:checked {{ background: {WARN}; color: #1b1400; border-color: {WARN}; }}
QPushButton:disabled {{ color: #6b7280; }}
QLabel#value {{ color: {TEXT}; font-family: monospace; }}
QLabel#caption {{ color: {MUTED}; }}
QLabel#banner {{ padding: 6px 10px; border-radius: 4px; font-weight: bold; }}
QLabel#banner[level="error"] {{ background: #5c1f22; color: #ffd7d7; border: 1px solid {BAD}; }}
QLabel#banner[level="warning"] {{ background: #4d3d12; color: #ffeebf; border: 1px solid {WARN}; }}
QLabel#banner[level="info"] {{ background: #163449; color: #d5ecff; border: 1px solid {ACCENT}; }}
QProgressBar {{ background: {FIELD}; border: 1px solid {BORDER}; border-radius: 4px; text-align: center; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 3px; }}
QSlider::groove:horizontal {{ height: 6px; background: {FIELD}; border: 1px solid {BORDER}; border-radius: 3px; }}
QSlider::handle:horizontal {{ width: 14px; margin: -5px 0; border-radius: 7px; background: {ACCENT}; }}
QStatusBar {{ color: {MUTED}; }}
QTabWidget::pane {{ border: 1px solid {BORDER}; border-radius: 6px; top: -1px; background: {PANEL}; }}
QTabBar::tab {{ background: {BACKGROUND}; border: 1px solid {BORDER}; padding: 5px 16px; margin-right: 2px;
               border-top-left-radius: 4px; border-top-right-radius: 4px; }}
QTabBar::tab:selected {{ background: {PANEL}; border-bottom-color: {PANEL}; }}
"""


def dark_palette() -> QPalette:
    palette = QPalette()
    roles = {
        QPalette.ColorRole.Window: BACKGROUND,
        QPalette.ColorRole.WindowText: TEXT,
        QPalette.ColorRole.Base: FIELD,
        QPalette.ColorRole.AlternateBase: PANEL,
        QPalette.ColorRole.ToolTipBase: PANEL,
        QPalette.ColorRole.ToolTipText: TEXT,
        QPalette.ColorRole.Text: TEXT,
        QPalette.ColorRole.Button: "#30353e",
        QPalette.ColorRole.ButtonText: TEXT,
        QPalette.ColorRole.BrightText: BAD,
        QPalette.ColorRole.Highlight: ACCENT,
        QPalette.ColorRole.HighlightedText: "#0b1420",
        QPalette.ColorRole.PlaceholderText: MUTED,
        QPalette.ColorRole.Link: ACCENT,
    }
    for role, colour in roles.items():
        palette.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b7280"))
    return palette


def apply_dark_theme(app: QApplication) -> None:
    app.setStyle("Fusion")
    app.setPalette(dark_palette())
    font = QFont(app.font())
    font.setPointSize(10)
    app.setFont(font)
    app.setStyleSheet(STYLE_SHEET)

"""`hybridsep gui`: the desktop app for live separation (PyQt6). Qt is imported only when the command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SIGNAL_CHECK_MS = 200  # how often Python gets to handle Ctrl-C while the Qt event loop runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, default=None,
                        help="model bundle folder (default: the last one used, else models/default)")
    parser.add_argument("--settings", type=Path, default=None, metavar="INI",
                        help="keep the settings in this ini file instead of the user's settings store")
    parser.add_argument("--size", default="1280x800", metavar="WxH", help="initial window size (default: 1280x800)")


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 1280x800, got {text!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"--size must be positive, got {text!r}")
    return width, height


def create_app(argv: list[str] | None = None):
    """The QApplication with the app's names and the dark theme (an existing one is reused)."""
    from PyQt6.QtWidgets import QApplication

    from gui.settings import APPLICATION, ORGANISATION
    from gui.theme import apply_dark_theme

    app = QApplication.instance() or QApplication(argv or [sys.argv[0]])
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("HybridSep-RT")
    apply_dark_theme(app)
    return app


def run(args) -> int:
    try:
        size = parse_size(args.size)
    except ValueError as e:
        print(f"hybridsep gui: error: {e}", file=sys.stderr)
        return 2
    try:
        app = create_app()
    except ImportError as e:
        print(f"hybridsep gui: error: {e}; install the GUI extra: pip install 'hybridsep-rt[gui]'",
              file=sys.stderr)
        return 2
    from gui.main_window import MainWindow

    window = MainWindow(settings_path=args.settings, bundle=args.bundle)
    if not window.settings.geometry:
        window.resize(*size)
    window.show()
    _close_on_signals(window)
    return app.exec()


def _close_on_signals(window) -> None:
    """Ctrl-C or SIGTERM in the terminal close the window as its close button does (settings are saved). Qt's
    event loop does not run Python code by itself, so a timer gives Python's signal handlers a chance."""
    import signal

    from PyQt6.QtCore import QTimer

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: window.close())
    window.signal_timer = QTimer(window, interval=SIGNAL_CHECK_MS, timeout=lambda: None)
    window.signal_timer.start()

"""A screenshot of the running app (docs/screenshot.png): the window at 1280x800, streaming for a while.

    xvfb-run -s "-screen 0 1280x800x24" python -m gui.screenshot --bundle BUNDLE --input pulse:mic.monitor \\
        --output pulse:speakers -q "a dog barking" -o docs/screenshot.png

Play something into the input meanwhile (e.g. ``paplay -d mic music.wav``). The settings go to a temporary
file, so the user's settings are not touched.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--input", default=None, help="input device name (default: the system default)")
    parser.add_argument("--output", default=None, help="output device name (default: the system default)")
    parser.add_argument("-q", "--query", default="a dog barking")
    parser.add_argument("--history", nargs="*", default=["rain on a tin roof", "a man speaking", "an acoustic guitar"],
                        help="earlier queries to show in the history list")
    parser.add_argument("--channels", type=int, choices=(1, 2), default=2)
    parser.add_argument("--hop", type=float, default=1.0, help="hop in seconds")
    parser.add_argument("--lookahead", type=float, default=1.0, help="lookahead in seconds")
    parser.add_argument("--seconds", type=float, default=12.0, help="how long to stream before the screenshot")
    parser.add_argument("--size", default="1280x800")
    parser.add_argument("--tab", choices=("live", "file"), default="live")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/screenshot.png"))
    args = parser.parse_args(argv)

    from PyQt6.QtCore import QEventLoop, QTimer

    from gui.app import create_app, parse_size
    from gui.main_window import MainWindow
    from gui.settings import GuiSettings, open_store, save_settings

    app = create_app()
    settings_path = Path(tempfile.mkdtemp(prefix="hybridsep-gui-")) / "settings.ini"
    settings = GuiSettings(input_device=args.input, output_device=args.output, query=args.query,
                           channels=args.channels, hop_seconds=args.hop, lookahead_seconds=args.lookahead)
    for query in reversed([*args.history, args.query]):
        settings.remember(query)
    save_settings(open_store(settings_path), settings)
    window = MainWindow(settings_path=settings_path, bundle=args.bundle)
    window.resize(*parse_size(args.size))
    window.show()
    window.tabs.setCurrentIndex(0 if args.tab == "live" else 1)
    loop = QEventLoop(app)  # not app.exec(): quitting the application would close the window first
    QTimer.singleShot(int(args.seconds * 1000), loop.quit)
    loop.exec()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    saved = window.grab().save(str(args.out))
    print(f"{window.live.state}: {window.live.message}; window {window.width()}x{window.height()}; "
          f"{'wrote' if saved else 'could not write'} {args.out}")
    window.shutdown()
    return 0 if saved else 1


if __name__ == "__main__":
    sys.exit(main())

"""Settings kept between runs of the app (QSettings).

The store is the platform's usual place for organisation ``ORGANISATION`` and application ``APPLICATION``
(``~/.config/HybridSep/HybridSep-RT.conf`` on Linux), or an ini file given with ``hybridsep gui --settings FILE``
or the ``HYBRIDSEP_GUI_SETTINGS`` environment variable (tests point it at a temporary file).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from PyQt6.QtCore import QByteArray, QSettings

ORGANISATION = "HybridSep"
APPLICATION = "HybridSep-RT"
SETTINGS_ENV = "HYBRIDSEP_GUI_SETTINGS"
HISTORY_SIZE = 20  # queries kept in the history list


@dataclass
class GuiSettings:
    """What the window restores on the next start.

    Attributes:
        input_device, output_device: device names as the device list gives them (None: the system default).
        bundle: model bundle folder (None: the default bundle when it exists).
        channels: stream channels, 1 or 2.
        compute_device: "auto", "cpu" or "cuda" (see ``hybridsep_rt.session.DEVICES``).
        query: the last text query.
        history: earlier queries, newest first.
        mode: "extract" or "remove".
        wet: wet/dry mix, 0..1.
        hop_seconds, lookahead_seconds: the streaming engine's hop and lookahead.
        record_folder, file_folder: where the record and open dialogs start.
        geometry: the window geometry (QWidget.saveGeometry).
    """

    input_device: str | None = None
    output_device: str | None = None
    bundle: str | None = None
    channels: int = 2
    compute_device: str = "auto"
    query: str = ""
    history: list[str] = field(default_factory=list)
    mode: str = "extract"
    wet: float = 1.0
    hop_seconds: float = 1.0
    lookahead_seconds: float = 1.0
    record_folder: str = ""
    file_folder: str = ""
    geometry: bytes | None = None

    def remember(self, query: str) -> None:
        """Put ``query`` at the top of the history (once), keeping ``HISTORY_SIZE`` entries."""
        query = query.strip()
        if query:
            self.history = [query] + [q for q in self.history if q != query][: HISTORY_SIZE - 1]


def open_store(path: str | Path | None = None) -> QSettings:
    """The settings store: the ini file ``path`` (or ``$HYBRIDSEP_GUI_SETTINGS``), else the platform's store."""
    path = path or os.environ.get(SETTINGS_ENV)
    if path:
        return QSettings(str(path), QSettings.Format.IniFormat)
    return QSettings(ORGANISATION, APPLICATION)


def load_settings(store: QSettings) -> GuiSettings:
    """Read the settings; missing or unreadable values keep their defaults."""
    settings = GuiSettings()
    for f in fields(GuiSettings):
        raw = store.value(f.name)
        if raw is None:
            continue
        default = getattr(settings, f.name)
        try:
            value = _decode(f.name, raw, default)
        except (TypeError, ValueError):
            continue
        setattr(settings, f.name, value)
    if settings.mode not in ("extract", "remove"):
        settings.mode = "extract"
    settings.wet = min(1.0, max(0.0, settings.wet))
    settings.channels = 1 if settings.channels == 1 else 2
    return settings


def save_settings(store: QSettings, settings: GuiSettings) -> None:
    for name, value in asdict(settings).items():
        if name == "history":
            store.setValue(name, json.dumps(value))
        elif name == "geometry":
            store.setValue(name, QByteArray(value) if value else QByteArray())
        elif value is None:
            store.remove(name)
        else:
            store.setValue(name, value)
    store.sync()


def _decode(name: str, raw, default):
    if name == "history":
        history = json.loads(raw)
        if not isinstance(history, list):
            raise ValueError("history must be a list")
        return [str(q) for q in history][:HISTORY_SIZE]
    if name == "geometry":
        data = bytes(raw) if isinstance(raw, (QByteArray, bytes, bytearray)) else None
        return data or None
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, int):
        return int(raw)
    if name in ("input_device", "output_device", "bundle"):
        return str(raw) or None
    return str(raw)

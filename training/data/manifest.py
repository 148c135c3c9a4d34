"""Clip manifests: JSON Lines, one clip per line.

A row looks like

    {"path": "train/000001_piano.flac", "keywords": ["piano"],
     "captions": ["a piano playing a slow melody"], "source": "fluidsynth",
     "split": "train", "duration": 10.0, "sample_rate": 44100}

`path` is relative to the manifest's folder, or absolute. `keywords` and `captions`
are lists (either may be empty, not both). `duration` and `sample_rate` are optional.
Other keys are ignored.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import soundfile as sf

from training.data.audio import AudioError, load_audio

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
REQUIRED_FIELDS = ("path", "keywords", "captions", "source", "split")
# A clip whose peak stays below -80 dBFS counts as silent.
SILENCE_PEAK = 10.0 ** (-80.0 / 20.0)
# The mixer scales every training mixture so that its largest peak is this; the model brings each input to it.
MIXTURE_PEAK = 0.9
# The corpus stores every clip peak-normalised to -1 dBFS; the CLAP audio tower learned clips at this level.
CLIP_PEAK = 10.0 ** (-1.0 / 20.0)
# The median peak of the target in training mixtures (the mixer's defaults on the default corpus: 0.59-0.62 over
# 600 draws of 2, 4 or 10 s), the level of the targets whose audio embeddings the AET learned to predict.
TARGET_PEAK = 0.6


class ManifestError(ValueError):
    """A manifest row that cannot be used; the message names file:line."""


@dataclass
class Clip:
    """One audio clip and its labels. `path` is absolute once read from a manifest."""

    path: Path
    keywords: list[str]
    captions: list[str]
    source: str
    split: str
    duration: float | None = None
    sample_rate: int | None = None

    def to_row(self, root: Path) -> dict:
        """The manifest row, with `path` relative to `root` when the clip lies under it."""
        path = Path(self.path)
        try:
            path = path.resolve().relative_to(Path(root).resolve())
        except ValueError:
            path = path.resolve()
        row = {
            "path": path.as_posix(),
            "keywords": list(self.keywords),
            "captions": list(self.captions),
            "source": self.source,
            "split": self.split,
        }
        if self.duration is not None:
            row["duration"] = self.duration
        if self.sample_rate is not None:
            row["sample_rate"] = self.sample_rate
        return row


@dataclass
class BadRow:
    """A manifest row that was skipped, and why."""

    manifest: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.manifest}:{self.line}: {self.reason}"


@dataclass
class Manifest:
    """The clips read from a manifest, and the rows that were skipped."""

    path: Path
    clips: list[Clip]
    problems: list[BadRow] = field(default_factory=list)

    def split(self, name: str) -> list[Clip]:
        """The clips of one split."""
        return [clip for clip in self.clips if clip.split == name]


def _is_string_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) and item.strip() for item in value)


def _is_positive(value, types) -> bool:
    return isinstance(value, types) and not isinstance(value, bool) and value > 0


def _row_to_clip(row, root: Path) -> Clip:
    """Validate the fields of one decoded row; raises ValueError with the reason."""
    if not isinstance(row, dict):
        raise ValueError(f"row is a JSON {type(row).__name__}, not an object")
    missing = [name for name in REQUIRED_FIELDS if name not in row]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    if not isinstance(row["path"], str) or not row["path"]:
        raise ValueError("'path' must be a non-empty string")
    for name in ("keywords", "captions"):
        if not _is_string_list(row[name]):
            raise ValueError(f"'{name}' must be a list of non-empty strings")
    if not row["keywords"] and not row["captions"]:
        raise ValueError("no labels: 'keywords' and 'captions' are both empty")
    if not isinstance(row["source"], str):
        raise ValueError("'source' must be a string")
    if row["split"] not in SPLITS:
        raise ValueError(f"'split' is {row['split']!r}, expected one of {', '.join(SPLITS)}")
    duration = row.get("duration")
    if duration is not None and not _is_positive(duration, (int, float)):
        raise ValueError(f"'duration' must be a positive number, got {duration!r}")
    sample_rate = row.get("sample_rate")
    if sample_rate is not None and not _is_positive(sample_rate, int):
        raise ValueError(f"'sample_rate' must be a positive integer, got {sample_rate!r}")
    return Clip(
        path=(root / row["path"]).resolve(),
        keywords=[keyword.strip() for keyword in row["keywords"]],
        captions=[caption.strip() for caption in row["captions"]],
        source=row["source"],
        split=row["split"],
        duration=None if duration is None else float(duration),
        sample_rate=sample_rate,
    )


def _check_audio(clip: Clip) -> None:
    """Check that the clip's file exists, decodes and is not silent; raises ValueError."""
    if not clip.path.is_file():
        raise ValueError(f"missing audio file {clip.path}")
    try:
        info = sf.info(str(clip.path))
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise ValueError(f"unreadable audio file {clip.path}: {error}") from error
    if clip.sample_rate is not None and clip.sample_rate != info.samplerate:
        raise ValueError(
            f"'sample_rate' is {clip.sample_rate} but {clip.path} is at {info.samplerate} Hz"
        )
    try:
        wave = load_audio(clip.path, info.samplerate)
    except AudioError as error:
        raise ValueError(f"unreadable audio: {error}") from error
    if float(np.max(np.abs(wave))) < SILENCE_PEAK:
        raise ValueError(f"silent audio file {clip.path} (peak below -80 dBFS)")


def read_manifest(
    path: str | os.PathLike,
    on_error: Literal["skip", "raise"] = "skip",
    check_audio: bool = True,
) -> Manifest:
    """Read and validate a manifest.

    Each bad row (invalid JSON, missing or mistyped field, no labels, and with
    `check_audio`: missing file, unreadable audio, silent clip) either raises a
    ManifestError naming file:line (`on_error="raise"`) or is skipped with a logged
    warning and collected in `Manifest.problems` (`on_error="skip"`). Blank lines
    are ignored. `check_audio=False` only checks the fields, for large manifests.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    path = Path(path)
    root = path.resolve().parent
    clips: list[Clip] = []
    problems: list[BadRow] = []
    with open(path, encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as error:
                    raise ValueError(f"invalid JSON: {error}") from error
                clip = _row_to_clip(row, root)
                if check_audio:
                    _check_audio(clip)
            except ValueError as error:
                problem = BadRow(path, number, str(error))
                if on_error == "raise":
                    raise ManifestError(str(problem)) from error
                log.warning("skipping manifest row %s", problem)
                problems.append(problem)
                continue
            clips.append(clip)
    return Manifest(path=path, clips=clips, problems=problems)


def write_manifest(path: str | os.PathLike, clips: Iterable[Clip]) -> Path:
    """Write clips as JSON Lines atomically (temp file + rename); returns the path.

    Clip paths under the manifest's folder are written relative to it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.resolve().parent
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for clip in clips:
                out.write(json.dumps(clip.to_row(root), ensure_ascii=False) + "\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path

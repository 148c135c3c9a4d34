"""The demo scene: a mixture of held-out clips of a few keyword classes, with its reference sources.

`build_demo` takes the clips of each class from one split of a manifest, joins them end to end from a random
point of the first (short fades at the joins, the clips reused in turn when they are too few) to the wanted
length, brings each source to one loudness and then to a level drawn within a few dB of it, and writes

    OUT/mixture.flac            the sum of the sources
    OUT/sources/<class>.flac    one reference per class
    OUT/demo.json               sample rate, sources (clips, gains, levels), the queries and their sources

All files are 16-bit mono FLAC at 44.1 kHz. The sources are rounded to 16 bits first and the mixture is their
integer sum, so the files add up exactly; one gain applied to all of them keeps every peak at or below `PEAK`.
`hybridsep demo` (hybridsep_rt/demo.py) separates the mixture with each query and scores it on the references.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile as sf

from hybridsep_rt.atomic import atomic_path, atomic_write_text
from hybridsep_rt.demo import DEMO_FILE, DEMO_FORMAT, DEMO_VERSION
from hybridsep_rt.separate import slug
from training.data.audio import AudioError, load_audio
from training.data.generation import SAMPLE_RATE
from training.data.manifest import Clip, read_manifest

MIXTURE_FILE = "mixture.flac"
SOURCES_FOLDER = "sources"

LEVEL_DB = -26.0  # loudness each source is first brought to (gated RMS, dBFS)
LEVEL_SPREAD_DB = 3.0  # then offset by a level drawn uniformly in +-3 dB: every source within a few dB of the rest
PEAK = 0.99  # largest sample of the mixture and of every source; all are scaled together when one exceeds it
JOIN_FADE_SECONDS = 0.02  # fade out and in where two clips of one source meet
# Loudness gating after ITU-R BS.1770-4 (without its K-weighting filter): 400 ms blocks every 100 ms, blocks below
# -70 dBFS dropped, then blocks more than 10 dB below the mean of the rest.
GATE_BLOCK_SECONDS = 0.4
GATE_STEP_SECONDS = 0.1
ABSOLUTE_GATE_DB = -70.0
RELATIVE_GATE_DB = -10.0
PCM16_SCALE = 32768  # a 16-bit sample k reads back as k / 32768


class DemoError(ValueError):
    """The demo scene cannot be built from the given manifest, split and classes."""


@dataclass
class DemoSource:
    """One source of the scene: its class, the clips it is made of and the gain that set its level."""

    name: str
    wave: np.ndarray  # float64 (samples,)
    clips: list[dict]
    gain_db: float = 0.0


def gated_level_db(wave: np.ndarray, sample_rate: int) -> float:
    """Loudness of a wave in dBFS: the mean power of its gated blocks (GATE_* above), -inf when all is silent."""
    wave = np.asarray(wave, dtype=np.float64)
    block = min(int(round(GATE_BLOCK_SECONDS * sample_rate)), wave.shape[0])
    step = max(1, int(round(GATE_STEP_SECONDS * sample_rate)))
    starts = np.arange(0, wave.shape[0] - block + 1, step)
    powers = np.array([np.mean(wave[start : start + block] ** 2) for start in starts])
    powers = powers[powers > 10.0 ** (ABSOLUTE_GATE_DB / 10.0)]
    if powers.size == 0:
        return float("-inf")
    powers = powers[powers > np.mean(powers) * 10.0 ** (RELATIVE_GATE_DB / 10.0)]
    return float(10.0 * np.log10(np.mean(powers)))


def class_clips(clips: Sequence[Clip], classes: Sequence[str]) -> dict[str, list[Clip]]:
    """The clips of each class: those carrying the class's keyword and none of the other classes' (keywords
    compared case-insensitively), so that each query names one source only."""
    wanted = {name.strip().lower() for name in classes}
    found = {name: [] for name in classes}
    for clip in clips:
        carried = {keyword.lower() for keyword in clip.keywords} & wanted
        if len(carried) == 1:
            key = carried.pop()
            found[next(name for name in classes if name.strip().lower() == key)].append(clip)
    return found


def join_clips(waves: Sequence[np.ndarray], samples: int, sample_rate: int,
               start: int = 0) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Join waves end to end, from sample `start` of the first and reusing them in turn, until `samples` long;
    fades of JOIN_FADE_SECONDS smooth each join. Returns the wave (float64) and, per piece, (index into
    `waves`, first sample used, samples used)."""
    if not waves or any(len(wave) == 0 for wave in waves) or not 0 <= start < len(waves[0]):
        raise ValueError("join_clips needs one or more non-empty waves and a start inside the first")
    fade = int(round(JOIN_FADE_SECONDS * sample_rate))
    pieces, used, have = [], [], 0
    while have < samples:
        index = len(pieces) % len(waves)
        first = start if not pieces else 0
        piece = np.array(waves[index][first : first + samples - have], dtype=np.float64)
        if pieces:
            ramp = np.linspace(0.0, 1.0, min(fade, piece.shape[0], pieces[-1].shape[0]))
            piece[: ramp.shape[0]] *= ramp
            pieces[-1][pieces[-1].shape[0] - ramp.shape[0] :] *= ramp[::-1]
        pieces.append(piece)
        used.append((index, first, piece.shape[0]))
        have += piece.shape[0]
    return np.concatenate(pieces), used


def _source(name: str, clips: list[Clip], samples: int, rng: np.random.Generator, root: Path,
            load: Callable[[Clip], np.ndarray]) -> DemoSource:
    """One class's source, brought to LEVEL_DB: its clips in a random order, from a random point of the first (so
    that the sources' joins fall at different times)."""
    order = [clips[int(i)] for i in rng.permutation(len(clips))]
    waves = []
    for clip in order:
        try:
            waves.append(np.asarray(load(clip), dtype=np.float64))
        except (AudioError, OSError) as error:
            raise DemoError(f"class {name!r}: {error}") from None
        if waves[-1].ndim != 1 or waves[-1].shape[0] == 0:
            raise DemoError(f"class {name!r}: {clip.path} holds no mono samples")
    wave, used = join_clips(waves, samples, SAMPLE_RATE, start=int(rng.integers(waves[0].shape[0])))
    level = gated_level_db(wave, SAMPLE_RATE)
    if not np.isfinite(level):
        raise DemoError(f"class {name!r}: its clips are silent")
    gain_db = LEVEL_DB - level
    pieces, offset = [], 0
    for index, first, count in used:
        pieces.append({"path": order[index].to_row(root)["path"], "offset": round(offset / SAMPLE_RATE, 6),
                       "start": round(first / SAMPLE_RATE, 6), "seconds": round(count / SAMPLE_RATE, 6)})
        offset += count
    return DemoSource(name, wave * 10.0 ** (gain_db / 20.0), pieces, gain_db)


def _write_pcm16(path: Path, samples: np.ndarray) -> None:
    """Write int16 samples (samples,) as a mono 16-bit FLAC, atomically and without conversion."""
    with atomic_path(path, suffix=".flac") as temp:
        sf.write(str(temp), samples.astype(np.int16), SAMPLE_RATE, subtype="PCM_16", format="FLAC")


def build_demo(manifest: str | os.PathLike, split: str, classes: Sequence[str], seconds: float, seed: int,
               out: str | os.PathLike, queries: Sequence[str] | None = None,
               load: Callable[[Clip], np.ndarray] | None = None) -> Path:
    """Build the demo scene in `out` (see the module docstring); returns the path of demo.json.

    `queries` (default: every class) are class names; each query's text is its class. `load(clip)` returns a
    clip as float (samples,) at 44.1 kHz (default: read its file). Raises DemoError on bad arguments, classes
    without clips in the split, unreadable or silent clips.
    """
    classes = [name.strip() for name in classes]
    if not classes or len({name.lower() for name in classes}) != len(classes) or not all(classes):
        raise DemoError(f"the classes must be distinct and non-empty, got {list(classes)}")
    if len({slug(name) for name in classes}) != len(classes) or not all(slug(name) for name in classes):
        raise DemoError(f"the classes need distinct file names (letters or digits), got {list(classes)}")
    queries = classes if queries is None else [name.strip() for name in queries]
    by_key = {name.lower(): name for name in classes}
    unknown = [query for query in queries if query.lower() not in by_key]
    if unknown or not queries or len({q.lower() for q in queries}) != len(queries):
        raise DemoError(f"the queries must be distinct classes of {classes}, got {list(queries)}")
    samples = int(round(seconds * SAMPLE_RATE))
    if not samples > 0:
        raise DemoError(f"the length must be positive, got {seconds} s")
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DemoError(f"manifest not found: {manifest}")
    clips = read_manifest(manifest, check_audio=False).split(split)
    found = class_clips(clips, classes)
    missing = [name for name, chosen in found.items() if not chosen]
    if missing:
        raise DemoError(f"split {split!r} of {manifest} has no clips of {', '.join(map(repr, missing))} (clips "
                        f"carrying another of the classes do not count)")

    rng = np.random.default_rng(seed)
    root = manifest.resolve().parent
    load = load or (lambda clip: load_audio(clip.path, SAMPLE_RATE))
    sources = [_source(name, found[name], samples, rng, root, load) for name in classes]
    for source in sources:
        offset_db = float(rng.uniform(-LEVEL_SPREAD_DB, LEVEL_SPREAD_DB))
        source.wave *= 10.0 ** (offset_db / 20.0)
        source.gain_db += offset_db
    mixture = np.sum([source.wave for source in sources], axis=0)
    peak = max(float(np.max(np.abs(wave))) for wave in [mixture, *(source.wave for source in sources)])
    if peak > PEAK:
        for source in sources:
            source.wave *= PEAK / peak
            source.gain_db += 20.0 * np.log10(PEAK / peak)
    return _write_demo(Path(out), sources, queries, by_key, manifest, split, seed)


def _write_demo(out: Path, sources: list[DemoSource], queries: list[str], by_key: dict[str, str],
                manifest: Path, split: str, seed: int) -> Path:
    """Round the sources to 16 bits, write them, their integer sum as the mixture, and demo.json."""
    rounded = [np.round(source.wave * PCM16_SCALE).astype(np.int32) for source in sources]
    files = {}
    for source, samples in zip(sources, rounded):
        files[source.name] = f"{SOURCES_FOLDER}/{slug(source.name)}.flac"
        _write_pcm16(out / files[source.name], samples)
    _write_pcm16(out / MIXTURE_FILE, np.sum(rounded, axis=0))
    description = {
        "format": DEMO_FORMAT,
        "version": DEMO_VERSION,
        "sample_rate": SAMPLE_RATE,
        "samples": int(rounded[0].shape[0]),
        "seconds": round(rounded[0].shape[0] / SAMPLE_RATE, 6),
        "mixture": MIXTURE_FILE,
        "built_from": {"manifest": manifest.as_posix(), "split": split, "seed": seed},
        "sources": [
            {"name": source.name, "file": files[source.name], "gain_db": round(source.gain_db, 3),
             "level_db": round(gated_level_db(samples / PCM16_SCALE, SAMPLE_RATE), 3), "clips": source.clips}
            for source, samples in zip(sources, rounded)
        ],
        "queries": [{"text": by_key[query.lower()], "source": by_key[query.lower()]} for query in queries],
    }
    path = out / DEMO_FILE
    atomic_write_text(path, json.dumps(description, indent=2) + "\n")
    return path

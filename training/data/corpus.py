"""Build a labelled training corpus locally: no downloads, deterministic for a seed.

Three generators, one sound class per clip, each clip labelled with keywords and
templated captions:

- instruments (training.data.midi): MIDI written here (melodies, chords, strumming, arpeggios,
  bass lines, riffs, drum grooves in a random key, mode, tempo and register), rendered by the
  fluidsynth CLI with a General MIDI soundfont, one instrument family per clip;
- speech (training.data.speech): espeak-ng in English (British and American), German, French,
  Spanish and Italian, with its male (m1-m7) and female (f1-f5) voice variants, random pitch,
  speed and sentences;
- sounds (training.data.sounds): numpy synthesis of sirens, beeping alarms, engines, rain, wind,
  telephone rings and ticking clocks.

Clips are 10 s of 44.1 kHz mono FLAC. The out folder holds

    corpus.json           the seed and soundfont the corpus is built with
    train/ valid/ test/   the clips, about 80/10/10
    manifest.jsonl        one row per clip (see training.data.manifest)

Each clip's generator is seeded from (seed, split, index), so splits never share a seed;
the class of clip `index` in a split cycles through a per-split permutation of the classes,
so classes are balanced to within one clip per split. A rerun with the same arguments skips
the clips already written (each is written atomically) and rewrites the manifest; a larger
`hours` extends a corpus without changing the clips it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from hybridsep_rt.atomic import atomic_write_text
from training.data.audio import fit_length, write_audio
from training.data.generation import CLIP_SAMPLES, CLIP_SECONDS, SAMPLE_RATE, CorpusError
from training.data.manifest import CLIP_PEAK, SILENCE_PEAK, SPLITS, Clip, write_manifest
from training.data.midi import FLUIDSYNTH, INSTRUMENTS, describe_instrument, find_soundfont, render_instrument
from training.data.sounds import SOUNDS, describe_sound, render_sound
from training.data.speech import ESPEAK, describe_speech, render_speech

HELD_OUT_FRACTION = 0.1  # of the clips go to each of valid and test; the rest to train
FADE_SECONDS = 0.02  # fade-out at the cut end of a clip
CORPUS_FORMAT = 1  # bump when a change alters the audio a seed produces
MANIFEST_NAME = "manifest.jsonl"
STAMP_NAME = "corpus.json"
SPLIT_IDS = {split: number for number, split in enumerate(SPLITS)}
CLIP_STREAM, ORDER_STREAM = 0, 1  # first seed word after `seed`: keeps the two kinds of stream apart


@dataclass(frozen=True)
class Category:
    """One sound class of the corpus."""

    name: str
    keywords: tuple[str, ...]
    generator: str  # "instrument" | "speech" | "sound"

    @property
    def source(self) -> str:
        return {"instrument": FLUIDSYNTH, "speech": ESPEAK, "sound": "numpy"}[self.generator]


CATEGORIES = (
    tuple(Category(instrument.keyword, (instrument.keyword,), "instrument") for instrument in INSTRUMENTS)
    + (Category("man", ("speech", "man speaking"), "speech"),
       Category("woman", ("speech", "woman speaking"), "speech"))
    + tuple(Category(keyword, (keyword,), "sound") for keyword in SOUNDS)
)


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip, drawn from its seed."""

    split: str
    index: int
    category: Category
    seed_words: tuple[int, ...]  # the SeedSequence entropy the clip was drawn from
    params: dict
    captions: tuple[str, ...]

    @property
    def relative_path(self) -> Path:
        return Path(self.split) / f"{self.index:06d}_{self.category.name.replace(' ', '-')}.flac"

    def clip(self, out_dir: Path) -> Clip:
        return Clip(path=Path(out_dir) / self.relative_path, keywords=list(self.category.keywords),
                    captions=list(self.captions), source=self.category.source, split=self.split,
                    duration=CLIP_SECONDS, sample_rate=SAMPLE_RATE)


def clip_count(hours: float) -> int:
    """The number of CLIP_SECONDS clips in `hours`, rounded."""
    return round(hours * 3600.0 / CLIP_SECONDS)


def split_sizes(total: int) -> dict[str, int]:
    """Clips per split: HELD_OUT_FRACTION each to valid and test (at least one), the rest to train."""
    held_out = max(1, round(total * HELD_OUT_FRACTION))
    if total - 2 * held_out < 1:
        raise ValueError(f"{total} clips cannot fill three splits; ask for more hours")
    return {"train": total - 2 * held_out, "valid": held_out, "test": held_out}


def describe(category: Category, rng: np.random.Generator) -> tuple[dict, list[str]]:
    """Draw a clip of `category`: its generator's parameters and its captions."""
    if category.generator == "instrument":
        return describe_instrument(category.name, rng)
    if category.generator == "speech":
        return describe_speech(category.name, rng)
    return describe_sound(category.name, rng)


def plan_corpus(hours: float, seed: int) -> list[ClipPlan]:
    """The clips of a corpus of `hours` (10 s each), in split order."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    plans = []
    for split, size in split_sizes(clip_count(hours)).items():
        split_id = SPLIT_IDS[split]
        order = np.random.default_rng([seed, ORDER_STREAM, split_id]).permutation(len(CATEGORIES))
        for index in range(size):
            category = CATEGORIES[int(order[index % len(CATEGORIES)])]
            seed_words = (seed, CLIP_STREAM, split_id, index)
            params, captions = describe(category, np.random.default_rng(list(seed_words)))
            plans.append(ClipPlan(split, index, category, seed_words, params, tuple(captions)))
    return plans


def synthesize(plan: ClipPlan, soundfont: Path) -> np.ndarray:
    """The clip's audio: float32 (CLIP_SAMPLES,), peak-normalised to CLIP_PEAK."""
    with tempfile.TemporaryDirectory(prefix="corpus-") as workdir:
        if plan.category.generator == "instrument":
            wave = render_instrument(plan.params, soundfont, Path(workdir))
        elif plan.category.generator == "speech":
            wave = render_speech(plan.params, Path(workdir))
        else:
            wave = render_sound(plan.category.name, plan.params)
    wave = fit_length(np.asarray(wave, dtype=np.float64), CLIP_SAMPLES)
    fade = int(FADE_SECONDS * SAMPLE_RATE)
    wave[-fade:] *= np.linspace(1.0, 0.0, fade)
    peak = float(np.max(np.abs(wave)))
    if not np.isfinite(peak) or peak < SILENCE_PEAK:
        raise CorpusError(f"{plan.relative_path} rendered as silence or NaN (peak {peak}): {plan.params}")
    return (wave * (CLIP_PEAK / peak)).astype(np.float32)


def render_clip(plan: ClipPlan, out_dir: Path, soundfont: Path) -> bool:
    """Write the clip unless it exists; returns whether it was written."""
    path = Path(out_dir) / plan.relative_path
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_audio(path, synthesize(plan, soundfont), SAMPLE_RATE)
    return True


def _require_tools(plans: Sequence[ClipPlan]) -> None:
    needed = {plan.category.source for plan in plans}
    for tool in (FLUIDSYNTH, ESPEAK):
        if tool in needed and shutil.which(tool) is None:
            raise CorpusError(f"`{tool}` is not on PATH: install it with `apt-get install {tool}`")


def _claim(out_dir: Path, seed: int, soundfont: Path) -> None:
    """Record what the folder is built with; refuse a folder built with something else."""
    stamp = {"format": CORPUS_FORMAT, "seed": seed, "soundfont": soundfont.name,
             "sample_rate": SAMPLE_RATE, "clip_seconds": CLIP_SECONDS}
    path = out_dir / STAMP_NAME
    if path.exists():
        found = json.loads(path.read_text())
        if found != stamp:
            raise CorpusError(f"{out_dir} holds a corpus built with {found}, not {stamp}: use another --out")
        return
    atomic_write_text(path, json.dumps(stamp, indent=2) + "\n")


def build_corpus(
    out_dir: str | os.PathLike,
    hours: float,
    seed: int,
    soundfont: str | os.PathLike | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Build (or finish) the corpus in `out_dir`; returns the manifest's path.

    `workers` processes render clips in parallel (default: one per CPU core).
    """
    out_dir = Path(out_dir)
    soundfont = find_soundfont(soundfont)
    plans = plan_corpus(hours, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim(out_dir, seed, soundfont)
    for split in SPLITS:
        (out_dir / split).mkdir(exist_ok=True)
        # Hidden ".<clip>.flac.<random>" files are temporaries of atomic writes an interrupted run left.
        for leftover in (out_dir / split).glob(".*.flac.*"):
            leftover.unlink()
    pending = [plan for plan in plans if not (out_dir / plan.relative_path).exists()]
    _require_tools(pending)
    workers = max(1, workers or os.cpu_count() or 1)
    with tqdm(total=len(plans), initial=len(plans) - len(pending), unit="clip", desc="corpus",
              disable=not progress) as bar:
        if workers == 1 or len(pending) < 2:
            for plan in pending:
                render_clip(plan, out_dir, soundfont)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(render_clip, plan, out_dir, soundfont) for plan in pending]
                try:
                    for future in as_completed(futures):
                        future.result()
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    return write_manifest(out_dir / MANIFEST_NAME, [plan.clip(out_dir) for plan in plans])

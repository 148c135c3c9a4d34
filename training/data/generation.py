"""What the clip generators (midi, speech, sounds) share: the clip format, the error they raise,
the random draws of a clip's labels, and running an external renderer.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np

from training.data.audio import AudioError, load_audio

SAMPLE_RATE = 44100  # paper 3.1: "resampled to 44.1kHz"
CLIP_SECONDS = 10.0  # paper 3.1: "10s chunk size audio"
CLIP_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)


class CorpusError(RuntimeError):
    """The corpus cannot be built: a missing tool or soundfont, or a clip that renders badly."""


def pick(rng: np.random.Generator, items: Sequence):
    """One item of `items`, drawn uniformly."""
    return items[int(rng.integers(len(items)))]


def with_article(noun: str) -> str:
    """ "a piano", "an organ"."""
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def draw_captions(templates: Sequence[str], fields: dict, rng: np.random.Generator, count: int = 3) -> list[str]:
    """`count` distinct captions from randomly chosen templates filled with `fields`."""
    chosen = rng.permutation(len(templates))[:count]
    captions = [templates[int(index)].format(**fields) for index in chosen]
    return list(dict.fromkeys(captions))


def run_renderer(command: Sequence[str], wav: Path, shown: str) -> np.ndarray:
    """Run a command-line renderer that writes `wav`; its audio as float32 mono (samples,) at SAMPLE_RATE.

    `shown` is the command as error messages print it. Raises CorpusError when the renderer fails.
    """
    done = subprocess.run(list(command), capture_output=True, text=True)
    if done.returncode != 0 or not wav.is_file():
        raise CorpusError(f"{command[0]} failed ({shown}): {done.stderr.strip()}")
    try:
        return load_audio(wav, SAMPLE_RATE)
    except AudioError as error:
        raise CorpusError(f"{command[0]} wrote unusable audio ({shown}): {error}") from error

"""A small labelled corpus of synthetic clips for training tests (tones, chords and noises, 2 s at 44.1 kHz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.audio import write_audio
from training.data.manifest import Clip, write_manifest

SR = 44100
CLASSES = {
    "sine tone": "a steady sine tone",
    "chord": "a major chord held",
    "noise": "hissing white noise",
    "beeping": "short beeps repeating",
    "low hum": "a low humming engine",
    "chirp": "a rising chirp",
}


def synth(kind: str, rng: np.random.Generator, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f = rng.uniform(200, 800)
    if kind == "sine tone":
        x = np.sin(2 * np.pi * f * t)
    elif kind == "chord":
        x = sum(np.sin(2 * np.pi * f * r * t) for r in (1, 1.26, 1.5))
    elif kind == "noise":
        x = rng.standard_normal(t.shape)
    elif kind == "beeping":
        x = np.sin(2 * np.pi * 2 * f * t) * (np.sin(2 * np.pi * 4 * t) > 0)
    elif kind == "low hum":
        x = np.sin(2 * np.pi * 60 * t) + 0.5 * np.sin(2 * np.pi * 120 * t)
    else:
        x = np.sin(2 * np.pi * (f + 400 * t) * t)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def make_manifest(folder: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    per_class = per_class or {"train": 3, "valid": 1, "test": 1}
    rng = np.random.default_rng(seed)
    clips = []
    for split, count in per_class.items():
        for kind, caption in CLASSES.items():
            for i in range(count):
                path = folder / split / f"{kind.replace(' ', '_')}_{i}.flac"
                write_audio(path, synth(kind, rng), SR)
                clips.append(Clip(path=path, keywords=[kind], captions=[caption], source="synthetic", split=split))
    return write_manifest(folder / "manifest.jsonl", clips)

"""Single clips with a text, for the contrastive audio-text training of stage 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.data.manifest import Manifest, read_manifest
from training.data.mixer import Mixer, MixerConfig, join_keywords


class ClipTextDataset(torch.utils.data.Dataset):
    """Item i: a non-silent segment of clip (i mod n) of one split, and one text for it: one of its captions or
    its keywords joined into a phrase, drawn at random. Draws are seeded from (seed, i).
    ``weak_labels`` (one list per clip of the split, `training.data.weak_labels`): with probability ``weak_share``
    the text is one of the clip's weak labels instead, when it has any.
    Items: {"audio": float32 (samples,), "text": str, "clip": int (the clip's position in the split)}.
    """

    def __init__(self, manifest: str | Path | Manifest, split: str, sample_rate: int, seed: int = 0,
                 segment_seconds: float = 10.0, length: int | None = None,
                 weak_labels: list[list[str]] | None = None, weak_share: float = 0.0):
        if not isinstance(manifest, Manifest):
            manifest = read_manifest(manifest, check_audio=False)
        self.clips = manifest.split(split)
        if not self.clips:
            raise ValueError(f"manifest {manifest.path} has no clips in split {split!r}")
        self.mixer = Mixer(self.clips, MixerConfig(sample_rate=sample_rate, segment_seconds=segment_seconds))
        self.seed = seed
        self.length = len(self.clips) if length is None else length
        if weak_labels is not None and len(weak_labels) != len(self.clips):
            raise ValueError(f"weak_labels has {len(weak_labels)} lists for {len(self.clips)} clips")
        self.weak_labels = weak_labels
        self.weak_share = weak_share

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        rng = np.random.default_rng([self.seed, index])
        position = index % len(self.clips)
        clip = self.clips[position]
        segment = self.mixer.segment(clip, rng)
        if segment is None:
            raise ValueError(f"{clip.path}: every drawn segment is silent; remove the clip from the manifest")
        texts = list(clip.captions) + ([join_keywords(clip.keywords)] if clip.keywords else [])
        weak = self.weak_labels[position] if self.weak_labels else []
        if weak and rng.random() < self.weak_share:
            texts = weak
        text = texts[int(rng.integers(len(texts)))]
        return {"audio": torch.from_numpy(segment.astype(np.float32)), "text": text, "clip": position}

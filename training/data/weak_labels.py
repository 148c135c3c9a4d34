"""Weak labels: the AudioSet classes YAMNet hears in a clip with confidence, as extra texts for the clip.

Stage 0 aligns the compact encoder's text and audio towers on the corpus's own labels; a corpus has a few dozen
classes, AudioSet 521. Giving a clip YAMNet's confident AudioSet class names as further texts ties the text tower's
view of those names to audio that sounds like them, so a query for a sound outside the corpus's classes ("a cat
meowing" when the corpus only says "animal") lands near the right audio.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from hybridsep_rt.atomic import atomic_write_text
from training.data.audio import AudioError, load_audio
from training.data.manifest import Clip

# A class is a weak label of a clip when YAMNet's score for it, averaged over the clip's 0.32 s cells, reaches this;
# at most MAX_WEAK_LABELS per clip, the highest first. Not from a paper: YAMNet's scores are per-class sigmoids,
# 0.5 is where a tag is more likely on than off.
WEAK_LABEL_THRESHOLD = 0.5
MAX_WEAK_LABELS = 3


@torch.no_grad()
def clip_scores(yamnet, wave16k: np.ndarray) -> np.ndarray:
    """(N,) 16 kHz wave -> (521,) YAMNet's scores averaged over the clip's cells."""
    _, logits = yamnet(torch.from_numpy(wave16k.astype(np.float32))[None])
    return torch.sigmoid(logits[0]).mean(dim=0).numpy()


def labels_from_scores(scores: np.ndarray, class_names: Sequence[str], threshold: float = WEAK_LABEL_THRESHOLD,
                       limit: int = MAX_WEAK_LABELS) -> list[str]:
    """The names of the classes scored >= threshold, the highest first, at most ``limit``."""
    order = np.argsort(-scores)[:limit]
    return [class_names[i] for i in order if scores[i] >= threshold]


def weak_labels(clips: Sequence[Clip], cache: Path | None = None, threshold: float = WEAK_LABEL_THRESHOLD,
                progress: bool = True) -> list[list[str]]:
    """Each clip's weak labels (a list per clip, possibly empty). ``cache``: a JSON file of the labels by clip path,
    reused for the clips it holds and rewritten (atomically) when clips were added."""
    from training.models.yamnet import SAMPLE_RATE, WEIGHTS_SHA256, YAMNet

    key = {"yamnet": WEIGHTS_SHA256, "threshold": threshold, "limit": MAX_WEAK_LABELS}
    known: dict[str, list[str]] = {}
    if cache is not None and cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            known = stored["labels"]
    missing = [clip for clip in clips if str(clip.path) not in known]
    if missing:
        yamnet = YAMNet(SAMPLE_RATE).eval()
        for clip in tqdm(missing, desc="YAMNet weak labels", unit="clip", disable=not progress):
            try:
                wave = load_audio(clip.path, SAMPLE_RATE)
            except AudioError:
                known[str(clip.path)] = []  # the data loader reports unreadable clips itself
                continue
            known[str(clip.path)] = labels_from_scores(clip_scores(yamnet, wave), yamnet.class_names, threshold)
        if cache is not None:
            atomic_write_text(cache, json.dumps({"key": key, "labels": known}))
    return [known[str(clip.path)] for clip in clips]

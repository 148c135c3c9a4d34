"""Which YAMNet layer feeds the ASM's SSL slot: a linear probe of each layer's frame features, aligned to the ASM's
STFT frames by their centre times, that names the louder source of every frame in 2-source mixtures whose sources
switch on and off every 0.1-0.6 s, so that both what a layer knows and how finely it resolves time count.

    .venv/bin/python scripts/probe_yamnet_layers.py MANIFEST --layers 5 7 9 11 12 13 14 -o probe.json

Prints and writes {layer: frame accuracy on mixtures of valid clips} (train-clip mixtures fit the probe).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from training.data.audio import load_audio
from training.data.manifest import read_manifest
from training.models.frames import align_frames, stft_frame_centres
from training.models.yamnet import YAMNet, frame_centre_seconds

SAMPLE_RATE = 44100
SECONDS = 4.0
ASM_HOP_SECONDS = 512 * 4 / SAMPLE_RATE  # the small preset's STFT hop on its 4 PQMF subbands
GATE_SECONDS = (0.1, 0.6)
PROBE_STEPS = 1500


def gate(samples: int, rng: np.random.Generator) -> np.ndarray:
    """On/off runs of 0.1-0.6 s."""
    out, start, on = np.zeros(samples, np.float32), 0, rng.random() < 0.5
    while start < samples:
        length = int(rng.uniform(*GATE_SECONDS) * SAMPLE_RATE)
        out[start:start + length] = on
        on, start = not on, start + length
    return out


def mixtures(clips, classes: list[str], count: int, samples: int, frames: int, rng: np.random.Generator):
    """(mixture, per-frame label) pairs: label = class of the louder source, or len(classes) where both are quiet."""
    waves, out = {}, []
    while len(out) < count:
        a, b = rng.choice(len(clips), 2, replace=False)
        if clips[a].keywords[0] == clips[b].keywords[0]:
            continue
        sources = []
        for i in (a, b):
            wave = waves.setdefault(i, load_audio(clips[i].path, SAMPLE_RATE))
            start = rng.integers(0, max(1, len(wave) - samples))
            piece = np.pad(wave[start:start + samples], (0, max(0, samples - len(wave[start:start + samples]))))
            sources.append(piece * gate(samples, rng) * 10 ** (rng.uniform(-6, 6) / 20))
        centres = (np.arange(frames) * ASM_HOP_SECONDS * SAMPLE_RATE).astype(int)
        energy = [np.array([np.sum(s[max(0, c - 1024):c + 1024] ** 2) for c in centres]) for s in sources]
        label = np.where(energy[0] > energy[1], classes.index(clips[a].keywords[0]), classes.index(clips[b].keywords[0]))
        label = np.where(np.maximum(*energy) < 1e-4, len(classes), label)
        mixture = sources[0] + sources[1]
        out.append(((0.9 * mixture / max(1e-6, np.abs(mixture).max())).astype(np.float32), label))
    return out


def features(yamnet: YAMNet, data, layer: int, centres: np.ndarray) -> torch.Tensor:
    batches = []
    with torch.no_grad():
        for i in range(0, len(data), 16):
            waves = torch.from_numpy(np.stack([wave for wave, _ in data[i:i + 16]]))
            batches.append(align_frames(yamnet.frame_features(waves, layer), *frame_centre_seconds(layer), centres))
    return torch.cat(batches)


def probe_accuracy(train: torch.Tensor, train_labels: torch.Tensor, valid: torch.Tensor, valid_labels: torch.Tensor,
                   classes: int) -> float:
    mean, std = train.mean((0, 1)), train.std((0, 1)) + 1e-5
    x, y = ((train - mean) / std).reshape(-1, train.shape[-1]), train_labels.reshape(-1)
    probe = torch.nn.Linear(x.shape[-1], classes)
    optimiser = torch.optim.Adam(probe.parameters(), 3e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(PROBE_STEPS):
        pick = torch.randint(0, len(x), (1024,), generator=generator)
        loss = torch.nn.functional.cross_entropy(probe(x[pick]), y[pick])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return float((probe((valid - mean) / std).argmax(-1) == valid_labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--layers", type=int, nargs="+", default=[5, 7, 9, 11, 12, 13, 14])
    parser.add_argument("--train-mixtures", type=int, default=600)
    parser.add_argument("--valid-mixtures", type=int, default=150)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    manifest = read_manifest(args.manifest, check_audio=False)
    classes = sorted({clip.keywords[0] for clip in manifest.clips if clip.keywords})
    samples = int(SECONDS * SAMPLE_RATE) // 2048 * 2048
    frames = samples // 4 // 512 + 1
    centres = stft_frame_centres(frames, ASM_HOP_SECONDS)
    labelled = lambda split: [c for c in manifest.split(split) if c.keywords]  # noqa: E731
    train = mixtures(labelled("train"), classes, args.train_mixtures, samples, frames, rng)
    valid = mixtures(labelled("valid"), classes, args.valid_mixtures, samples, frames, rng)
    train_labels = torch.from_numpy(np.stack([label for _, label in train])).long()
    valid_labels = torch.from_numpy(np.stack([label for _, label in valid])).long()
    yamnet = YAMNet(SAMPLE_RATE, classifier=False).eval()
    results = {}
    for layer in args.layers:
        accuracy = probe_accuracy(features(yamnet, train, layer, centres), train_labels,
                                  features(yamnet, valid, layer, centres), valid_labels, len(classes) + 1)
        results[layer] = accuracy
        print(f"layer {layer:2d}  cells every {frame_centre_seconds(layer)[1] * 1000:.0f} ms  "
              f"frame accuracy {accuracy:.3f}", flush=True)
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

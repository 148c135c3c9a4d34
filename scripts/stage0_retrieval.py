"""Stage 0's figures for a trained model on any manifest split: text-to-audio recall@1/@5 and, for up to 20 AudioSet
classes that YAMNet tags the split's clips with and no keyword of the corpus (or of --trained-on) names, how often the class name as a text
query ranks a clip so tagged first (hit@1) or in its top 5 (hit@5).

    .venv/bin/python scripts/stage0_retrieval.py MODEL_DIR MANIFEST [--split valid] [--weak-cache FILE] [-o out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from training.data.clips import ClipTextDataset
from training.data.manifest import read_manifest
from training.data.weak_labels import weak_labels
from training.models.hybridsep import HybridSep
from training.stages import collate, open_vocabulary_classes, retrieval_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--weak-cache", type=Path, default=None, help="JSON cache of the split's YAMNet weak labels")
    parser.add_argument("--trained-on", type=Path, default=None, metavar="MANIFEST",
                        help="the model's training manifest: classes its keywords name are left out (default: those "
                             "of MANIFEST)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    model = HybridSep.from_pretrained(args.model_dir).eval()
    manifest = read_manifest(args.manifest, check_audio=False)
    clips = manifest.split(args.split)
    labels = weak_labels(clips, cache=args.weak_cache)
    dataset = ClipTextDataset(manifest, args.split, model.cfg.sample_rate, seed=1,
                              segment_seconds=model.cfg.window_seconds)
    batches = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate)
    known = None
    if args.trained_on is not None:
        known = {k for clip in read_manifest(args.trained_on, check_audio=False).clips for k in clip.keywords}
    vocabulary = open_vocabulary_classes(clips, labels, known=known)
    figures = retrieval_figures(model.clap, batches, vocabulary, torch.device("cpu"))
    figures["classes"] = {name: len(positions) for name, positions in vocabulary.items()}
    print(json.dumps(figures, indent=1))
    if args.output is not None:
        args.output.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""`hybridsep export MODEL_DIR -o BUNDLE`: a model folder (HybridSep.save_pretrained) -> a model bundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, help="folder written by HybridSep.save_pretrained")
    parser.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--fp16", action="store_true", help="also write fp16 variants of the graphs (for CUDA)")
    parser.add_argument("--audio", type=Path, default=None, metavar="CLIP",
                        help="a real clip for the parity check (default: a synthetic harmonic + noise signal)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --output")
    parser.add_argument("--evaluation", type=Path, default=None, metavar="JSON",
                        help="a JSON file of evaluation figures to record in the manifest's provenance")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and the parity check")


def run(args) -> int:
    import torch

    from export.bundle import ParityError, export_bundle
    from hybridsep_rt.audio import AudioError, read_audio, to_model_rate
    from training.models.hybridsep import HybridSep

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        evaluation = json.loads(args.evaluation.read_text()) if args.evaluation else None
        if evaluation is not None and not isinstance(evaluation, dict):
            raise ValueError(f"{args.evaluation} must hold a JSON object")
        model = HybridSep.from_pretrained(args.model_dir)
        audio = None
        if args.audio is not None:
            clip, rate = read_audio(args.audio)
            audio = to_model_rate(clip, rate, model.cfg.sample_rate)
        export_bundle(model, args.output, fp16=args.fp16, parity_audio=audio, overwrite=args.overwrite,
                      evaluation=evaluation, threads=args.threads)
    except (ParityError, AudioError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"hybridsep export: error: {e}", file=sys.stderr)
        return 2
    return 0

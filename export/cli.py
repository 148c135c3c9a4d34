"""`hybridsep export MODEL_DIR -o BUNDLE`: a model folder (HybridSep.save_pretrained) -> a model bundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, help="folder written by HybridSep.save_pretrained (with "
                        "--add-tagger: a bundle)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="bundle folder to write")
    parser.add_argument("--add-tagger", action="store_true",
                        help="add the tagger graph (live sound tags, `hybridsep tag`) to the bundle MODEL_DIR, which "
                             "was exported without one, in place")
    parser.add_argument("--fp16", action="store_true", help="also write fp16 variants of the graphs (for CUDA)")
    parser.add_argument("--text-precision", choices=("int8", "fp32"), default="int8",
                        help="how to store the text encoder: int8 weights (float32 arithmetic, a fifth of the size; "
                             "checked against torch by cosine similarity) or fp32 (default: int8)")
    parser.add_argument("--audio", type=Path, default=None, metavar="CLIP",
                        help="a real clip for the parity check (default: a synthetic harmonic + noise signal)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --output")
    parser.add_argument("--evaluation", action="append", default=[], metavar="NAME=JSON",
                        help="a JSON file of evaluation figures (e.g. the table.json of `hybridsep eval`) to record "
                             "in the manifest's provenance under NAME; repeatable. The training runs behind "
                             "MODEL_DIR are recorded too")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and the parity check")


def read_evaluation(item: str) -> tuple[str, object]:
    """--evaluation NAME=JSON -> (NAME, the file's JSON value)."""
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--evaluation takes NAME=JSON, got {item!r}")
    try:
        return name, json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the evaluation figures {path}: {e}") from e


def run(args) -> int:
    import torch

    from export.bundle import ParityError, add_tagger, export_bundle
    from hybridsep_rt.bundle import Bundle, BundleError
    from hybridsep_rt.audio import AudioError, read_audio, to_model_rate
    from training.models.hybridsep import HybridSep
    from training.trainer import training_history

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        if args.add_tagger:
            clip = None
            if args.audio is not None:
                clip, rate = read_audio(args.audio)
                clip = to_model_rate(clip, rate, Bundle.load(args.model_dir).sample_rate)
            add_tagger(args.model_dir, parity_audio=clip, threads=args.threads)
            return 0
        if args.output is None:
            raise ValueError("-o BUNDLE is required: the bundle folder to write")
        evaluation = dict(read_evaluation(item) for item in args.evaluation)
        model = HybridSep.from_pretrained(args.model_dir)
        audio = None
        if args.audio is not None:
            clip, rate = read_audio(args.audio)
            audio = to_model_rate(clip, rate, model.cfg.sample_rate)
        export_bundle(model, args.output, fp16=args.fp16, parity_audio=audio, overwrite=args.overwrite,
                      evaluation=evaluation, training=training_history(args.model_dir), threads=args.threads,
                      text_precision=args.text_precision)
    except (ParityError, BundleError, AudioError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"hybridsep export: error: {e}", file=sys.stderr)
        return 2
    return 0

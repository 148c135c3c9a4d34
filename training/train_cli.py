"""`hybridsep train stage0|stage1|stage2`: one stage of Hybrid-Sep training (see training/trainer.py)."""

from __future__ import annotations

import argparse
import dataclasses
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=["stage0", "stage1", "stage2"],
                        help="stage0: compact audio-text encoder; stage1: FE + AET; stage2: ASM + CD (ACT)")
    parser.add_argument("--config", help="a JSON file of training settings (see TrainConfig in training/trainer.py)")
    parser.add_argument("--manifest", help="the training manifest (JSON Lines) with train and valid splits")
    parser.add_argument("--out", help="output folder: checkpoint.pt, tensorboard/, model/ (default runs/train)")
    parser.add_argument("--init", help="model folder to start from (the previous stage's OUT/model)")
    parser.add_argument("--preset", help="model preset when not starting from --init (small or paper)")
    parser.add_argument("--steps", type=int, help="total steps of this stage (paper: about 60000)")
    parser.add_argument("--batch-size", type=int, help="global batch size, split over processes (paper: 128)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device (default auto)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting, e.g. --set lr=2e-4 --set model.one_stage=true (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from training.trainer import TrainConfig, train

    try:
        cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
        flags = {"stage": args.stage, "manifest": args.manifest, "out": args.out, "init": args.init,
                 "preset": args.preset, "steps": args.steps, "batch_size": args.batch_size, "device": args.device}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None}).with_overrides(args.set)
        if not cfg.manifest:
            raise ValueError("no training manifest: pass --manifest (see `hybridsep corpus build`)")
        folder = train(cfg, progress=not args.quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"hybridsep train: error: {e}", file=sys.stderr)
        return 2
    if folder is not None:
        print(folder)
    return 0

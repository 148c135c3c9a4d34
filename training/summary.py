"""`hybridsep params`: parameter counts per module for the model presets, and optional forward times."""

from __future__ import annotations

import argparse
import time

from training.config import PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", nargs="+", default=["small", "paper"], choices=sorted(PRESETS),
                        help="presets to describe (default: small paper)")
    parser.add_argument("--sample-rate", type=int, default=None, help="override the preset's sample rate")
    parser.add_argument("--time", action="store_true",
                        help="also time a forward pass of the separation path on one window (torch eager, CPU)")
    parser.add_argument("--seconds", type=float, default=None, help="window length to time (default: the preset's)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for --time (default: 2)")
    parser.add_argument("--clap", default=None, help="local CLAP folder for presets that use the 'hf' backend")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model setting, the value as JSON, e.g. --set 'aet={\"dim\": 1024}' "
                             "(repeatable)")


def count(module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    if module is None:
        return 0, 0
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return trainable, frozen


def module_counts(model, discriminator, clap_name: str) -> list[tuple[str, int, int]]:
    asm_trainable, _ = count(model.asm)
    ssl_trainable, ssl_frozen = count(model.asm.ssl)
    ssl = {"beats": "BEATs", "yamnet": f"YAMNet to layer {model.cfg.yamnet_layer}"}[model.cfg.ssl]
    rows = [
        (clap_name, *count(model.clap)),
        ("FE (2.1)", *count(model.fe)),
        ("AET (2.1)", *count(model.aet)),
        ("ASM without its SSL encoder (2.2)", asm_trainable - ssl_trainable, 0),
        (f"{ssl} (frozen SSL features, 2.2)", ssl_trainable, ssl_frozen),
        ("CD (2.2, training only)", *count(model.cd)),
        ("Discriminator (2.2, training only)", *count(discriminator)),
    ]
    return rows


def run(args) -> int:
    import torch

    from training.config import ClapSettings, get_config
    from training.models.clap import build_audio_text_encoder
    from training.models.discriminator import MultiScaleSTFTDiscriminator
    from training.models.hybridsep import HybridSep
    from training.trainer import parse_overrides

    torch.set_num_threads(args.threads)
    for preset in args.preset:
        overrides = {"sample_rate": args.sample_rate} if args.sample_rate else {}
        cfg = get_config(preset, **overrides, **parse_overrides(args.set))
        clap_name = "CLAP text+audio encoders (frozen, 2.1)"
        if cfg.clap.backend == "hf":
            if args.clap:
                cfg.clap.path = args.clap
            else:  # no LAION-CLAP / T-CLAP folder here: count and time the rest with a compact encoder
                clap_name = "compact audio-text encoder (stand-in)"
                cfg = cfg.replace(clap=ClapSettings(backend="compact"))
        model = HybridSep(cfg, clap=build_audio_text_encoder(cfg)).eval()
        disc = MultiScaleSTFTDiscriminator(cfg.discriminator)
        print(f"\npreset {preset!r} ({cfg.sample_rate} Hz, {cfg.window_seconds:g} s window, "
              f"CLAP backend {cfg.clap.backend!r})")
        print(f"  {'module':42s} {'trainable':>12s} {'frozen':>12s}")
        total = 0
        for name, trainable, frozen in module_counts(model, disc, clap_name):
            total += trainable
            print(f"  {name:42s} {trainable / 1e6:11.2f}M {frozen / 1e6:11.2f}M")
        print(f"  {'trainable total':42s} {total / 1e6:11.2f}M")
        if args.time:
            seconds = args.seconds or cfg.window_seconds
            n = int(seconds * cfg.sample_rate) // cfg.asm.subbands * cfg.asm.subbands
            mixture = 0.1 * torch.randn(1, n)
            with torch.inference_mode():
                text_emb = model.clap.embed_text(["a piano playing a melody"])
                model(mixture, text_emb)  # warm-up
                start = time.perf_counter()
                model(mixture, text_emb)
                elapsed = time.perf_counter() - start
            print(f"  forward of one {seconds:g} s window (CLAP audio + FE + AET + ASM, torch eager, "
                  f"{args.threads} threads): {elapsed:.3f} s")
    return 0

"""The `hybridsep` command: one entry point with subcommands, each importing its heavy parts lazily."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help). Each module defines `add_arguments(parser)` and `run(args) -> int | None`,
# and imports torch or Qt only inside `run`.
COMMANDS = {
    "params": ("training.summary", "print parameter counts (and forward times) of the model presets"),
    "corpus": ("training.data.corpus_cli", "build a local training corpus (instruments, speech, sounds)"),
    "export": ("export.cli", "export a trained model folder to an ONNX model bundle"),
    "separate": ("hybridsep_rt.separate", "separate an audio file by text query or example clip"),
    "stream": ("hybridsep_rt.stream", "separate live audio from an input device to an output device"),
    "devices": ("hybridsep_rt.devices", "list audio inputs and outputs (loopback sources marked)"),
    "eval": ("training.evaluate", "score model bundles on keyword and caption test sets (paper Table 2)"),
    "gui": ("gui.app", "the desktop app for live separation (PyQt6)"),
    "bench": ("export.bench", "time the model presets: torch eager vs ONNX Runtime, streaming keep-up, memory"),
    "train": ("training.train_cli", "train one stage of Hybrid-Sep (on one CPU/GPU or many with torchrun)"),
    "tag": ("hybridsep_rt.tag", "list the sounds in an audio file over time (AudioSet classes, by YAMNet)"),
    "demo": ("hybridsep_rt.demo", "separate the demo scene by its queries, draw spectrograms and score the stems"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen command's module is imported (the others are listed by name and help)."""
    parser = argparse.ArgumentParser(prog="hybridsep", description="Hybrid-Sep language-queried audio separation")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`hybridsep corpus`: build the local training corpus of training.data.corpus.

    hybridsep corpus build --out DIR --hours H --seed S [--soundfont PATH] [--workers N] [--quiet]

A rerun with the same arguments finishes an interrupted build; more hours extend it.
Errors the user can fix (a missing tool or soundfont, too few hours, a folder built with other
arguments) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.data.midi import DEFAULT_SOUNDFONT  # numpy and soundfile only, no scipy

EXIT_USAGE = 2  # argparse's exit status for a bad command line; used for every error the user can fix


def _hours(text: str) -> float:
    """--hours: a positive number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _whole_number(minimum: int):
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `build` action and its options to the `corpus` command's parser."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="render instrument, speech and sound clips and write their manifest",
        description="Render 10 s labelled clips (fluidsynth instruments, espeak-ng speech, numpy sounds) "
        "into DIR/train, DIR/valid and DIR/test (about 80/10/10) and write DIR/manifest.jsonl. "
        "The same seed always gives the same clips; a rerun skips the clips already written.",
    )
    build.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="folder to build the corpus in (created if missing)")
    build.add_argument("--hours", type=_hours, required=True, metavar="H",
                       help="total length of the corpus in hours, cut into 10 s clips (0.05 h = 18 clips)")
    build.add_argument("--seed", type=_whole_number(0), required=True, metavar="S",
                       help="seed of every random choice; a folder keeps the seed it was built with")
    build.add_argument("--soundfont", type=Path, default=None, metavar="PATH",
                       help=f"General MIDI .sf2 soundfont for the instruments (default: {DEFAULT_SOUNDFONT})")
    build.add_argument("--workers", type=_whole_number(1), default=None, metavar="N",
                       help="processes rendering clips in parallel (default: one per CPU core)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Build the corpus; returns 0, or EXIT_USAGE after printing what went wrong."""
    from training.data.corpus import CorpusError, build_corpus, clip_count, split_sizes

    try:
        split_sizes(clip_count(args.hours))
    except ValueError as error:
        return _fail(f"--hours {args.hours}: {error}")
    try:
        manifest = build_corpus(args.out, args.hours, args.seed, args.soundfont,
                                progress=not args.quiet, workers=args.workers)
    except (CorpusError, OSError) as error:
        return _fail(str(error))
    print(f"manifest: {manifest}")
    return 0


def _fail(message: str) -> int:
    print(f"hybridsep corpus build: error: {message}", file=sys.stderr)
    return EXIT_USAGE

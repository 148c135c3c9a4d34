"""`hybridsep corpus`: build the local training corpus of training.data.corpus, and the demo scene from it.

    hybridsep corpus build --out DIR --hours H --seed S [--soundfont PATH] [--workers N] [--quiet]
    hybridsep corpus real --out DIR [--packages P ...] [--rules FILE] [--workers N] [--quiet]
    hybridsep corpus audit --manifest DIR/manifest.jsonl [--out DIR] [--speech N] [--quiet]
    hybridsep corpus combine --manifest M [M ...] --out FILE
    hybridsep corpus demo --manifest M --classes C [C ...] --out DIR [--split S] [--queries C ...]
                          [--seconds T] [--seed S]

A rerun of `build` with the same arguments finishes an interrupted build; more hours extend it.
`real` harvests labelled recordings from installed Debian packages (training.data.real_corpus); a rerun
finishes an interrupted harvest.
`demo` mixes held-out clips of a few classes into the scene `hybridsep demo` separates (training.data.demo_mix).
Errors the user can fix (a missing tool or soundfont, too few hours, a folder built with other
arguments, a class without clips) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.data.manifest import SPLITS
from training.data.generation import CorpusError
from training.data.midi import DEFAULT_SOUNDFONT  # numpy and soundfile only, no scipy

EXIT_USAGE = 2  # argparse's exit status for a bad command line; used for every error the user can fix


def _positive(text: str) -> float:
    """--hours, --seconds: a positive number."""
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
    """Add the `build` and `demo` actions and their options to the `corpus` command's parser."""
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
    build.add_argument("--hours", type=_positive, required=True, metavar="H",
                       help="total length of the corpus in hours, cut into 10 s clips (0.05 h = 18 clips)")
    build.add_argument("--seed", type=_whole_number(0), required=True, metavar="S",
                       help="seed of every random choice; a folder keeps the seed it was built with")
    build.add_argument("--soundfont", type=Path, default=None, metavar="PATH",
                       help=f"General MIDI .sf2 soundfont for the instruments (default: {DEFAULT_SOUNDFONT})")
    build.add_argument("--workers", type=_whole_number(1), default=None, metavar="N",
                       help="processes rendering clips in parallel (default: one per CPU core)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_real_arguments(actions)
    audit = actions.add_parser(
        "audit", help="check the real corpus's labels against YAMNet's AudioSet tags",
        description="Tag each clip of a real-corpus manifest with YAMNet and write, per class, the share of clips "
        "whose top AudioSet tags match the class, and the clips that contradict their label strongly "
        "(label_audit.md and label_audit.json).")
    audit.add_argument("--manifest", type=Path, required=True, metavar="FILE", help="the real corpus's manifest")
    audit.add_argument("--out", type=Path, default=None, metavar="DIR",
                       help="folder for the report (default: the manifest's folder)")
    audit.add_argument("--speech", type=_whole_number(0), default=None, metavar="N",
                       help="speech clips audited per split (default: 200)")
    audit.add_argument("--quiet", action="store_true", help="no progress bar")
    combine = actions.add_parser(
        "combine", help="write one manifest holding the rows of several corpora (synthetic and real)",
        description="Write FILE with every row of the manifests, paths made absolute and each row's corpus "
        "named. Train on it with --set balance_classes=true --set speech_share=0.25 to draw targets "
        "class-balanced with at most a quarter speech.")
    combine.add_argument("--manifest", type=Path, nargs="+", required=True, metavar="M", help="the manifests")
    combine.add_argument("--out", type=Path, required=True, metavar="FILE", help="the combined manifest")
    _add_demo_arguments(actions)


def _add_real_arguments(actions) -> None:
    """The `real` action: the corpus of real recordings from Debian packages."""
    real = actions.add_parser(
        "real",
        help="harvest labelled real recordings from installed Debian packages and write their manifest",
        description="Read the recordings of the installed Debian packages that training/data/real_rules.toml "
        "knows (`make corpus-packages` installs them), label them by its rules, de-duplicate them by content "
        "and split them by family, speaker and kit into DIR/audio and DIR/manifest.jsonl. Files that cannot be "
        "decoded are reported with their path and skipped; a rerun finishes an interrupted build.",
    )
    real.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to build the corpus in")
    real.add_argument("--packages", nargs="+", default=None, metavar="PKG",
                      help="packages to read (default: every installed package the rules know)")
    real.add_argument("--rules", type=Path, default=None, metavar="FILE",
                      help="labelling rules (default: training/data/real_rules.toml)")
    real.add_argument("--workers", type=_whole_number(1), default=None, metavar="N",
                      help="processes decoding files in parallel (default: one per CPU core)")
    real.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_demo_arguments(actions) -> None:
    """The `demo` action: the mixture and references that `hybridsep demo` separates and scores."""
    demo = actions.add_parser(
        "demo",
        help="mix held-out clips of a few classes into the demo scene, with reference sources",
        description="Join clips of each class from one split to --seconds, set their levels within a few dB "
        "of each other, and write DIR/mixture.flac, DIR/sources/<class>.flac (they sum exactly to the "
        "mixture) and DIR/demo.json (the sources, their clips and gains, and the queries). 16-bit mono "
        "FLAC at 44.1 kHz; the same arguments always give the same files.",
    )
    demo.add_argument("--manifest", type=Path, required=True, metavar="FILE", help="the corpus manifest")
    demo.add_argument("--split", choices=SPLITS, default="test", help="split to take the clips from (default: test)")
    demo.add_argument("--classes", nargs="+", required=True, metavar="CLASS",
                      help="keyword classes, one source each, e.g. piano speech \"drum kit\" siren")
    demo.add_argument("--queries", nargs="+", default=None, metavar="CLASS",
                      help="the classes the demo queries for (default: every class)")
    demo.add_argument("--seconds", type=_positive, default=20.0, metavar="T",
                      help="length of the scene in seconds (default: 20)")
    demo.add_argument("--seed", type=_whole_number(0), default=0, metavar="S",
                      help="seed of the clip order and the levels (default: 0)")
    demo.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the scene to")


def run(args: argparse.Namespace) -> int:
    """Run the action; returns 0, or EXIT_USAGE after printing what went wrong."""
    if args.action == "demo":
        return _run_demo(args)
    if args.action == "real":
        return _run_real(args)
    if args.action == "audit":
        from training.data.label_audit import REPORT_NAME, SPEECH_SAMPLE, audit

        out = args.out or args.manifest.parent
        try:
            summary = audit(args.manifest, out, speech_sample=SPEECH_SAMPLE if args.speech is None else args.speech,
                            progress=not args.quiet)
        except (OSError, ValueError, KeyError) as error:
            return _fail("audit", str(error))
        for cls, item in sorted(summary.items(), key=lambda kv: -kv[1]["clips"]):
            print(f"{cls}: {item['agree']}/{item['clips']} agree, {item['flagged']} flagged")
        print(f"report: {out / REPORT_NAME}")
        return 0
    if args.action == "combine":
        from training.data.combined import combine_manifests
        from training.data.manifest import ManifestError

        try:
            print(f"manifest: {combine_manifests(args.manifest, args.out)}")
        except (ManifestError, OSError) as error:
            return _fail("combine", str(error))
        return 0
    return _run_build(args)


def _run_real(args: argparse.Namespace) -> int:
    """Build the real-recording corpus and print its splits."""
    import json

    from training.data.real_corpus import SUMMARY_NAME, build_real_corpus

    try:
        manifest = build_real_corpus(args.out, args.packages, args.rules, workers=args.workers,
                                     progress=not args.quiet)
    except (CorpusError, OSError) as error:
        return _fail("real", str(error))
    summary = json.loads((args.out / SUMMARY_NAME).read_text(encoding="utf-8"))
    for split, classes in summary["classes"].items():
        clips = sum(entry["clips"] for entry in classes.values())
        minutes = sum(entry["minutes"] for entry in classes.values())
        print(f"{split}: {clips} clips, {minutes:.1f} min, {len(classes)} classes")
    print(f"skipped {len(summary['skipped'])} files that could not be used (listed in {args.out / SUMMARY_NAME}); "
          f"dropped {summary['duplicates_dropped']} duplicates")
    print(f"manifest: {manifest}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    """Build the demo scene and print its sources."""
    import json

    from training.data.demo_mix import DemoError, build_demo

    try:
        path = build_demo(args.manifest, args.split, args.classes, args.seconds, args.seed, args.out,
                          queries=args.queries)
    except (DemoError, OSError) as error:
        return _fail("demo", str(error))
    description = json.loads(path.read_text())
    for source in description["sources"]:
        clips = ", ".join(clip["path"] for clip in source["clips"])
        print(f"{source['file']}: {source['level_db']:.1f} dBFS (gain {source['gain_db']:+.1f} dB) from {clips}")
    print(f"queries: {', '.join(query['text'] for query in description['queries'])}")
    print(f"demo: {path}")
    return 0


def _run_build(args: argparse.Namespace) -> int:
    """Build the corpus."""
    from training.data.corpus import build_corpus, clip_count, split_sizes

    try:
        split_sizes(clip_count(args.hours))
    except ValueError as error:
        return _fail("build", f"--hours {args.hours}: {error}")
    try:
        manifest = build_corpus(args.out, args.hours, args.seed, args.soundfont,
                                progress=not args.quiet, workers=args.workers)
    except (CorpusError, OSError) as error:
        return _fail("build", str(error))
    print(f"manifest: {manifest}")
    return 0


def _fail(action: str, message: str) -> int:
    print(f"hybridsep corpus {action}: error: {message}", file=sys.stderr)
    return EXIT_USAGE

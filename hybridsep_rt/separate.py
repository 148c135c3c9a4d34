"""`hybridsep separate`: separate an audio file of any length and sample rate, one stem per query.

The file is converted to the model's rate, separated in overlapping windows that are combined by the
overlap-add the streaming engine uses (``hybridsep_rt.overlap.separate_offline``), converted back and written
with the input's channels, length and rate (and its sample format when the output format can store it).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

# Where `hybridsep separate` looks for a bundle when --bundle is not given: models/default in the repository.
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "models" / "default"
STEM_NAME_CHARS = 60  # longest stem file name taken from a query


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="audio file to separate (any length and sample rate)")
    parser.add_argument("-q", "--query", action="append", default=[], metavar="QUERY",
                        help="text describing the sound to separate; repeat for several stems")
    parser.add_argument("--example", action="append", default=[], type=Path, metavar="CLIP",
                        help="an audio clip of the sound to separate (query by example); repeatable")
    parser.add_argument("--mode", choices=("extract", "remove"), default="extract",
                        help="extract the queried sound, or remove it from the mixture (default: extract)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output file (one query) or folder (one file per query, named after it)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help=f"model bundle folder (default: {DEFAULT_BUNDLE})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run the model (default: auto, CUDA when available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per graph (default: all cores)")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16"), default="auto",
                        help="graph precision; fp16 needs a bundle exported with --fp16 (default: auto, fp16 "
                             "on CUDA when the bundle has it)")
    parser.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                        help="time between overlapping model windows (default: half the model's window)")


def slug(text: str) -> str:
    """A file name from a query: lower case, runs of other characters as "_", at most STEM_NAME_CHARS long."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:STEM_NAME_CHARS].rstrip("_")


def stem_names(labels: list[str], mode: str) -> list[str]:
    """Unique file names (without extension) for the stems of ``labels``."""
    names, seen = [], set()
    for i, label in enumerate(labels, 1):
        base = slug(label) or f"query_{i}"
        if mode == "remove":
            base = f"without_{base}"
        name, n = base, 2
        while name in seen:
            name, n = f"{base}_{n}", n + 1
        seen.add(name)
        names.append(name)
    return names


def output_paths(output: Path, names: list[str], input_path: Path) -> list[Path]:
    """One path per stem: ``output`` itself when there is one stem and it names an audio file, else files in the
    folder ``output`` with the input's extension (WAV when that format cannot be written)."""
    from hybridsep_rt.audio import file_format

    if file_format(output) is not None:
        if len(names) == 1:
            return [output]
        raise ValueError(f"{len(names)} queries give {len(names)} stems: -o must name a folder, not {output}")
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} is not a folder and has no audio file extension (.wav, .flac, ...)")
    extension = input_path.suffix.lower() if file_format(input_path) is not None else ".wav"
    return [output / f"{name}{extension}" for name in names]


def window_count(total: int, window: int, hop: int) -> int:
    """Model calls ``separate_offline`` makes for ``total`` samples (every window covering a sample counts)."""
    return max(1, math.ceil((total + window - hop) / hop))


def hop_samples(hop_seconds: float | None, sample_rate: int, window: int) -> int:
    """The --hop between overlapping model windows in samples (default: half the model's window), checked to
    lie between 1 sample and the window."""
    hop_seconds = hop_seconds if hop_seconds is not None else window / sample_rate / 2
    hop = int(round(hop_seconds * sample_rate))
    if not 0 < hop <= window:
        raise ValueError(f"--hop must be between 1 sample and the model's window ({window / sample_rate:g} s), "
                         f"got {hop_seconds:g} s")
    return hop


def _labels(args) -> list[str]:
    """What each stem is named after: the query texts, then "example <clip name>" per example clip."""
    for text in args.query:
        if not text.strip():
            raise ValueError("a text query is empty: describe the sound to separate, e.g. -q \"a dog barking\"")
    return [*args.query, *(f"example {clip.stem}" for clip in args.example)]


def _queries(args, sample_rate: int) -> list:
    """The engine queries for the text queries and example clips on the command line."""
    from hybridsep_rt.audio import read_audio, to_model_rate
    from hybridsep_rt.engine import Query

    queries = [Query(text=text, mode=args.mode) for text in args.query]
    for clip_path in args.example:
        clip, rate = read_audio(clip_path)
        queries.append(Query(example=to_model_rate(clip, rate, sample_rate), mode=args.mode))
    return queries


def _bundle_path(args) -> Path:
    from hybridsep_rt.bundle import BundleError

    if args.bundle is not None:
        return args.bundle
    if not DEFAULT_BUNDLE.exists():
        raise BundleError(f"no model bundle at the default location {DEFAULT_BUNDLE} (the default bundle has not "
                          f"been built yet): export one with `hybridsep export MODEL_DIR -o BUNDLE` and pass "
                          f"--bundle BUNDLE")
    return DEFAULT_BUNDLE


def separate_file(args) -> list[Path]:
    from tqdm import tqdm

    from hybridsep_rt.audio import file_subtype, read_audio, resample, to_model_rate, write_audio, writable_subtype
    from hybridsep_rt.overlap import separate_offline
    from hybridsep_rt.separator import OnnxSeparator

    if not args.query and not args.example:
        raise ValueError("nothing to separate: give at least one -q QUERY or --example CLIP")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    paths = output_paths(args.output, stem_names(_labels(args), args.mode), args.input)
    bundle = _bundle_path(args)
    mixture, rate = read_audio(args.input)
    separator = OnnxSeparator(bundle, device=args.device, threads=args.threads, precision=args.precision)
    window = separator.window_samples
    hop = hop_samples(args.hop, separator.sample_rate, window)
    queries = _queries(args, separator.sample_rate)
    conditions = [separator.prepare(query) for query in queries]  # bad queries fail before the long part
    print(f"separating {args.input} ({mixture.shape[0]} ch, {rate} Hz, {mixture.shape[1] / rate:.1f} s) with "
          f"{bundle} on {separator.provider} ({separator.precision})", file=sys.stderr)

    model_mixture = to_model_rate(mixture, rate, separator.sample_rate)
    subtype = file_subtype(args.input)
    windows = window_count(model_mixture.shape[1], window, hop)
    with tqdm(total=windows * len(queries), unit="window", file=sys.stderr) as bar:
        for query, condition, path in zip(queries, conditions, paths):
            stem = separate_offline(model_mixture, separator, condition, query.mode, hop_samples=hop,
                                    on_window=lambda: bar.update(1))
            stem = resample(stem, separator.sample_rate, rate, length=mixture.shape[1])
            write_audio(path, stem, rate, writable_subtype(path, subtype))
            bar.write(f"wrote {path}")
    return paths


def run(args) -> int:
    from hybridsep_rt.audio import AudioError
    from hybridsep_rt.bundle import BundleError

    try:
        separate_file(args)
    except (BundleError, AudioError, FileNotFoundError, ValueError) as e:
        print(f"hybridsep separate: error: {e}", file=sys.stderr)
        return 2
    return 0

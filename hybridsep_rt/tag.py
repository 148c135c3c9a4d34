"""`hybridsep tag`: the sounds in an audio file over time, by the bundle's tagger (YAMNet's AudioSet classes).

Prints a table of the top sounds per stretch of ``--every`` seconds (each class's highest score in it) and the
file's strongest sounds; ``-o`` writes every row of the timeline (0.32 s apart) as JSON or CSV, ``--plot`` a PNG
of the strongest classes over time. Both are checked before the audio is read and written atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

OUTPUT_FORMATS = (".json", ".csv")
PLOT_CLASSES = 10  # rows of the --plot figure: the file's strongest classes
PLOT_ROW_HEIGHT = 18
PLOT_LABEL_WIDTH = 190
PLOT_MAX_WIDTH = 1600
PLOT_MARGIN = 10
PLOT_AXIS_HEIGHT = 18


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hybridsep_rt.separate import DEFAULT_BUNDLE

    parser.add_argument("input", type=Path, help="audio file to tag (any length, rate and channel count)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="write the whole timeline (a row every 0.32 s, the --top best classes of each) to "
                             "a .json or .csv file")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG",
                        help=f"draw the file's {PLOT_CLASSES} strongest classes over time into a PNG")
    parser.add_argument("--top", type=int, default=5, help="classes listed per row (default: 5)")
    parser.add_argument("--every", type=float, default=1.0, metavar="SECONDS",
                        help="length of a row of the printed table (default: 1.0)")
    parser.add_argument("--min-score", type=float, default=0.1,
                        help="the table leaves out classes scoring below this (default: 0.1)")
    parser.add_argument("--bundle", type=Path, default=None, help=f"model bundle folder (default: {DEFAULT_BUNDLE})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run the tagger (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")


def check_outputs(args) -> None:
    """Every problem with the requested outputs and options, before any audio is read."""
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    if not args.every > 0:
        raise ValueError(f"--every must be > 0 seconds, got {args.every}")
    wanted = [(args.output, OUTPUT_FORMATS, "-o"), (args.plot, (".png",), "--plot")]
    for path, suffixes, flag in wanted:
        if path is None:
            continue
        if path.suffix.lower() not in suffixes:
            raise ValueError(f"{flag} {path}: the file name must end in {' or '.join(suffixes)}")
        if path.is_dir():
            raise ValueError(f"{flag} {path} is a folder; name a file")
        if path.exists() and path.resolve() == args.input.resolve():
            raise ValueError(f"{flag} {path} is the input file")
        parent = path.parent if path.parent != Path("") else Path(".")
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{flag} {path}: {parent} is not a folder")


def table(timeline, every: float, top: int, min_score: float) -> str:
    """The printed table: per stretch of ``every`` seconds, the best classes (highest score in the stretch)."""
    from hybridsep_rt.tagger import top_classes

    lines = []
    stretch = np.floor(timeline.times / every).astype(int)
    for k in np.unique(stretch):
        peak = timeline.scores[stretch == k].max(axis=0)
        tags = [f"{name} {score:.2f}" for name, score in top_classes(peak, timeline.classes, top) if score >= min_score]
        lines.append(f"{k * every:8.1f} - {(k + 1) * every:<8.1f} {'   '.join(tags) or '-'}")
    return "\n".join(lines)


def timeline_rows(timeline, top: int) -> list[dict]:
    from hybridsep_rt.tagger import top_classes

    def tags(row: np.ndarray) -> list[dict]:
        return [{"class": name, "score": round(score, 4)} for name, score in top_classes(row, timeline.classes, top)]

    return [{"time": round(float(t), 4), "tags": tags(row)} for t, row in zip(timeline.times, timeline.scores)]


def strongest(timeline, count: int) -> list[dict]:
    return [{"class": timeline.classes[i], "peak": round(float(timeline.scores[:, i].max()), 4),
             "mean": round(float(timeline.scores[:, i].mean()), 4)} for i in timeline.strongest(count)]


def timeline_json(timeline, source: Path, duration: float, model: str, top: int) -> str:
    spacing = round(float(timeline.times[1] - timeline.times[0]), 6) if len(timeline.times) > 1 else None
    document = {"file": str(source), "duration_seconds": round(duration, 4), "model": model, "frame_seconds": spacing,
                "strongest": strongest(timeline, top), "frames": timeline_rows(timeline, top)}
    return json.dumps(document, indent=1) + "\n"


def timeline_csv(timeline, top: int) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["time_s", "rank", "class", "score"])
    for row in timeline_rows(timeline, top):
        for rank, tag in enumerate(row["tags"], 1):
            writer.writerow([f"{row['time']:.2f}", rank, tag["class"], f"{tag['score']:.4f}"])
    return buffer.getvalue()


def timeline_figure(timeline, duration: float):
    """A Pillow image: the file's strongest classes (rows) over time (columns), score 0..1 through viridis."""
    from PIL import Image, ImageDraw

    from hybridsep_rt.demo import BACKGROUND, TEXT_COLOUR, colour

    classes = timeline.strongest(PLOT_CLASSES)
    columns = timeline.scores.shape[0]
    cell = max(1, min(8, PLOT_MAX_WIDTH // columns))
    width, height = columns * cell, len(classes) * PLOT_ROW_HEIGHT
    image = Image.new("RGB", (PLOT_LABEL_WIDTH + width + 2 * PLOT_MARGIN, height + PLOT_AXIS_HEIGHT + 2 * PLOT_MARGIN),
                      BACKGROUND)
    pixels = np.repeat(np.repeat(timeline.scores[:, classes].T, PLOT_ROW_HEIGHT, axis=0), cell, axis=1)
    left, top = PLOT_MARGIN + PLOT_LABEL_WIDTH, PLOT_MARGIN
    image.paste(Image.fromarray(colour(pixels)), (left, top))
    draw = ImageDraw.Draw(image)
    for row, i in enumerate(classes):
        draw.text((PLOT_MARGIN, top + row * PLOT_ROW_HEIGHT + 3), timeline.classes[i][:30], fill=TEXT_COLOUR)
    step = max(1.0, float(np.ceil(duration / 10.0)))
    frame = timeline.times[1] - timeline.times[0] if columns > 1 else 1.0
    for second in np.arange(0.0, duration + 1e-9, step):
        x = left + int(round((second - (timeline.times[0] - frame / 2)) / frame * cell))
        if left <= x <= left + width:
            draw.line([(x, top + height), (x, top + height + 4)], fill=TEXT_COLOUR)
            draw.text((x + 2, top + height + 4), f"{second:g} s", fill=TEXT_COLOUR)
    return image


def tag_file(args) -> None:
    from tqdm import tqdm

    from hybridsep_rt.atomic import atomic_path, atomic_write_text
    from hybridsep_rt.audio import read_audio, to_model_rate
    from hybridsep_rt.separate import _bundle_path
    from hybridsep_rt.tagger import Tagger

    check_outputs(args)
    tagger = Tagger(_bundle_path(args), device=args.device, threads=args.threads)
    audio, rate = read_audio(args.input)
    wave = to_model_rate(audio, rate, tagger.sample_rate).mean(axis=0)
    duration = audio.shape[1] / rate
    print(f"tagging {args.input} ({audio.shape[0]} ch, {rate} Hz, {duration:.1f} s) with the tagger of "
          f"{tagger.bundle.folder} on {tagger.provider}", file=sys.stderr)
    with tqdm(total=tagger.window_count(wave.shape[0]), unit="window", file=sys.stderr, leave=False) as bar:
        timeline = tagger.timeline(wave, on_window=lambda: bar.update(1))
    model = tagger.bundle.manifest["tagger"].get("model", "the bundle's tagger")
    print(f"top sounds of {args.input.name} ({model}; score 0-1, the highest in each {args.every:g} s)")
    print(table(timeline, args.every, args.top, args.min_score))
    print("strongest: " + ", ".join(f"{s['class']} {s['peak']:.2f}" for s in strongest(timeline, args.top)))
    if args.output is not None:
        text = (timeline_json(timeline, args.input, duration, model, args.top)
                if args.output.suffix.lower() == ".json" else timeline_csv(timeline, args.top))
        atomic_write_text(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    if args.plot is not None:
        with atomic_path(args.plot) as tmp:
            timeline_figure(timeline, duration).save(tmp, format="PNG")
        print(f"wrote {args.plot}", file=sys.stderr)


def run(args) -> int:
    from hybridsep_rt.audio import AudioError
    from hybridsep_rt.bundle import BundleError

    try:
        tag_file(args)
    except (BundleError, AudioError, FileNotFoundError, ValueError) as e:
        print(f"hybridsep tag: error: {e}", file=sys.stderr)
        return 2
    return 0

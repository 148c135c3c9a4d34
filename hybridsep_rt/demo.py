"""`hybridsep demo`: separate the demo scene with each of its queries, draw the spectrograms and score the stems.

The scene (``assets/demo``, written by ``hybridsep corpus demo``) is a folder holding ``demo.json``, the mixture
and one reference file per source. For each query the mixture is separated over its whole length by the
overlap-add ``hybridsep separate`` uses (``hybridsep_rt.overlap.separate_offline``); "remove" is the mixture minus
the extracted target (``overlap.apply_mode``, what remove mode computes), so one pass per query gives both stems.
Written to OUT:

    <query>_extract.wav, <query>_remove.wav   the stems
    spectrograms.png                           the mixture on top, then extract | remove for each query
    scores.json                                SDR and SDRi of every stem (``hybridsep_rt.metrics``)

Extract is scored against the query's reference source, remove against the mixture minus that source.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybridsep_rt.separate import DEFAULT_BUNDLE, slug

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_DEMO = REPOSITORY / "assets" / "demo"
DEFAULT_OUT = REPOSITORY / "runs" / "demo"

# demo.json, shared with the scene builder (training/data/demo_mix.py).
DEMO_FORMAT = "hybridsep-demo"
DEMO_VERSION = 1
DEMO_FILE = "demo.json"

MODES = ("extract", "remove")
SCORES_FILE = "scores.json"
SPECTROGRAMS_FILE = "spectrograms.png"

# The spectrogram figure: log-power STFT on a mel frequency axis, DYNAMIC_RANGE_DB below the loudest bin of all
# panels (one scale for every panel, so they compare), coloured with viridis.
STFT_SIZE = 2048
STFT_HOP = 512
DYNAMIC_RANGE_DB = 80.0
PANEL_WIDTH = 480
PANEL_HEIGHT = 160
LABEL_HEIGHT = 18  # text strip above each panel
MARGIN = 12  # around the figure and between the two columns
ROW_GAP = 8
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
# viridis (van der Walt and Smith, matplotlib's default colormap) at 0, 1/8, ..., 1; linear in between.
VIRIDIS = np.array([
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
], dtype=np.float64)


class DemoError(ValueError):
    """The demo folder is missing, incomplete or inconsistent."""


@dataclass
class DemoQuery:
    """One query of the scene: its text, the source it names and the file-name stem of its outputs."""

    text: str
    source: str
    name: str


@dataclass
class DemoScene:
    """The scene: the mixture and the references, (channels, samples) float32 at ``sample_rate``."""

    folder: Path
    sample_rate: int
    mixture: np.ndarray
    mixture_path: Path
    references: dict[str, np.ndarray]
    queries: list[DemoQuery]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, default=None, help=f"model bundle folder (default: {DEFAULT_BUNDLE})")
    parser.add_argument("--demo", type=Path, default=DEFAULT_DEMO,
                        help=f"demo scene folder, as `hybridsep corpus demo` writes it (default: {DEFAULT_DEMO})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder for the stems, figure and scores (default: {DEFAULT_OUT})")
    parser.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                        help="time between overlapping model windows (default: half the model's window)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run the model (default: auto, CUDA when available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per graph (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------------------------- the scene


def _field(entry, key: str, kind: type, where: str):
    """``entry[key]``, checked to be a non-empty ``kind``."""
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool) or not value:
        raise DemoError(f"{where}: {key!r} must be a non-empty {kind.__name__}")
    return value


def _read_description(folder: Path) -> dict:
    """demo.json of ``folder``, checked for its format and version."""
    path = folder / DEMO_FILE
    if not path.is_file():
        raise DemoError(f"no demo scene at {folder} ({DEMO_FILE} not found); build one with `hybridsep corpus demo "
                        f"--manifest MANIFEST --classes CLASS ... --out {folder}`")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DemoError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(description, dict) or description.get("format") != DEMO_FORMAT:
        raise DemoError(f"{path} is not a demo scene description (format {DEMO_FORMAT!r})")
    if description.get("version") != DEMO_VERSION:
        raise DemoError(f"{path} has version {description.get('version')!r}; this program reads version "
                        f"{DEMO_VERSION}")
    return description


def _read_wave(folder: Path, name: str, sample_rate: int) -> np.ndarray:
    """A file of the scene, checked to be at the scene's rate."""
    from hybridsep_rt.audio import read_audio

    wave, rate = read_audio(folder / name)
    if rate != sample_rate:
        raise DemoError(f"{folder / name} is at {rate} Hz, the scene at {sample_rate} Hz")
    return wave


def load_scene(folder: str | Path) -> DemoScene:
    """Read and check a demo folder. Raises DemoError, FileNotFoundError or ``hybridsep_rt.audio.AudioError``."""
    folder = Path(folder)
    description = _read_description(folder)
    where = str(folder / DEMO_FILE)
    sample_rate = _field(description, "sample_rate", int, where)
    mixture_name = _field(description, "mixture", str, where)
    mixture = _read_wave(folder, mixture_name, sample_rate)
    references = {}
    for entry in _field(description, "sources", list, where):
        name = _field(entry, "name", str, f"{where} sources")
        reference = _read_wave(folder, _field(entry, "file", str, f"{where} source {name!r}"), sample_rate)
        if reference.shape != mixture.shape:
            raise DemoError(f"source {name!r} has shape {reference.shape}, the mixture {mixture.shape}")
        references[name] = reference
    queries = []
    for entry in _field(description, "queries", list, where):
        text = _field(entry, "text", str, f"{where} queries")
        source = _field(entry, "source", str, f"{where} query {text!r}")
        if source not in references:
            raise DemoError(f"{where}: query {text!r} names source {source!r}, which is not among the sources "
                            f"{sorted(references)}")
        queries.append(DemoQuery(text, source, slug(text)))
    names = [query.name for query in queries]
    if not all(names) or len(set(names)) != len(names):
        raise DemoError(f"{where}: the queries need distinct file names (letters or digits), got "
                        f"{[query.text for query in queries]}")
    return DemoScene(folder, sample_rate, mixture, folder / mixture_name, references, queries)


# ---------------------------------------------------------------------------------------------- separation and scores


def score(reference: np.ndarray, estimate: np.ndarray, mixture: np.ndarray) -> dict:
    """SDR of ``estimate`` and its improvement over ``mixture``, in dB; (channels, samples) arrays, all channels
    counted as one signal."""
    from hybridsep_rt.metrics import sdr, sdri

    reference, estimate, mixture = (np.asarray(x).reshape(-1) for x in (reference, estimate, mixture))
    return {"sdr": sdr(reference, estimate), "sdri": sdri(reference, estimate, mixture)}


def separate_scene(scene: DemoScene, separator, hop: int, on_window=None) -> dict[str, dict[str, np.ndarray]]:
    """query name -> {"extract": stem, "remove": stem}, (channels, samples) at the scene's rate."""
    from hybridsep_rt.audio import resample, to_model_rate
    from hybridsep_rt.engine import Query
    from hybridsep_rt.overlap import apply_mode, separate_offline

    conditions = [separator.prepare(Query(text=query.text)) for query in scene.queries]  # bad queries fail first
    model_mixture = to_model_rate(scene.mixture, scene.sample_rate, separator.sample_rate)
    length = scene.mixture.shape[1]
    stems = {}
    for query, condition in zip(scene.queries, conditions):
        target = separate_offline(model_mixture, separator, condition, "extract", hop_samples=hop, on_window=on_window)
        stems[query.name] = {
            mode: resample(apply_mode(target, model_mixture, mode), separator.sample_rate, scene.sample_rate, length)
            for mode in MODES
        }
    return stems


def score_scene(scene: DemoScene, stems: dict[str, dict[str, np.ndarray]]) -> list[dict]:
    """Per query: extract scored against its source, remove against the mixture minus that source."""
    rows = []
    for query in scene.queries:
        reference = scene.references[query.source]
        references = {"extract": reference, "remove": scene.mixture - reference}
        row = {"query": query.text, "source": query.source}
        for mode in MODES:
            row[mode] = {"file": f"{query.name}_{mode}.wav",
                         **score(references[mode], stems[query.name][mode], scene.mixture)}
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """The scores as a text table, one line per query."""
    width = max(len("query"), *(len(row["query"]) for row in rows))
    lines = [f"{'query':<{width}}  {'extract SDR':>11}  {'SDRi':>8}  {'remove SDR':>11}  {'SDRi':>8}"]
    for row in rows:
        cells = [f"{row[mode][key]:>8.2f} dB" if key == "sdr" else f"{row[mode][key]:>+5.2f} dB"
                 for mode in MODES for key in ("sdr", "sdri")]
        lines.append(f"{row['query']:<{width}}  {cells[0]:>11}  {cells[1]:>8}  {cells[2]:>11}  {cells[3]:>8}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the figure


def figure_size(queries: int) -> tuple[int, int]:
    """(width, height) in pixels of the figure for ``queries`` query rows."""
    width = 3 * MARGIN + 2 * PANEL_WIDTH
    rows = 1 + queries
    return width, 2 * MARGIN + rows * (LABEL_HEIGHT + PANEL_HEIGHT) + (rows - 1) * ROW_GAP


def panel_boxes(queries: int) -> list[tuple[int, int, int, int]]:
    """(left, top, width, height) of each spectrogram panel: the mixture across the top, then per query the
    extract panel on the left and the remove panel on the right."""
    boxes = [(MARGIN, MARGIN + LABEL_HEIGHT, 2 * PANEL_WIDTH + MARGIN, PANEL_HEIGHT)]
    for row in range(1, queries + 1):
        top = MARGIN + row * (LABEL_HEIGHT + PANEL_HEIGHT + ROW_GAP) + LABEL_HEIGHT
        boxes += [(MARGIN, top, PANEL_WIDTH, PANEL_HEIGHT), (2 * MARGIN + PANEL_WIDTH, top, PANEL_WIDTH, PANEL_HEIGHT)]
    return boxes


def power_spectrogram(wave: np.ndarray) -> np.ndarray:
    """(samples,) -> (STFT_SIZE // 2 + 1, frames) power of the Hann-windowed, centred STFT."""
    wave = np.pad(np.asarray(wave, dtype=np.float64), STFT_SIZE // 2)
    if wave.shape[0] < STFT_SIZE:
        wave = np.pad(wave, (0, STFT_SIZE - wave.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(wave, STFT_SIZE)[::STFT_HOP]
    window = np.sin(np.pi * np.arange(STFT_SIZE) / STFT_SIZE) ** 2  # periodic Hann
    return (np.abs(np.fft.rfft(frames * window, axis=1)) ** 2).T


def _band_means(values: np.ndarray, edges: np.ndarray, axis: int) -> np.ndarray:
    """Means of ``values`` along ``axis`` over the index ranges [edges[i], edges[i + 1]) (at least one index)."""
    low = np.minimum(edges[:-1], values.shape[axis] - 1)
    high = np.maximum(edges[1:], low + 1)
    total = np.concatenate([np.zeros_like(np.take(values, [0], axis=axis)), np.cumsum(values, axis=axis)], axis=axis)
    shape = [1] * values.ndim
    shape[axis] = -1
    return (np.take(total, high, axis=axis) - np.take(total, low, axis=axis)) / (high - low).reshape(shape)


def _mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def panel_pixels(power: np.ndarray, sample_rate: int, width: int, height: int) -> np.ndarray:
    """A power spectrogram resampled to ``height`` mel-spaced rows (high frequencies on top) and ``width``
    columns, each pixel the mean power of the bins and frames it covers."""
    bins, frames = power.shape
    mel_edges = np.linspace(0.0, _mel(sample_rate / 2), height + 1)
    hz_edges = 700.0 * (10.0 ** (mel_edges / 2595.0) - 1.0)
    bin_edges = np.round(hz_edges / (sample_rate / STFT_SIZE)).astype(int).clip(0, bins)
    frame_edges = np.round(np.linspace(0, frames, width + 1)).astype(int)
    return _band_means(_band_means(power, bin_edges, 0), frame_edges, 1)[::-1]


def colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB through the viridis colormap, shape (..., 3)."""
    positions = np.linspace(0.0, 1.0, VIRIDIS.shape[0])
    values = np.clip(values, 0.0, 1.0)
    rgb = np.stack([np.interp(values, positions, VIRIDIS[:, c]) for c in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def spectrogram_figure(panels: list[tuple[str, np.ndarray]], sample_rate: int):
    """A Pillow image of labelled log-power spectrograms laid out as :func:`panel_boxes` (the mixture, then per
    query extract and remove); ``panels`` are (label, mono wave) in that order."""
    from PIL import Image, ImageDraw

    queries = (len(panels) - 1) // 2
    boxes = panel_boxes(queries)
    pixels = [panel_pixels(power_spectrogram(wave), sample_rate, width, height)
              for (_, wave), (_, _, width, height) in zip(panels, boxes)]
    loudest = max(float(np.max(p)) for p in pixels)
    image = Image.new("RGB", figure_size(queries), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for (label, _), (left, top, _, _), power in zip(panels, boxes, pixels):
        decibels = 10.0 * np.log10(np.maximum(power, loudest * 10.0 ** (-DYNAMIC_RANGE_DB / 10.0)) / loudest)
        image.paste(Image.fromarray(colour(1.0 + decibels / DYNAMIC_RANGE_DB)), (left, top))
        draw.text((left, top - LABEL_HEIGHT + 3), label, fill=TEXT_COLOUR)
    return image


def _figure_panels(scene: DemoScene, stems: dict, rows: list[dict]) -> list[tuple[str, np.ndarray]]:
    seconds = scene.mixture.shape[1] / scene.sample_rate
    panels = [(f"mixture  ({seconds:.1f} s, 0-{scene.sample_rate / 2000:.0f} kHz on a mel scale, "
               f"{DYNAMIC_RANGE_DB:.0f} dB range)", scene.mixture.mean(axis=0))]
    for query, row in zip(scene.queries, rows):
        for mode in MODES:
            panels.append((f'"{query.text}"  {mode}   SDR {row[mode]["sdr"]:.1f} dB, SDRi {row[mode]["sdri"]:+.1f} dB',
                           stems[query.name][mode].mean(axis=0)))
    return panels


# ---------------------------------------------------------------------------------------------- the command


def run_demo(args) -> list[dict]:
    """Separate, write the stems, the figure and the scores; returns the score rows."""
    from tqdm import tqdm

    from hybridsep_rt.atomic import atomic_path, atomic_write_text
    from hybridsep_rt.audio import file_subtype, write_audio, writable_subtype
    from hybridsep_rt.separate import _bundle_path, hop_samples, window_count
    from hybridsep_rt.separator import OnnxSeparator

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    bundle = _bundle_path(args)
    scene = load_scene(args.demo)
    separator = OnnxSeparator(bundle, device=args.device, threads=args.threads)
    hop = hop_samples(args.hop, separator.sample_rate, separator.window_samples)
    if not args.quiet:
        print(f"separating {scene.mixture_path} ({scene.mixture.shape[1] / scene.sample_rate:.1f} s) for "
              f"{len(scene.queries)} queries with {bundle} on {separator.provider}", file=sys.stderr)
    windows = window_count(round(scene.mixture.shape[1] * separator.sample_rate / scene.sample_rate),
                           separator.window_samples, hop)
    with tqdm(total=windows * len(scene.queries), unit="window", file=sys.stderr, disable=args.quiet) as bar:
        stems = separate_scene(scene, separator, hop, on_window=lambda: bar.update(1))
    rows = score_scene(scene, stems)

    out = Path(args.out)
    subtype = file_subtype(scene.mixture_path)
    for query in scene.queries:
        for mode in MODES:
            path = out / f"{query.name}_{mode}.wav"
            write_audio(path, stems[query.name][mode], scene.sample_rate, writable_subtype(path, subtype))
    figure = spectrogram_figure(_figure_panels(scene, stems, rows), scene.sample_rate)
    with atomic_path(out / SPECTROGRAMS_FILE, suffix=".png") as temp:
        figure.save(temp, format="PNG")
    scores = {"bundle": str(bundle), "demo": str(scene.folder), "provider": separator.provider,
              "hop_seconds": hop / separator.sample_rate, "sample_rate": scene.sample_rate, "queries": rows}
    atomic_write_text(out / SCORES_FILE, json.dumps(scores, indent=2) + "\n")
    return rows


def run(args) -> int:
    from hybridsep_rt.audio import AudioError
    from hybridsep_rt.bundle import BundleError

    try:
        rows = run_demo(args)
    except (BundleError, AudioError, DemoError, FileNotFoundError, ValueError) as e:
        print(f"hybridsep demo: error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    out = Path(args.out)
    print(f"stems, {SPECTROGRAMS_FILE} and {SCORES_FILE} in {out}")
    return 0

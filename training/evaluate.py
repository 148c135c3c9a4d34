"""Evaluation shaped like Table 2 of the paper (sections 3.2-3.3), and the `hybridsep eval` command.

    hybridsep eval --manifest M --split test --bundle NAME=DIR [--bundle NAME2=DIR2 ...]
                   --keyword-n 300 --caption-n 300 --seed 0 -o OUTDIR

Two test sets are drawn from a manifest split with the mixer's evaluation rules:

- "KA" (keyword-audio, paper 3.2): 4 keyword sources, one of them the target (`MixerConfig.keyword_eval`);
- "DE-S-like" (caption-audio, like DCASE's synthetic validation set DE-S, paper 3.2): 2 sources, caption
  queries, SNR uniform in [-15, 15] dB (`MixerConfig.caption_eval`).

Every system is scored per example with SDR, SDRi, SI-SDR, CLAPScore and CLAPScore_A, and per test set with
the FAD between its separated audio and the targets (`training.metrics`). CLAPScore (audio against the query's
text) is taken in the first bundle's CLAP space; CLAPScore_A and FAD in the embedding space of YAMNet (AudioSet),
which no model under test was trained to hit (the reference FAD uses VGGish, YAMNet's sibling): FAD over its
0.96 s frames (`yamnet_frames`), CLAPScore_A between the clips' mean frames. The rows
"No processing" (the mixture itself) and "Oracle IRM" (the ideal ratio mask from the true sources) are
always added; `--query-blind` adds "Mixture at half gain" and "Oracle gain" (the mixture at the best scalar gain
for each mixture, `training.metrics.oracle_gain`), what a separator that ignores the query could reach; control
rows can be asked for: the model given another class's query, or queried by an example clip of the target's
class instead of the text. OUTDIR receives table.md, table.csv and one per-example CSV per test set.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from training.metrics import clap_score, clap_score_a, frechet_distance, oracle_gain, oracle_irm, sdr, sdri, si_sdr

if TYPE_CHECKING:
    from hybridsep_rt.engine import Query, Separator
    from training.data.manifest import Clip, Manifest
    from training.data.mixer import Example

System = Callable[[np.ndarray, str], np.ndarray]  # (mixture (N,), query) -> estimate (N,)
EmbedAudio = Callable[[np.ndarray], np.ndarray]  # (B, N) -> (B, D)
EmbedText = Callable[[list[str]], np.ndarray]  # B queries -> (B, D)
EmbedFrames = Callable[[np.ndarray], np.ndarray]  # (B, N) -> (B, frames, D), for FAD and CLAPScore_A

NO_PROCESSING = "No processing"
ORACLE_IRM = "Oracle IRM"
HALF_GAIN = "Mixture at half gain"
ORACLE_GAIN = "Oracle gain"
QUERY_BLIND = (HALF_GAIN, ORACLE_GAIN)  # reference rows that ignore the query
HALF = 0.5  # the gain of the "Mixture at half gain" row
REFERENCE_ROWS = (NO_PROCESSING, ORACLE_IRM, *QUERY_BLIND)
# Test-set names of the table: "KA" as in Table 2; the caption set follows the recipe of DE-S (paper 3.2).
TEST_SET_NAMES = {"keyword": "KA", "caption": "DE-S-like"}
SEED_STREAMS = {"keyword": 0, "caption": 1}  # keeps the two sets' random draws apart under one seed
METRICS = ("sdr", "sdri", "si_sdr", "clap_score", "clap_score_a")
# Column groups of Table 2: (heading, metric, decimals). CLAPScores are x 100 (training.metrics).
TABLE_COLUMNS = (
    ("SDR ↑", "sdr", 2),
    ("SDRi ↑", "sdri", 2),
    ("CLAPScore ↑", "clap_score", 1),
    ("CLAPScore_A ↑", "clap_score_a", 1),
    ("FAD ↓", "fad", 2),
)
# The oracle mask's STFT (not from the paper): 46 ms Hann frames with 75 % overlap at 44.1 kHz.
ORACLE_N_FFT = 2048
ORACLE_HOP = 512
EMBED_BATCH = 8  # examples embedded per call of the CLAP encoders
REFERENCE_SPACE = "YAMNet (AudioSet) 0.96 s frames"  # where CLAPScore_A and FAD are measured (`yamnet_frames`)
EXIT_USAGE = 2  # argparse's exit status for a bad command line; used for every error the user can fix


@dataclass
class EvalResults:
    """Scores of every system on one test set.

    Attributes:
        scores: system -> metric (`METRICS`) -> (N,) float64, one value per example.
        fad: system -> FAD between the frames of its separated audio and of the targets (NaN when it cannot be
            computed).
        fad_note: why FAD is NaN (too few frames for the embedding size), else None.
        n: number of examples.
        embedding_dim: D of the reference frame embeddings (FAD, CLAPScore_A).
        queries, kinds, ratio_db: per example.
    """

    scores: dict[str, dict[str, np.ndarray]]
    fad: dict[str, float]
    n: int
    embedding_dim: int
    queries: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    ratio_db: list[float] = field(default_factory=list)
    fad_note: str | None = None

    @property
    def systems(self) -> list[str]:
        return list(self.scores)

    def mean(self, system: str, metric: str) -> float:
        """Mean over examples of `metric`, or the FAD for metric "fad"."""
        if metric == "fad":
            return self.fad[system]
        return float(np.mean(self.scores[system][metric]))

    def example_rows(self) -> list[dict]:
        """One dict per (system, example), for the per-example CSV."""
        rows = []
        for system, metrics in self.scores.items():
            for index in range(self.n):
                row = {"system": system, "index": index, "query": self.queries[index], "kind": self.kinds[index],
                       "ratio_db": self.ratio_db[index]}
                row.update({metric: float(metrics[metric][index]) for metric in METRICS})
                rows.append(row)
        return rows


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _embed(embed_audio: EmbedAudio, waves: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embed_audio(waves), dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] != waves.shape[0]:
        raise ValueError(f"embed_audio returned shape {embeddings.shape} for {waves.shape[0]} waves; expected (B, D)")
    return embeddings


def _frames(embed_frames: EmbedFrames, waves: np.ndarray) -> np.ndarray:
    frames = np.asarray(embed_frames(waves), dtype=np.float64)
    if frames.ndim != 3 or frames.shape[0] != waves.shape[0] or frames.shape[1] == 0:
        raise ValueError(f"embed_frames returned shape {frames.shape} for {waves.shape[0]} waves; expected "
                         f"(B, frames, D)")
    return frames


def _estimate(name: str, system: System | None, example: Example, n_fft: int, hop: int) -> np.ndarray:
    mixture = np.asarray(example.mixture, dtype=np.float32)
    if name == NO_PROCESSING:
        return mixture
    if name == ORACLE_IRM:
        return oracle_irm(mixture, example.target, n_fft, hop)
    if name == HALF_GAIN:
        return (HALF * mixture).astype(np.float32)
    if name == ORACLE_GAIN:
        return oracle_gain(mixture, example.target)
    estimate = np.asarray(system(mixture, example.query), dtype=np.float32)
    if estimate.shape != mixture.shape:
        raise ValueError(f"system {name!r} returned shape {estimate.shape} for a mixture of shape {mixture.shape}")
    return estimate


def evaluate(
    systems: Mapping[str, System],
    examples: Sequence[Example],
    embed_audio: EmbedAudio,
    embed_text: EmbedText,
    embed_frames: EmbedFrames,
    *,
    oracle_n_fft: int = ORACLE_N_FFT,
    oracle_hop: int = ORACLE_HOP,
    batch_size: int = EMBED_BATCH,
    progress: bool = True,
    description: str = "evaluating",
    query_blind: bool = False,
) -> EvalResults:
    """Score every system, plus "No processing" and "Oracle IRM" (and with `query_blind` "Mixture at half gain"
    and "Oracle gain"), on the examples.

    Args:
        systems: name -> function (mixture (N,) float32, query) -> estimate (N,).
        examples: mixer `Example`s (mixture, target, query; mixture == target + rest).
        embed_audio: CLAP audio encoder, (B, N) waves -> (B, D) embeddings (CLAPScore, against the text).
        embed_text: CLAP text encoder, B queries -> (B, D) embeddings.
        embed_frames: the reference encoder, (B, N) waves -> (B, frames, D') (FAD over all frames; CLAPScore_A
            between the mean frames of estimate and target).
        oracle_n_fft, oracle_hop: STFT of the oracle ideal ratio mask.
        batch_size: waves per `embed_audio` call.
    """
    from tqdm import tqdm

    reserved = set(REFERENCE_ROWS) & set(systems)
    if reserved:
        raise ValueError(f"system names {sorted(reserved)} are reserved for the reference rows")
    examples = list(examples)
    if not examples:
        raise ValueError("no examples to evaluate")
    names = [NO_PROCESSING, ORACLE_IRM, *(QUERY_BLIND if query_blind else ()), *systems]
    scores = {name: {metric: [] for metric in METRICS} for name in names}
    separated = {name: [] for name in names}
    targets = []
    with tqdm(total=len(examples), desc=description, unit="mix", disable=not progress) as bar:
        for batch in _batches(examples, batch_size):
            target_frames = _frames(embed_frames, np.stack([example.target for example in batch]))
            text_emb = np.asarray(embed_text([example.query for example in batch]), dtype=np.float64)
            targets.append(target_frames.reshape(-1, target_frames.shape[-1]))
            for name in names:
                estimates = np.stack([_estimate(name, systems.get(name), ex, oracle_n_fft, oracle_hop) for ex in batch])
                estimate_frames = _frames(embed_frames, estimates)
                separated[name].append(estimate_frames.reshape(-1, estimate_frames.shape[-1]))
                row = scores[name]
                for example, estimate in zip(batch, estimates):
                    row["sdr"].append(sdr(example.target, estimate))
                    row["sdri"].append(sdri(example.target, estimate, example.mixture))
                    row["si_sdr"].append(si_sdr(example.target, estimate))
                row["clap_score"].extend(clap_score(_embed(embed_audio, estimates), text_emb))
                row["clap_score_a"].extend(clap_score_a(estimate_frames.mean(axis=1), target_frames.mean(axis=1)))
            bar.update(len(batch))
    target_all = np.concatenate(targets)
    fad, fad_note = {}, None
    for name in names:
        try:
            fad[name] = frechet_distance(np.concatenate(separated[name]), target_all)
        except ValueError as error:
            fad[name], fad_note = math.nan, str(error)
    return EvalResults(
        scores={name: {metric: np.asarray(values) for metric, values in row.items()} for name, row in scores.items()},
        fad=fad,
        n=len(examples),
        embedding_dim=target_all.shape[1],
        queries=[example.query for example in examples],
        kinds=[example.kind for example in examples],
        ratio_db=[float(example.ratio_db) for example in examples],
        fad_note=fad_note,
    )


# ---------------------------------------------------------------------------------------------- test sets


def _mixer_config(kind: str, sample_rate: int, segment_seconds: float | None):
    from training.data.mixer import MixerConfig

    presets = {"keyword": MixerConfig.keyword_eval, "caption": MixerConfig.caption_eval}
    if kind not in presets:
        raise ValueError(f"kind must be one of {sorted(presets)}, got {kind!r}")
    cfg = dataclasses.replace(presets[kind](), sample_rate=sample_rate)
    if segment_seconds is not None:
        cfg = dataclasses.replace(cfg, segment_seconds=segment_seconds)
    return cfg


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_test_set(path: Path, examples: list[Example], identity: dict) -> None:
    from hybridsep_rt.atomic import atomic_path

    clips = [json.dumps([{**dataclasses.asdict(clip), "path": str(clip.path)} for clip in ex.clips]) for ex in examples]
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                identity=np.array(json.dumps(identity, sort_keys=True)),
                mixture=np.stack([ex.mixture for ex in examples]),
                target=np.stack([ex.target for ex in examples]),
                query=np.array([ex.query for ex in examples]),
                kind=np.array([ex.kind for ex in examples]),
                ratio_db=np.array([ex.ratio_db for ex in examples], dtype=np.float64),
                gain=np.array([ex.gain for ex in examples], dtype=np.float64),
                clips=np.array(clips),
            )


def _load_test_set(path: Path, identity: dict) -> list[Example] | None:
    """The cached examples, or None when the file is missing, unreadable or made with other settings."""
    from training.data.manifest import Clip
    from training.data.mixer import Example

    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["identity"])) != json.loads(json.dumps(identity)):
                return None
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError):
        return None
    examples = []
    for index in range(arrays["mixture"].shape[0]):
        mixture, target = arrays["mixture"][index], arrays["target"][index]
        interference = mixture - target
        clips = [Clip(**{**row, "path": Path(row["path"])}) for row in json.loads(str(arrays["clips"][index]))]
        examples.append(Example(
            mixture=mixture, target=target, interference=interference, sources=np.stack([target, interference]),
            query=str(arrays["query"][index]), kind=str(arrays["kind"][index]),
            ratio_db=float(arrays["ratio_db"][index]), gain=float(arrays["gain"][index]), clips=clips,
        ))
    return examples


def make_test_set(
    manifest: str | Path | Manifest,
    split: str = "test",
    kind: str = "keyword",
    n: int = 300,
    seed: int = 0,
    sample_rate: int = 44100,
    cache: str | Path | None = None,
    segment_seconds: float | None = None,
    load: Callable | None = None,
    progress: bool = False,
    balance_classes: bool = False,
) -> list[Example]:
    """Draw `n` test mixtures deterministically from one split, with the mixer's evaluation rules.

    Example `i` comes from a generator seeded with (seed, kind, i), so a set does not depend on how many
    examples are drawn after it. `kind` "keyword" gives the KA-like set, "caption" the DE-S-like set (see
    the module docstring). `segment_seconds` overrides the 10 s of the paper (for short tests); `load`
    replaces reading the clips' files (Mixer's `load`). `balance_classes` draws targets (and interferers) so
    that every class is equally likely (`MixerConfig.balance_classes`), for splits dominated by one class.

    With `cache` (a .npz path) the set is read from there when it was made from the same manifest file
    and settings, else drawn and written there atomically. Cached examples keep mixture, target, query,
    kind, ratio_db, gain and clips; their `interference` is mixture - target and their `sources` is
    (target, interference).
    """
    from training.data.manifest import Manifest, read_manifest
    from training.data.mixer import Mixer

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    cfg = dataclasses.replace(_mixer_config(kind, sample_rate, segment_seconds), balance_classes=balance_classes)
    identity = None
    if cache is not None:
        if isinstance(manifest, Manifest):
            raise ValueError("a cached test set needs the manifest's path, to recognise it later")
        identity = {"manifest_sha256": _file_sha256(Path(manifest)), "split": split, "kind": kind, "n": n,
                    "seed": seed, "sample_rate": sample_rate, "segment_seconds": cfg.segment_seconds}
        if balance_classes:
            identity["balance_classes"] = True
        cached = _load_test_set(Path(cache), identity)
        if cached is not None:
            return cached
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, check_audio=False)
    clips = manifest.split(split)
    if not clips:
        raise ValueError(f"manifest {manifest.path} has no clips in split {split!r}")
    mixer = Mixer(clips, cfg, load=load)
    from tqdm import tqdm

    examples = [mixer.sample(np.random.default_rng([seed, SEED_STREAMS[kind], index]))
                for index in tqdm(range(n), desc=f"drawing {TEST_SET_NAMES[kind]}", disable=not progress)]
    if cache is not None:
        _save_test_set(Path(cache), examples, identity)
    return examples


# ---------------------------------------------------------------------------------------------- the table


def _ordered_systems(results_by_testset: Mapping[str, EvalResults]) -> list[str]:
    names = [NO_PROCESSING, ORACLE_IRM]
    names += [name for name in QUERY_BLIND if any(name in results.scores for results in results_by_testset.values())]
    for results in results_by_testset.values():
        names += [name for name in results.systems if name not in names]
    return names


def _value(results: EvalResults, system: str, metric: str) -> float:
    return results.mean(system, metric) if system in results.scores else math.nan


def format_table(results_by_testset: Mapping[str, EvalResults],
                 reference_space: str = REFERENCE_SPACE) -> tuple[str, str]:
    """Table 2 of the paper: rows = systems, column groups SDR, SDRi, CLAPScore, CLAPScore_A, FAD, one
    column per test set. Means over examples (FAD per set). Returns (markdown, csv); the markdown ends with
    a footnote giving N per test set and the embedding space of each score (``reference_space``: that of the
    ``embed_frames`` the results were computed with).
    """
    sets = list(results_by_testset)
    if not sets:
        raise ValueError("no test sets to tabulate")
    systems = _ordered_systems(results_by_testset)
    headings = [f"{title} {name}" for title, _, _ in TABLE_COLUMNS for name in sets]
    lines = ["| System | " + " | ".join(headings) + " |", "|---|" + "---:|" * len(headings)]
    for system in systems:
        cells = []
        for _, metric, decimals in TABLE_COLUMNS:
            for name in sets:
                value = _value(results_by_testset[name], system, metric)
                cells.append("n/a" if math.isnan(value) else f"{value:.{decimals}f}")
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{name} N = {results.n}" for name, results in results_by_testset.items())
    dims = sorted({results.embedding_dim for results in results_by_testset.values()})
    footnote = (f"N (mixtures per test set): {sizes}. CLAPScore and CLAPScore_A are cosine similarities x 100. "
                f"CLAPScore (separated audio against the query text) is in the first bundle's CLAP space; "
                f"CLAPScore_A (separated against target audio) and FAD (separated against target frames) are in "
                f"{reference_space}, D = {', '.join(map(str, dims))}, independent of the models under test.")
    notes = [f"FAD n/a on {name}: {results.fad_note}" for name, results in results_by_testset.items()
             if results.fad_note]
    markdown = "\n".join(lines) + "\n\n" + "\n\n".join([footnote, *notes]) + "\n"

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["system", *(f"{metric}_{name}" for _, metric, _ in TABLE_COLUMNS for name in sets),
                     *(f"n_{name}" for name in sets)])
    for system in systems:
        values = [_value(results_by_testset[name], system, metric) for _, metric, _ in TABLE_COLUMNS
                  for name in sets]
        writer.writerow([system, *(f"{value:.6g}" for value in values),
                         *(results_by_testset[name].n for name in sets)])
    return markdown, buffer.getvalue()


def examples_csv(results: EvalResults) -> str:
    """The per-example scores of one test set as CSV text."""
    buffer = io.StringIO()
    columns = ["system", "index", "query", "kind", "ratio_db", *METRICS]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in results.example_rows():
        writer.writerow({key: f"{value:.6g}" if isinstance(value, float) else value for key, value in row.items()})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- bundles


def offline_system(separator: Separator, input_rate: int, hop_seconds: float | None = None,
                   lookahead_seconds: float | None = None, query_of: Callable[[str], Query] | None = None) -> System:
    """A separator (hybridsep_rt.engine.Separator protocol) as an evaluation system.

    The mixture is resampled to the separator's rate when needed, separated by weighted overlap-add of
    windows (`hybridsep_rt.overlap.separate_offline`, every covering window contributes) and brought back
    to `input_rate` and its length. `hop_seconds=None` hops by a whole window, so a mixture one window
    long is one model call. `lookahead_seconds` applies the streaming rule (a window contributes to a sample
    only if it ends at most hop + lookahead after it), so hop 1 s with lookahead 1 s scores exactly what
    `hybridsep stream` outputs at its defaults; None uses every covering window. `query_of` turns the test
    set's query into what the separator is asked (default: that text). Conditions are prepared once per
    distinct query.
    """
    from hybridsep_rt.engine import Query
    from hybridsep_rt.overlap import separate_offline
    from training.data.audio import fit_length, resample

    rate = separator.sample_rate
    hop = separator.window_samples if hop_seconds is None else int(round(hop_seconds * rate))
    lookahead = None if lookahead_seconds is None else int(round(lookahead_seconds * rate))
    query_of = query_of or (lambda text: Query(text=text))
    conditions: dict[str, Any] = {}

    def separate(mixture: np.ndarray, query: str) -> np.ndarray:
        if query not in conditions:
            conditions[query] = separator.prepare(query_of(query))
        wave = resample(np.asarray(mixture, dtype=np.float32), input_rate, rate)
        estimate = separate_offline(wave[None], separator, conditions[query], hop_samples=hop,
                                    lookahead_samples=lookahead)[0]
        return fit_length(resample(estimate, rate, input_rate), mixture.shape[0])

    return separate


def other_query_system(system: System, queries: Sequence[str]) -> System:
    """`system` given another query than the example's: the next of the test set's distinct queries in sorted
    order. Its row is the control of query use: a system that ignores the query scores the same there."""
    distinct = sorted(set(queries))
    if len(distinct) < 2:
        raise ValueError("the other-query control needs a test set with at least two distinct queries")
    other = {query: distinct[(i + 1) % len(distinct)] for i, query in enumerate(distinct)}
    return lambda mixture, query: system(mixture, other[query])


def class_of(clip: Clip) -> str:
    """A clip's class: its first keyword, compared case-insensitively as the mixer compares keywords."""
    return clip.keywords[0].strip().lower()


def example_clips(clips: Sequence[Clip], sample_rate: int) -> dict[str, np.ndarray]:
    """One example clip per class: the first clip of each class in `clips`, mono at `sample_rate`."""
    from training.data.audio import load_audio

    examples: dict[str, np.ndarray] = {}
    for clip in clips:
        if clip.keywords and class_of(clip) not in examples:
            examples[class_of(clip)] = load_audio(clip.path, sample_rate)
    return examples


def example_query_system(separator: Separator, input_rate: int, examples: Sequence[Example],
                         clips_by_class: Mapping[str, np.ndarray], hop_seconds: float | None = None,
                         lookahead_seconds: float | None = None) -> System:
    """`separator` queried by example: each mixture is separated with an example clip of its target's class
    (`clips_by_class`, at the separator's rate: e.g. `example_clips` of another split, so never a clip of the
    mixture itself) instead of the text. A query's class is that of the targets it was drawn for; one query
    naming two classes is an error."""
    from hybridsep_rt.engine import Query

    classes: dict[str, str] = {}
    for example in examples:
        if not example.clips:
            raise ValueError("query by example needs test examples that record their clips")
        label = class_of(example.clips[0])
        if classes.setdefault(example.query, label) != label:
            raise ValueError(f"the query {example.query!r} names two classes, {classes[example.query]!r} and "
                             f"{label!r}: query by example cannot tell which clip to use")
    missing = sorted(set(classes.values()) - set(clips_by_class))
    if missing:
        raise ValueError(f"no example clip for the classes {missing}")
    return offline_system(separator, input_rate, hop_seconds, lookahead_seconds,
                          lambda query: Query(example=clips_by_class[classes[query]]))


def clap_embedders(separator: Any, input_rate: int) -> tuple[EmbedAudio, EmbedText]:
    """The CLAPScore embedders of a bundle: its own `audio_encoder.onnx` and `text_encoder.onnx`.

    `separator` is an `OnnxSeparator` (or anything with its `sample_rate`, `embed_audio(clip (N,)) -> (1, D)`
    and `embed_text(text) -> (1, D)`). Returns `embed_audio` ((B, N) waves at `input_rate`, resampled to the
    separator's rate, -> (B, D)) and `embed_text` (B texts -> (B, D)).
    """
    from training.data.audio import resample

    rate = separator.sample_rate

    def embed_audio(waves: np.ndarray) -> np.ndarray:
        waves = resample(np.asarray(waves, dtype=np.float32), input_rate, rate)
        return np.concatenate([np.asarray(separator.embed_audio(wave)).reshape(1, -1) for wave in waves])

    def embed_text(texts: list[str]) -> np.ndarray:
        return np.concatenate([np.asarray(separator.embed_text(text)).reshape(1, -1) for text in texts])

    return embed_audio, embed_text


def yamnet_frames(input_rate: int, threads: int | None = None) -> EmbedFrames:
    """The reference embedder: YAMNet's 1024-d embeddings of 0.96 s frames (three cells of its last map pooled,
    as YAMNet pools a patch; the cells left over at the end dropped), (B, N) waves at ``input_rate`` ->
    (B, frames, 1024). A wave shorter than three cells gives one frame of all its cells."""
    import torch

    from training.models.yamnet import LAYERS, PATCH_CELLS, YAMNet

    model = YAMNet(input_rate, classifier=False).eval()

    def embed_frames(waves: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            cells = model.frame_features(torch.from_numpy(np.asarray(waves, dtype=np.float32)), len(LAYERS))
        batch, count, dim = cells.shape
        frames = max(1, count // PATCH_CELLS)
        used = cells[:, : frames * PATCH_CELLS] if count >= PATCH_CELLS else cells
        return used.reshape(batch, frames, -1, dim).mean(dim=2).numpy()

    return embed_frames


def evaluate_separators(
    separators: Mapping[str, Separator],
    manifest: str | Path,
    split: str = "test",
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    hop_seconds: float | None = None,
    segment_seconds: float | None = None,
    lookahead_seconds: float | None = None,
    progress: bool = True,
    other_query: str | None = None,
    example_query: str | None = None,
    example_split: str = "valid",
    query_blind: bool = False,
    balance_classes: bool = False,
) -> dict[str, EvalResults]:
    """Evaluate separators on the KA and DE-S-like sets drawn at the first separator's rate.

    `sizes` maps "keyword" / "caption" to the number of mixtures (0 skips the set; default 300 each).
    CLAPScore uses the first separator's CLAP (`clap_embedders`), CLAPScore_A and FAD YAMNet (`yamnet_frames`).
    `other_query` names a separator that also gets a control row, "NAME, other query" (`other_query_system`).
    `example_query` names one that also gets a row "NAME, example clip": queried by the first clip of the
    target's class in `example_split` (`example_query_system`).
    """
    if not separators:
        raise ValueError("no separators to evaluate")
    for flag, name in (("--other-query", other_query), ("--example-query", example_query)):
        if name is not None and name not in separators:
            raise ValueError(f"{flag} {name!r} is not one of the bundles {sorted(separators)}")
    if example_query is not None and example_split == split:
        raise ValueError(f"the example clips must come from another split than the test mixtures ({split!r})")
    sizes = dict(sizes or {"keyword": 300, "caption": 300})
    first = next(iter(separators.values()))
    rate = first.sample_rate
    systems = {name: offline_system(separator, rate, hop_seconds, lookahead_seconds)
               for name, separator in separators.items()}
    embed_audio, embed_text = clap_embedders(first, rate)
    embed_frames = yamnet_frames(rate)
    clips_by_class = {}
    if example_query is not None:
        from training.data.manifest import read_manifest

        clips_by_class = example_clips(read_manifest(manifest, check_audio=False).split(example_split),
                                       separators[example_query].sample_rate)
        if not clips_by_class:
            raise ValueError(f"manifest {manifest} has no labelled clips in split {example_split!r} "
                             "for query by example")
    results = {}
    for kind, n in sizes.items():
        if n <= 0:
            continue
        name = TEST_SET_NAMES[kind]
        cache = None
        if cache_dir is not None:
            balanced = "_balanced" if balance_classes else ""
            cache = Path(cache_dir) / f"{kind}_{split}_n{n}_seed{seed}_{rate}hz{balanced}.npz"
        examples = make_test_set(manifest, split, kind, n, seed, rate, cache=cache,
                                 segment_seconds=segment_seconds, progress=progress, balance_classes=balance_classes)
        rows = dict(systems)
        if other_query is not None:
            rows[f"{other_query}, other query"] = other_query_system(systems[other_query],
                                                                     [example.query for example in examples])
        if example_query is not None:
            rows[f"{example_query}, example clip"] = example_query_system(
                separators[example_query], rate, examples, clips_by_class, hop_seconds, lookahead_seconds)
        results[name] = evaluate(rows, examples, embed_audio, embed_text, embed_frames, progress=progress,
                                 description=f"evaluating {name}", query_blind=query_blind)
    return results


def summary(results_by_testset: Mapping[str, EvalResults]) -> dict:
    """The table as a JSON-able dict: test set -> {"n", "systems": system -> metric -> mean}; NaN -> None.
    `hybridsep export --evaluation table.json` records it in a bundle's manifest."""
    def number(value: float) -> float | None:
        return None if math.isnan(value) else round(float(value), 4)

    return {name: {"n": results.n,
                   "systems": {system: {metric: number(_value(results, system, metric))
                                        for _, metric, _ in TABLE_COLUMNS} for system in results.systems}}
            for name, results in results_by_testset.items()}


def write_report(results_by_testset: Mapping[str, EvalResults], out_dir: str | Path) -> str:
    """Write table.md, table.csv, table.json (`summary`) and examples_<set>.csv atomically into `out_dir`;
    returns the markdown."""
    from hybridsep_rt.atomic import atomic_write_text

    out_dir = Path(out_dir)
    markdown, table_csv = format_table(results_by_testset)
    atomic_write_text(out_dir / "table.md", markdown)
    atomic_write_text(out_dir / "table.csv", table_csv)
    atomic_write_text(out_dir / "table.json", json.dumps(summary(results_by_testset), indent=2) + "\n")
    for name, results in results_by_testset.items():
        atomic_write_text(out_dir / f"examples_{name}.csv", examples_csv(results))
    return markdown


# ---------------------------------------------------------------------------------------------- command line


def _bundle(text: str) -> tuple[str, Path]:
    """--bundle NAME=DIR."""
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name.strip(), Path(folder)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, required=True, help="clip manifest (JSON Lines)")
    parser.add_argument("--split", default="test", help="manifest split to draw the test mixtures from (default: test)")
    parser.add_argument("--bundle", type=_bundle, action="append", required=True, metavar="NAME=DIR",
                        help="a model bundle to evaluate, as a table row NAME; repeat for more. "
                             "CLAPScores use the first bundle's CLAP encoders")
    parser.add_argument("--keyword-n", type=_count, default=300, metavar="N",
                        help="mixtures in the KA (keyword) test set, 0 to skip it (default: 300)")
    parser.add_argument("--caption-n", type=_count, default=300, metavar="N",
                        help="mixtures in the DE-S-like (caption) test set, 0 to skip it (default: 300)")
    parser.add_argument("--seed", type=_count, default=0, help="seed of the test mixtures (default: 0)")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="OUTDIR",
                        help="folder for table.md, table.csv and the per-example CSVs")
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR",
                        help="keep the drawn test sets as .npz files here and reuse them")
    parser.add_argument("--hop-seconds", type=float, default=None,
                        help="hop between model windows (default: one window, so a 10 s mixture is one call)")
    parser.add_argument("--lookahead-seconds", type=float, default=None,
                        help="score what streaming outputs: a window counts for a sample only up to hop + lookahead "
                             "after it (`hybridsep stream` defaults: --hop-seconds 1 --lookahead-seconds 1); "
                             "default: every covering window")
    parser.add_argument("--other-query", metavar="NAME", default=None,
                        help="add a control row for bundle NAME separating every mixture with another class's query "
                             "(the next distinct query of the test set): a model that ignores the query scores the "
                             "same there")
    parser.add_argument("--example-query", metavar="NAME", default=None,
                        help="add a row for bundle NAME queried by example: each mixture separated with a clip of "
                             "its target's class from --example-split instead of the text")
    parser.add_argument("--example-split", default="valid", metavar="SPLIT",
                        help="manifest split of the example clips, the first clip of each class (default: valid)")
    parser.add_argument("--query-blind", action="store_true",
                        help=f"add the query-blind rows {HALF_GAIN!r} and {ORACLE_GAIN!r} (the mixture at the best "
                             "scalar gain for each mixture): the scores a separator that ignores the query could reach")
    parser.add_argument("--balance-classes", action="store_true",
                        help="draw the test mixtures' targets class-balanced (every class equally likely, not every "
                             "clip): for splits where one class dominates, like the real corpus's speech")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Evaluate the bundles; returns 0, or EXIT_USAGE after printing what went wrong."""
    from hybridsep_rt.bundle import BundleError
    from hybridsep_rt.separator import OnnxSeparator

    names = [name for name, _ in args.bundle]
    if len(set(names)) != len(names) or set(REFERENCE_ROWS) & set(names):
        return _fail(f"bundle names must be distinct and none of {list(REFERENCE_ROWS)}: {names}")
    if args.keyword_n == 0 and args.caption_n == 0:
        return _fail("--keyword-n and --caption-n are both 0: nothing to evaluate")
    try:
        separators = {name: OnnxSeparator(folder) for name, folder in args.bundle}
        results = evaluate_separators(
            separators, args.manifest, args.split, {"keyword": args.keyword_n, "caption": args.caption_n},
            args.seed, args.cache, args.hop_seconds, lookahead_seconds=args.lookahead_seconds,
            progress=not args.quiet, other_query=args.other_query, example_query=args.example_query,
            example_split=args.example_split, query_blind=args.query_blind, balance_classes=args.balance_classes,
        )
    except (BundleError, OSError, ValueError) as error:
        return _fail(str(error))
    print(write_report(results, args.out))
    print(f"wrote {args.out / 'table.md'}, table.csv, table.json and the per-example CSVs")
    return 0


def _fail(message: str) -> int:
    print(f"hybridsep eval: error: {message}", file=sys.stderr)
    return EXIT_USAGE

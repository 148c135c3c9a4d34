"""The real-recording corpus: labelled sounds and speech harvested from installed Debian packages.

    hybridsep corpus real --out DIR [--packages P ...] [--workers N] [--quiet]

The packages, the files read from each, and how each file is labelled are the data file `real_rules.toml`
(training.data.real_rules). For each package the builder

1. lists its files as dpkg does (/var/lib/dpkg/info/PKG.list) and the members of its zip archives;
2. refuses reserved packages and paths (real_rules.RESERVED_PACKAGES / RESERVED_PATHS) with a clear error;
3. decodes each labelled file (soundfile; ffmpeg for raw G.722 and GSM), mixes it to mono, brings rates above
   48 kHz to 44.1 kHz, peak-normalises it to -1 dBFS like the synthetic corpus and writes it as 16-bit FLAC
   under DIR/audio/PKG/...; a file that cannot be decoded, or is silent or shorter than MIN_SECONDS, is
   reported with its path and skipped;
4. de-duplicates by content (the SHA-256 of the decoded, normalised samples): of identical recordings one is
   kept, the one of the earliest split (train, valid, test), so no recording is in two splits;
5. writes DIR/manifest.jsonl (training.data.manifest rows, plus package, licence, family, speaker, language,
   sex, sha256 and origin), DIR/summary.json (clips and minutes per split and class, the skipped files) and
   DIR/classes.md (that class table in Markdown).

Splits follow the families of `real_rules.toml`: every file of a family (recordings that share takes, a
speaker, a drum kit) lies in the family's split, so the splits are disjoint by family and by content.
Each decoded file is recorded in DIR/scan.jsonl as it is written: a rerun skips the files already done.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import xml.etree.ElementTree as ElementTree
import zipfile
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from hybridsep_rt.atomic import atomic_write_text
from training.data.audio import resample, write_audio
from training.data.generation import CorpusError
from training.data.manifest import CLIP_PEAK, SILENCE_PEAK, Clip, write_manifest
from training.data.real_rules import ARCHIVE_SEPARATOR, SPLIT_NAMES, Label, Rules, RulesError, reserved_reason

DPKG_INFO = Path("/var/lib/dpkg/info")
AUDIO_SUFFIXES = (".wav", ".ogg", ".oga", ".flac", ".aif", ".aiff", ".opus", ".g722", ".gsm")
ARCHIVE_SUFFIXES = (".pk3", ".orgue", ".zip")
FFMPEG_FORMATS = {".g722": ["-f", "g722"], ".gsm": ["-f", "gsm", "-ar", "8000"]}  # raw streams, no header
MAX_RATE = 48000  # files above it (96 kHz drum samples, mis-encoded 128 kHz letters) are brought to RESAMPLE_RATE
RESAMPLE_RATE = 44100
MIN_SECONDS = 0.05  # shorter files (a few clicks) are skipped
MANIFEST_NAME = "manifest.jsonl"
SCAN_NAME = "scan.jsonl"
SUMMARY_NAME = "summary.json"
CLASSES_NAME = "classes.md"
SPLIT_RANK = {split: rank for rank, split in enumerate(SPLIT_NAMES)}


@dataclass(frozen=True)
class Source:
    """One labelled file of a package, before decoding."""

    package: str
    path: str  # as dpkg lists it; ARCHIVE!MEMBER for a member of a zip archive
    label: Label
    captions: tuple[str, ...]

    @property
    def relative_output(self) -> str:
        return f"audio/{self.package}/{self.path.lstrip('/').replace(ARCHIVE_SEPARATOR, '/')}.flac"


def package_files(package: str, info_dir: Path = DPKG_INFO) -> list[str]:
    """The audio and archive files dpkg lists for an installed package (sorted), and members of its archives."""
    reason = reserved_reason(package=package)
    if reason:
        raise CorpusError(reason)
    listing = Path(info_dir) / f"{package}.list"
    if not listing.is_file():
        listing = next(Path(info_dir).glob(f"{package}:*.list"), listing)
    if not listing.is_file():
        raise CorpusError(f"package {package} is not installed (no {listing}); `make corpus-packages` installs "
                          "the corpus's packages")
    files = []
    for line in listing.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        suffix = PurePosixPath(line).suffix.lower()
        if suffix in AUDIO_SUFFIXES:
            files.append(line)
        elif suffix in ARCHIVE_SUFFIXES and os.path.isfile(line):
            try:
                with zipfile.ZipFile(line) as archive:
                    files += [f"{line}{ARCHIVE_SEPARATOR}{name}" for name in archive.namelist()
                              if PurePosixPath(name).suffix.lower() in AUDIO_SUFFIXES]
            except zipfile.BadZipFile:
                continue  # not a zip archive: nothing to read in it
    return sorted(files)


class _Texts:
    """The texts some packages ship beside their audio, read once per folder."""

    def __init__(self):
        self._drumkits: dict[str, dict[str, str]] = {}
        self._festvox: dict[str, dict[str, str]] = {}

    def instrument(self, path: str) -> str | None:
        """Hydrogen: the name drumkit.xml gives the instrument a sample file belongs to."""
        folder = os.path.dirname(path)
        if folder not in self._drumkits:
            names = {}
            try:
                root = ElementTree.parse(os.path.join(folder, "drumkit.xml")).getroot()
            except (OSError, ElementTree.ParseError):
                root = None
            if root is not None:
                for element in root.iter():
                    if element.tag.rsplit("}", 1)[-1] != "instrument":
                        continue
                    name = next((child.text for child in element if child.tag.rsplit("}", 1)[-1] == "name"), None)
                    for child in element.iter():
                        if child.tag.rsplit("}", 1)[-1] == "filename" and child.text and name:
                            names.setdefault(child.text.strip(), name.strip())
            self._drumkits[folder] = names
        return self._drumkits[folder].get(os.path.basename(path))

    def festvox(self, path: str) -> str | None:
        """festvox: the transcript of a prompt in etc/txt.done.data."""
        folder = str(Path(path).parent.parent / "etc" / "txt.done.data")
        if folder not in self._festvox:
            lines = {}
            try:
                for match in re.finditer(r'\(\s*(\S+)\s+"(.*?)"\s*\)', Path(folder).read_text(encoding="utf-8")):
                    lines[match.group(1)] = match.group(2).replace("+", "")
            except OSError:
                pass
            self._festvox[folder] = lines
        return self._festvox[folder].get(Path(path).stem)


def _tuxpaint_text(path: str, language: str | None) -> str | None:
    """Tux Paint: a stamp's description in its .txt (the first line is English, then LL.utf8=TEXT lines)."""
    stem = PurePosixPath(path).stem
    match = re.match(r"(.*?)_desc(?:_([A-Za-z]+(?:_[A-Z]{2})?))?$", stem)
    base, code = (match.group(1), match.group(2)) if match else (stem, None)
    try:
        lines = Path(PurePosixPath(path).parent / f"{base}.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines:
        return None
    if code:
        for line in lines[1:]:
            key, _, text = line.partition("=")
            if key in (f"{code}.utf8", f"{code}_{code.upper()}.utf8") and text.strip():
                return text.strip()
    return lines[0].strip() or None


def captions_for(rules: Rules, source_path: str, label: Label, style: str | None, texts: _Texts) -> list[str]:
    """Captions from the label, and from the texts the package ships where it has any."""
    if label.cls == "Speech":
        who = {"female": "a woman", "male": "a man"}.get(label.sex or "", "someone")
        captions = [f"{who} speaking {label.language}" if label.language else f"{who} speaking"]
        text = None
        if style == "tuxpaint":
            text = _tuxpaint_text(source_path, None)
        elif style == "festvox":
            text = texts.festvox(source_path)
        if text:
            captions.append(f"{who} saying: {text}")
        return captions
    phrase = rules.classes[label.cls].get("caption", label.cls.lower())
    captions = [f"the sound of {phrase}"]
    if style == "tuxpaint":
        text = _tuxpaint_text(source_path, None)
        if text:
            captions.append(f"the sound of {text.rstrip('.').strip()[:1].lower()}{text.rstrip('.').strip()[1:]}")
    return captions


def plan_sources(rules: Rules, packages: Sequence[str], info_dir: Path = DPKG_INFO) -> tuple[list[Source], dict]:
    """The labelled files of the packages, and per package how many files were read and left unlabelled."""
    texts = _Texts()
    sources, counts = [], {}
    for package in packages:
        package_rules = rules.package(package)
        listed = package_files(package, info_dir)
        wanted = [path for path in listed if package_rules.wants(path)]
        labelled = 0
        for path in wanted:
            reason = reserved_reason(path=path)
            if reason:
                raise CorpusError(reason)
            instrument = texts.instrument(path) if package_rules.text == "drumkit" else None
            label = rules.label(package, path, instrument)
            if label is None:
                continue
            labelled += 1
            captions = captions_for(rules, path, label, package_rules.captions, texts)
            sources.append(Source(package, path, label, tuple(captions)))
        counts[package] = {"listed": len(listed), "read": len(wanted), "unlabelled": len(wanted) - labelled}
    return sources, counts


# ---------------------------------------------------------------------------------------------- decoding


def _ffmpeg(input_options: list[str], path: str, rate: int, data: bytes | None = None) -> tuple[np.ndarray, int]:
    """Decode with ffmpeg (from `data` on stdin when given) to mono float32 at `rate`. Raises ValueError."""
    command = ["ffmpeg", "-v", "error", "-nostdin" if data is None else "-hide_banner", *input_options,
               "-i", "-" if data is not None else path, "-f", "f32le", "-ac", "1", "-ar", str(rate), "-"]
    try:
        result = subprocess.run(command, input=data, capture_output=True, timeout=120)
    except FileNotFoundError:
        raise ValueError("ffmpeg is not installed (it decodes G.722, GSM and WavPack): apt-get install ffmpeg") from None
    if result.returncode != 0:
        raise ValueError(f"cannot decode it: {result.stderr.decode(errors='replace').strip()[:200]}")
    return np.frombuffer(result.stdout, dtype=np.float32)[None], rate


def read_source(path: str) -> tuple[np.ndarray, int]:
    """Decode a file (or ARCHIVE!MEMBER): float32 (channels, samples) and its rate. Raises ValueError.

    soundfile reads what libsndfile knows; ffmpeg reads raw G.722 (16 kHz) and GSM (8 kHz), and is the fallback
    for other formats (WavPack inside GrandOrgue packages), decoded at RESAMPLE_RATE."""
    archive, _, member = path.partition(ARCHIVE_SEPARATOR)
    suffix = PurePosixPath(member or archive).suffix.lower()
    if suffix in FFMPEG_FORMATS:
        return _ffmpeg(FFMPEG_FORMATS[suffix], archive, 16000 if suffix == ".g722" else 8000)
    data = None
    try:
        if member:
            with zipfile.ZipFile(archive) as zipped:
                data = zipped.read(member)
            frames, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        else:
            frames, rate = sf.read(archive, dtype="float32", always_2d=True)
    except (zipfile.BadZipFile, KeyError) as error:
        raise ValueError(f"cannot read it from its archive: {error}") from None
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        try:
            return _ffmpeg([], archive, RESAMPLE_RATE, data)
        except ValueError:
            raise ValueError(f"cannot decode it: {error}") from None
    return frames.T, rate


def prepare(wave: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """Mono, at most MAX_RATE, peak-normalised to CLIP_PEAK; raises ValueError for silent, short or bad audio."""
    mono = np.asarray(wave, dtype=np.float64).mean(axis=0)
    if mono.size == 0:
        raise ValueError("it holds no samples")
    if not np.all(np.isfinite(mono)):
        raise ValueError("it holds NaN or Inf samples")
    if rate > MAX_RATE:
        mono, rate = resample(mono.astype(np.float32), rate, RESAMPLE_RATE).astype(np.float64), RESAMPLE_RATE
    if mono.size < MIN_SECONDS * rate:
        raise ValueError(f"it is shorter than {MIN_SECONDS} s ({mono.size} samples at {rate} Hz)")
    peak = float(np.max(np.abs(mono)))
    if peak < SILENCE_PEAK:
        raise ValueError("it is silent (peak below -80 dBFS)")
    return (mono * (CLIP_PEAK / peak)).astype(np.float32), rate


def content_hash(wave: np.ndarray) -> str:
    """SHA-256 of the 16-bit samples a prepared wave is stored as."""
    return hashlib.sha256(np.round(wave * 32767.0).astype("<i2").tobytes()).hexdigest()


def convert(job: tuple[str, str]) -> dict:
    """Decode one file and write it to `output`; returns its scan record (with "error" when it was skipped)."""
    path, output = job
    try:
        wave, rate = prepare(*read_source(path))
        write_audio(output, wave, rate)
    except (ValueError, OSError) as error:
        return {"source": path, "error": str(error)}
    return {"source": path, "sha256": content_hash(wave), "duration": round(wave.size / rate, 4),
            "sample_rate": int(rate)}


# ---------------------------------------------------------------------------------------------- building


def _read_scan(path: Path) -> dict[str, dict]:
    """The records of earlier runs (a line cut short by an interruption is ignored)."""
    records = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["source"]] = record
    return records


def _decode_all(sources: Sequence[Source], out_dir: Path, workers: int, progress: bool) -> dict[str, dict]:
    scan_path = out_dir / SCAN_NAME
    records = _read_scan(scan_path)
    pending = [source for source in sources
               if source.path not in records
               or ("error" not in records[source.path] and not (out_dir / source.relative_output).is_file())]
    jobs = [(source.path, str(out_dir / source.relative_output)) for source in pending]
    with open(scan_path, "a", encoding="utf-8") as scan, \
            tqdm(total=len(sources), initial=len(sources) - len(pending), unit="file", desc="real corpus",
                 disable=not progress) as bar:
        def keep(record: dict) -> None:
            records[record["source"]] = record
            scan.write(json.dumps(record, ensure_ascii=False) + "\n")
            scan.flush()
            if "error" in record:
                tqdm.write(f"skipped {record['source']}: {record['error']}")
            bar.update()

        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                keep(convert(job))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for record in pool.map(convert, jobs, chunksize=16):
                    keep(record)
    return records


def _deduplicate(sources: Sequence[Source], records: dict[str, dict]) -> tuple[list[Source], int]:
    """One source per content hash: the one of the earliest split, then the first by package and path."""
    by_hash: dict[str, list[Source]] = defaultdict(list)
    for source in sources:
        record = records.get(source.path, {})
        if "sha256" in record:
            by_hash[record["sha256"]].append(source)
    kept = [min(group, key=lambda s: (SPLIT_RANK[s.label.split], s.package, s.path)) for group in by_hash.values()]
    kept.sort(key=lambda s: (s.package, s.path))
    return kept, sum(len(group) - 1 for group in by_hash.values())


def _row_extras(source: Source, rules: Rules, record: dict) -> dict:
    label = source.label
    extras = {"package": source.package, "licence": rules.packages[source.package].licence,
              "family": label.family, "sha256": record["sha256"], "origin": source.path}
    for key in ("speaker", "language", "sex"):
        value = getattr(label, key)
        if value:
            extras[key] = value
    return extras


def write_real_manifest(path: Path, rows: Iterable[tuple[Clip, dict]]) -> Path:
    """write_manifest with the real corpus's extra fields on each row."""
    from hybridsep_rt.atomic import atomic_path

    root = path.resolve().parent
    with atomic_path(path) as temp:
        with open(temp, "w", encoding="utf-8") as out:
            for clip, extras in rows:
                out.write(json.dumps({**clip.to_row(root), **extras}, ensure_ascii=False) + "\n")
    return path


def summarise(rows: Sequence[dict]) -> dict:
    """Per split and class: clips, minutes, packages and distinct families/speakers."""
    table: dict = {}
    for row in rows:
        entry = table.setdefault(row["split"], {}).setdefault(
            row["keywords"][0], {"clips": 0, "minutes": 0.0, "packages": set()})
        entry["clips"] += 1
        entry["minutes"] += row["duration"] / 60.0
        entry["packages"].add(row["package"])
    return {split: {cls: {"clips": entry["clips"], "minutes": round(entry["minutes"], 2),
                          "packages": sorted(entry["packages"])} for cls, entry in sorted(classes.items())}
            for split, classes in table.items()}


def class_table(classes: dict) -> str:
    """Markdown: one row per class, clips and minutes in each split, and the packages it comes from."""
    splits = [split for split in SPLIT_NAMES if split in classes]
    names = sorted({cls for split in splits for cls in classes[split]},
                   key=lambda cls: (-sum(classes[s].get(cls, {}).get("minutes", 0.0) for s in splits), cls))
    lines = ["| class | " + " | ".join(f"{split} clips | {split} min" for split in splits) + " | packages |",
             "|---|" + "---:|---:|" * len(splits) + "---|"]
    for cls in names:
        cells, packages = [], set()
        for split in splits:
            entry = classes[split].get(cls)
            cells += [str(entry["clips"]), f"{entry['minutes']:.1f}"] if entry else ["0", "0"]
            packages |= set(entry["packages"]) if entry else set()
        lines.append(f"| {cls} | " + " | ".join(cells) + f" | {', '.join(sorted(packages))} |")
    totals = []
    for split in splits:
        totals += [str(sum(e["clips"] for e in classes[split].values())),
                   f"{sum(e['minutes'] for e in classes[split].values()):.1f}"]
    lines.append("| **all** | " + " | ".join(totals) + " | |")
    return "\n".join(lines) + "\n"


def default_packages(rules: Rules, info_dir: Path = DPKG_INFO) -> list[str]:
    """The packages of the rules file that are installed."""
    return [name for name in rules.packages if (Path(info_dir) / f"{name}.list").is_file()]


def build_real_corpus(out_dir: str | os.PathLike, packages: Sequence[str] | None = None,
                      rules: Rules | str | os.PathLike | None = None, info_dir: str | os.PathLike = DPKG_INFO,
                      workers: int | None = None, progress: bool = True) -> Path:
    """Build (or finish) the real corpus in `out_dir`; returns the manifest's path.

    `packages` default to those of the rules that are installed. Raises CorpusError for a reserved package or
    path, a package without rules or not installed.
    """
    out_dir, info_dir = Path(out_dir), Path(info_dir)
    try:
        rules = rules if isinstance(rules, Rules) else Rules(rules) if rules is not None else Rules()
        for package in packages or ():
            reason = reserved_reason(package=package)
            if reason:
                raise CorpusError(reason)
            rules.package(package)
        packages = list(packages) if packages else default_packages(rules, info_dir)
        sources, counts = plan_sources(rules, packages, info_dir)
    except RulesError as error:
        raise CorpusError(str(error)) from None
    if not sources:
        raise CorpusError(f"no labelled files in the packages {packages}")
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers or os.cpu_count() or 1)
    records = _decode_all(sources, out_dir, workers, progress)
    kept, duplicates = _deduplicate(sources, records)
    rows = []
    for source in kept:
        record = records[source.path]
        clip = Clip(path=out_dir / source.relative_output, keywords=[source.label.cls],
                    captions=list(source.captions), source=f"debian:{source.package}", split=source.label.split,
                    duration=record["duration"], sample_rate=record["sample_rate"])
        rows.append((clip, _row_extras(source, rules, record)))
    manifest = write_real_manifest(out_dir / MANIFEST_NAME, rows)
    written = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    planned = {source.path for source in sources}
    skipped = [{"path": path, "reason": record["error"]} for path, record in sorted(records.items())
               if "error" in record and path in planned]
    summary = {"packages": counts, "duplicates_dropped": duplicates, "skipped": skipped,
               "classes": summarise(written)}
    atomic_write_text(out_dir / SUMMARY_NAME, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / CLASSES_NAME, class_table(summary["classes"]))
    return manifest

"""The local corpus: a real (small) build with fluidsynth and espeak-ng, checked end to end."""

import shutil
import struct
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hybridsep_rt import cli
from training.data.corpus import CATEGORIES, CorpusError, build_corpus, plan_corpus, render_clip
from training.data.generation import CLIP_SECONDS
from training.data.manifest import CLIP_PEAK, SPLITS, read_manifest
from training.data.midi import INSTRUMENTS_BY_KEYWORD, Note, find_soundfont, instrument_notes, midi_file
from training.data.mixer import MixtureDataset

SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")  # Debian timgm6mb-soundfont
HOURS = 0.05  # 18 clips

needs_tools = pytest.mark.skipif(
    not (SOUNDFONT.is_file() and shutil.which("fluidsynth") and shutil.which("espeak-ng")),
    reason="needs apt packages fluidsynth, espeak-ng and timgm6mb-soundfont",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    start = time.perf_counter()
    manifest = build_corpus(out, hours=HOURS, seed=0, soundfont=SOUNDFONT, progress=False, workers=2)
    print(f"corpus build of {HOURS} h took {time.perf_counter() - start:.1f} s")
    return out, manifest


@needs_tools
def test_build_gives_a_valid_manifest(built):
    out, manifest = built
    assert manifest == out / "manifest.jsonl"
    result = read_manifest(manifest, on_error="raise")
    assert len(result.clips) == 18
    sizes = {split: len(result.split(split)) for split in SPLITS}
    assert sizes == {"train": 14, "valid": 2, "test": 2}
    paths = [clip.path for clip in result.clips]
    assert len(set(paths)) == len(paths)
    for clip in result.clips:
        assert clip.path.parent.name == clip.split
        assert clip.keywords and clip.captions
        assert clip.source in {"fluidsynth", "espeak-ng", "numpy"}
        wave, rate = sf.read(clip.path, dtype="float32", always_2d=True)
        assert rate == 44100 and wave.shape == (441000, 1)
        assert np.max(np.abs(wave)) == pytest.approx(CLIP_PEAK, abs=1e-3)
        assert np.sqrt(np.mean(wave**2)) > 10 ** (-40 / 20)  # well above silence
    assert not list(out.rglob(".*.part"))


@needs_tools
def test_clips_are_deterministic(built, tmp_path):
    out, _ = built
    plans = plan_corpus(HOURS, seed=0)
    chosen = [next(plan for plan in plans if plan.split == split) for split in SPLITS]
    for plan in chosen:
        assert render_clip(plan, tmp_path, SOUNDFONT)
        assert (tmp_path / plan.relative_path).read_bytes() == (out / plan.relative_path).read_bytes()


@needs_tools
def test_every_generator_is_deterministic(tmp_path):
    plans = plan_corpus(1.0, seed=5)
    chosen = {}
    for plan in plans:  # one instrument, one drum kit, one voice, one numpy sound
        key = "drums" if plan.category.name == "drum kit" else plan.category.generator
        chosen.setdefault(key, plan)
    assert set(chosen) == {"instrument", "drums", "speech", "sound"}
    for name in ("a", "b"):
        for plan in chosen.values():
            assert render_clip(plan, tmp_path / name, SOUNDFONT)
    for plan in chosen.values():
        data = (tmp_path / "a" / plan.relative_path).read_bytes()
        assert data == (tmp_path / "b" / plan.relative_path).read_bytes()
        wave, rate = sf.read(tmp_path / "a" / plan.relative_path)
        assert rate == 44100 and wave.shape == (441000,) and np.max(np.abs(wave)) > 0.5


@needs_tools
def test_rebuild_is_resumable(built):
    out, manifest = built
    clips = sorted(path for split in SPLITS for path in (out / split).iterdir())
    before = {path: path.stat().st_mtime_ns for path in clips}
    text = manifest.read_text()
    build_corpus(out, hours=HOURS, seed=0, soundfont=SOUNDFONT, progress=False, workers=2)
    assert {path: path.stat().st_mtime_ns for path in clips} == before  # nothing rewritten
    assert manifest.read_text() == text
    removed = clips[3]
    data = removed.read_bytes()
    removed.unlink()
    build_corpus(out, hours=HOURS, seed=0, soundfont=SOUNDFONT, progress=False, workers=1)
    assert removed.read_bytes() == data
    assert all(path.stat().st_mtime_ns == before[path] for path in clips if path != removed)
    assert manifest.read_text() == text


@needs_tools
def test_mixtures_from_the_built_corpus(built):
    _, manifest = built
    dataset = MixtureDataset(manifest, "train", sample_rate=44100, seed=0)
    assert len(dataset) == 14
    for index in range(4):
        item = dataset[index]
        assert item["mixture"].shape == (441000,)
        assert float(item["mixture"].abs().max()) <= 0.9 + 1e-6
        assert item["query"]


@needs_tools
def test_folder_of_another_seed_is_refused(built):
    out, _ = built
    with pytest.raises(CorpusError, match="another --out"):
        build_corpus(out, hours=HOURS, seed=1, soundfont=SOUNDFONT, progress=False)


@needs_tools
def test_cli_builds_a_corpus(tmp_path, capsys):
    status = cli.main(["corpus", "build", "--out", str(tmp_path), "--hours", "0.01", "--seed", "1",
                       "--soundfont", str(SOUNDFONT), "--quiet"])
    assert status == 0
    manifest = tmp_path / "manifest.jsonl"
    assert f"manifest: {manifest}" in capsys.readouterr().out
    result = read_manifest(manifest, on_error="raise")
    assert {split: len(result.split(split)) for split in SPLITS} == {"train": 2, "valid": 1, "test": 1}
    assert all(clip.path.is_file() for clip in result.clips)


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    def build(*options):
        return cli.main(["corpus", "build", "--quiet", *options])

    out = str(tmp_path / "out")
    assert build("--out", out, "--hours", "0.05", "--seed", "0", "--soundfont", str(tmp_path / "none.sf2")) == 2
    err = capsys.readouterr().err
    assert "error: no soundfont at" in err and "fluid-soundfont-gm" in err and "Traceback" not in err
    assert build("--out", out, "--hours", "0.001", "--seed", "0") == 2
    assert "cannot fill three splits" in capsys.readouterr().err
    a_file = tmp_path / "file.sf2"  # serves as the soundfont (only its existence is checked before) and
    a_file.write_text("")  # as a parent folder that cannot be created
    assert build("--out", str(a_file / "out"), "--hours", "0.05", "--seed", "0", "--soundfont", str(a_file)) == 2
    assert "Not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses a negative seed
        build("--out", out, "--hours", "0.05", "--seed", "-1")
    assert exit_info.value.code == 2
    assert "--seed: must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_plan_balances_classes_and_separates_seeds():
    plans = plan_corpus(1.5, seed=0)  # 540 clips: 20 per class
    sizes = Counter(plan.split for plan in plans)
    assert sizes == {"train": 432, "valid": 54, "test": 54}
    for split in SPLITS:
        counts = Counter(plan.category.name for plan in plans if plan.split == split)
        assert set(counts) == {category.name for category in CATEGORIES}
        assert max(counts.values()) - min(counts.values()) <= 1
    seeds = [plan.seed_words for plan in plans]
    assert len(set(seeds)) == len(seeds)
    by_split = {split: {plan.seed_words for plan in plans if plan.split == split} for split in SPLITS}
    assert not (by_split["train"] & by_split["valid"] or by_split["train"] & by_split["test"]
                or by_split["valid"] & by_split["test"])
    assert len({plan.relative_path for plan in plans}) == len(plans)


def test_plan_is_deterministic_and_extends():
    small, large = plan_corpus(0.05, seed=3), plan_corpus(0.2, seed=3)
    assert small == plan_corpus(0.05, seed=3)
    assert small != plan_corpus(0.05, seed=4)
    by_place = {(plan.split, plan.index): plan for plan in large}
    for plan in small:  # more hours add clips and leave the existing ones alone
        assert by_place[(plan.split, plan.index)] == plan


def test_labels_and_captions():
    plans = plan_corpus(0.5, seed=1)
    for plan in plans:
        assert 2 <= len(plan.captions) <= 3 and len(set(plan.captions)) == len(plan.captions)
        assert all("{" not in caption for caption in plan.captions)
        if plan.category.generator == "speech":
            person = plan.category.name
            assert plan.category.keywords == ("speech", f"{person} speaking")
            assert any(person in caption or ("male" in caption) for caption in plan.captions)
        elif plan.category.generator == "instrument":
            noun = INSTRUMENTS_BY_KEYWORD[plan.category.name].noun
            assert plan.category.keywords == (plan.category.name,)
            assert any(noun in caption or "drum" in caption for caption in plan.captions)


def test_too_few_hours_and_missing_soundfont(tmp_path):
    with pytest.raises(ValueError, match="three splits"):
        plan_corpus(0.001, seed=0)
    with pytest.raises(CorpusError, match="fluid-soundfont-gm"):
        find_soundfont(tmp_path / "none.sf2")
    with pytest.raises(CorpusError, match="fluid-soundfont-gm"):
        build_corpus(tmp_path, hours=0.05, seed=0, soundfont=tmp_path / "none.sf2", progress=False)


def _parse_midi(data: bytes):
    """(division, tempo, [(tick, status, data1, data2)]) of a format-0 Standard MIDI File."""
    assert data[:4] == b"MThd"
    length, file_format, tracks, division = struct.unpack(">IHHH", data[4:14])
    assert (length, file_format, tracks) == (6, 0, 1)
    assert data[14:18] == b"MTrk"
    (track_length,) = struct.unpack(">I", data[18:22])
    track = data[22:]
    assert len(track) == track_length
    position, tick, tempo, events = 0, 0, None, []
    while position < len(track):
        delta = 0
        while True:
            byte = track[position]
            position += 1
            delta = (delta << 7) | (byte & 0x7F)
            if byte < 0x80:
                break
        tick += delta
        status = track[position]
        if status == 0xFF:
            kind, size = track[position + 1], track[position + 2]
            if kind == 0x51:
                tempo = int.from_bytes(track[position + 3 : position + 6], "big")
            position += 3 + size
            if kind == 0x2F:
                assert position == len(track)
        elif status >> 4 == 0xC:
            events.append((tick, status, track[position + 1], None))
            position += 2
        else:
            events.append((tick, status, track[position + 1], track[position + 2]))
            position += 3
    return division, tempo, events


def test_midi_file_is_well_formed():
    notes = [Note(0.0, 1.0, 60, 100), Note(1.0, 1.0, 60, 90), Note(0.5, 2.0, 64, 80),
             Note(200.0, 0.25, 36, 127)]
    division, tempo, events = _parse_midi(midi_file(notes, bpm=120.0, program=24, channel=9, reverb=40))
    assert division == 480 and tempo == 500000  # 120 bpm
    assert (0, 0xC9, 24, None) in events
    ons = [(tick, key) for tick, status, key, velocity in events if status == 0x99]
    offs = [(tick, key) for tick, status, key, velocity in events if status == 0x89]
    assert ons == [(0, 60), (240, 64), (480, 60), (96000, 36)]
    assert sorted(offs) == [(480, 60), (960, 60), (1200, 64), (96120, 36)]
    # at tick 480 the first C ends before the second one starts
    at_480 = [status for tick, status, _, _ in events if tick == 480]
    assert at_480 == [0x89, 0x99]


def test_instrument_notes_stay_in_register_and_clip():
    for plan in plan_corpus(1.0, seed=2):
        if plan.category.generator != "instrument":
            continue
        notes = instrument_notes(plan.params)
        assert notes, plan.category.name
        seconds = 60.0 / plan.params["bpm"]
        assert min(note.start for note in notes) * seconds < 1.0  # sound within the first second
        # nothing starts after the clip's end plus its 0.5 s margin (and a guitar strum's spread)
        assert max(note.start for note in notes) * seconds <= CLIP_SECONDS + 0.5 + 0.15
        assert all(1 <= note.velocity <= 127 for note in notes)
        if plan.category.name != "drum kit":
            assert all(plan.params["low"] <= note.key <= plan.params["high"] for note in notes)

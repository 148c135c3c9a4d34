"""The demo: the scene builder (`hybridsep corpus demo`) on a synthetic corpus, `hybridsep demo` end to end with a
`small` model (random weights, 1 s window) on a 3 s scene, and the committed scene in assets/demo."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from hybridsep_rt import demo, separate as separate_command
from hybridsep_rt.cli import main as hybridsep
from hybridsep_rt.demo import DemoError, figure_size, load_scene, panel_boxes, score_scene
from hybridsep_rt.metrics import DCASE_SDR_EPS, sdr
from tests.train_utils import make_manifest
from training.data.demo_mix import (
    LEVEL_DB,
    LEVEL_SPREAD_DB,
    PEAK,
    DemoError as BuildError,
    build_demo,
    gated_level_db,
    join_clips,
)

SR = 44100
CLASSES = ["sine tone", "chord", "noise"]
QUERIES = ["sine tone", "noise"]
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "demo"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Synthetic clips of 2 s, two per class in the test split."""
    return make_manifest(tmp_path_factory.mktemp("corpus"), {"train": 1, "test": 2})


@pytest.fixture(scope="module")
def scene(manifest, tmp_path_factory):
    """A 3 s scene of three classes, two queried: each source joins two 2 s clips."""
    folder = tmp_path_factory.mktemp("scene")
    build_demo(manifest, "test", CLASSES, 3.0, 0, folder, queries=QUERIES)
    return folder


def read_int16(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="int16")
    assert rate == SR and data.ndim == 1
    return data.astype(np.int32)


# ---------------------------------------------------------------------------------------------- the builder


def test_scene_files_add_up_exactly(scene):
    description = json.loads((scene / "demo.json").read_text())
    assert description["format"] == "hybridsep-demo" and description["sample_rate"] == SR
    assert description["samples"] == 3 * SR and description["seconds"] == 3.0
    assert [s["name"] for s in description["sources"]] == CLASSES
    assert [s["file"] for s in description["sources"]] == ["sources/sine_tone.flac", "sources/chord.flac",
                                                           "sources/noise.flac"]
    assert description["queries"] == [{"text": q, "source": q} for q in QUERIES]
    mixture = read_int16(scene / "mixture.flac")
    sources = [read_int16(scene / s["file"]) for s in description["sources"]]
    assert mixture.shape == (3 * SR,)
    assert np.array_equal(np.sum(sources, axis=0), mixture)
    assert sf.info(str(scene / "mixture.flac")).subtype == "PCM_16"
    assert max(np.abs(x).max() for x in [mixture, *sources]) <= PEAK * 32768 + 2
    for source, samples in zip(description["sources"], sources):
        # 2 s clips joined from a random point of the first: its rest, then the other clip (and the first's head)
        pieces = source["clips"]
        assert pieces[0]["offset"] == 0.0 and 0.0 <= pieces[0]["start"] < 2.0
        assert pieces[0]["seconds"] == pytest.approx(2.0 - pieces[0]["start"], abs=1e-5)
        assert pieces[1]["start"] == 0.0 and pieces[1]["offset"] == pieces[0]["seconds"]
        assert sum(c["seconds"] for c in pieces) == pytest.approx(3.0, abs=1e-5)
        assert len({c["path"] for c in pieces[:2]}) == 2 and len(pieces) in (2, 3)
        assert all(c["path"].startswith("test/") for c in source["clips"])
        level = gated_level_db(samples / 32768, SR)
        assert abs(level - source["level_db"]) < 0.01
        assert abs(level - LEVEL_DB) <= LEVEL_SPREAD_DB + 0.1  # no peak scaling needed for these clips


def test_same_seed_same_scene_other_seed_differs(manifest, scene, tmp_path):
    build_demo(manifest, "test", CLASSES, 3.0, 0, tmp_path / "again", queries=QUERIES)
    assert np.array_equal(read_int16(tmp_path / "again" / "mixture.flac"), read_int16(scene / "mixture.flac"))
    build_demo(manifest, "test", CLASSES, 3.0, 1, tmp_path / "other", queries=QUERIES)
    assert not np.array_equal(read_int16(tmp_path / "other" / "mixture.flac"), read_int16(scene / "mixture.flac"))


def test_peaky_sources_are_scaled_together_below_the_peak(manifest, tmp_path):
    clicks = np.zeros(2 * SR)
    clicks[::SR // 4] = 1.0  # a click every 250 ms: quiet on average, so LEVEL_DB needs a large gain

    def load(clip):
        return clicks if "sine" in clip.keywords[0] else np.sin(np.arange(2 * SR) * 0.05)

    path = build_demo(manifest, "test", ["sine tone", "chord"], 2.0, 0, tmp_path, load=load)
    description = json.loads(path.read_text())
    mixture = read_int16(tmp_path / "mixture.flac")
    sources = [read_int16(tmp_path / s["file"]) for s in description["sources"]]
    assert np.array_equal(np.sum(sources, axis=0), mixture)
    assert max(np.abs(x).max() for x in [mixture, *sources]) == pytest.approx(PEAK * 32768, abs=2)
    levels = [s["level_db"] for s in description["sources"]]
    assert levels[0] < LEVEL_DB - LEVEL_SPREAD_DB  # brought down together with the other source
    assert description["queries"] == [{"text": "sine tone", "source": "sine tone"},
                                      {"text": "chord", "source": "chord"}]


def test_join_clips_fades_at_the_joins_and_reuses_clips():
    a, b = np.ones(100), 2 * np.ones(50)
    joined, used = join_clips([a, b], 320, sample_rate=500)  # a 10-sample fade
    assert joined.shape == (320,) and used == [(0, 0, 100), (1, 0, 50), (0, 0, 100), (1, 0, 50), (0, 0, 20)]
    assert joined[0] == 1.0 and joined[95] < 1.0 and joined[100] == 0.0 and joined[110] == 2.0
    assert joined[99] == 0.0  # the fade out ends at zero, the fade in starts there
    ramp = np.arange(100.0)
    joined, used = join_clips([ramp, b], 120, sample_rate=500, start=70)
    assert used == [(0, 70, 30), (1, 0, 50), (0, 0, 40)]
    assert joined[0] == 70.0 and joined[19] == 89.0 and joined[29] == 0.0 and joined[40] == 2.0
    assert np.array_equal(joined[80:], ramp[:40] * np.r_[np.linspace(0, 1, 10), np.ones(30)])
    for bad in ([np.ones(0)], [np.ones(5)]):
        with pytest.raises(ValueError):
            join_clips(bad, 10, 500, start=5)


def test_gated_level_ignores_silence():
    t = np.arange(4 * SR) / SR
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    assert gated_level_db(tone, SR) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.05)
    half_silent = np.where(t < 2, tone, 0.0)
    # blocks straddling the end of the tone count partly; the plain mean power would be 3 dB lower
    assert gated_level_db(half_silent, SR) == pytest.approx(gated_level_db(tone, SR), abs=0.5)
    assert gated_level_db(np.zeros(SR), SR) == float("-inf")


def test_builder_errors(manifest, tmp_path):
    with pytest.raises(BuildError, match="no clips of 'piano'"):
        build_demo(manifest, "test", ["sine tone", "piano"], 2.0, 0, tmp_path)
    with pytest.raises(BuildError, match="queries must be distinct classes"):
        build_demo(manifest, "test", ["sine tone", "chord"], 2.0, 0, tmp_path, queries=["noise"])
    with pytest.raises(BuildError, match="distinct"):
        build_demo(manifest, "test", ["chord", "Chord"], 2.0, 0, tmp_path)
    with pytest.raises(BuildError, match="manifest not found"):
        build_demo(tmp_path / "none.jsonl", "test", ["chord"], 2.0, 0, tmp_path)
    assert not list(tmp_path.iterdir())


def test_corpus_demo_command(manifest, tmp_path, capsys):
    out = tmp_path / "scene"
    assert hybridsep(["corpus", "demo", "--manifest", str(manifest), "--classes", "chord", "low hum",
                      "--queries", "low hum", "--seconds", "1.5", "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sources/low_hum.flac" in printed and "queries: low hum" in printed
    assert read_int16(out / "mixture.flac").shape == (int(1.5 * SR),)
    assert hybridsep(["corpus", "demo", "--manifest", str(manifest), "--split", "valid", "--classes", "chord",
                      "--out", str(tmp_path / "x")]) == 2
    assert "hybridsep corpus demo: error: split 'valid'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- hybridsep demo


@pytest.fixture(scope="module")
def bundle_dir(small_bundle):
    return small_bundle(window_seconds=1.0)


def test_demo_end_to_end(bundle_dir, scene, tmp_path, capsys):
    out = tmp_path / "out"
    assert hybridsep(["demo", "--bundle", str(bundle_dir), "--demo", str(scene), "--out", str(out),
                      "--hop", "0.5", "--device", "cpu", "--threads", "2"]) == 0
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert table[0].split() == ["query", "extract", "SDR", "SDRi", "remove", "SDR", "SDRi"]
    assert [line.split()[0] for line in table[1:3]] == ["sine", "noise"]
    assert "14/14" in captured.err  # 7 windows of 1 s every 0.5 s cover 3 s, for each of 2 queries

    names = sorted(p.name for p in out.iterdir())
    assert names == ["noise_extract.wav", "noise_remove.wav", "scores.json", "sine_tone_extract.wav",
                     "sine_tone_remove.wav", "spectrograms.png"]
    mixture = sf.read(str(scene / "mixture.flac"), dtype="float32")[0]
    for query in ("sine_tone", "noise"):
        extract, rate = sf.read(str(out / f"{query}_extract.wav"), dtype="float32")
        remove = sf.read(str(out / f"{query}_remove.wav"), dtype="float32")[0]
        assert rate == SR and extract.shape == mixture.shape and np.abs(extract).max() > 0
        kept = (np.abs(extract) < 32767 / 32768) & (np.abs(remove) < 32767 / 32768)  # not clipped in the file
        assert kept.any() and (np.abs(extract + remove - mixture)[kept] < 3 / 32768).all()

    scores = json.loads((out / "scores.json").read_text())
    assert scores["bundle"] == str(bundle_dir) and scores["hop_seconds"] == 0.5
    assert [row["query"] for row in scores["queries"]] == QUERIES
    for row in scores["queries"]:
        for mode in ("extract", "remove"):
            assert math.isfinite(row[mode]["sdr"]) and math.isfinite(row[mode]["sdri"])
            assert (out / row[mode]["file"]).is_file()

    image = Image.open(out / "spectrograms.png")
    assert image.format == "PNG" and image.size == figure_size(2) and image.mode == "RGB"
    pixels = np.asarray(image)
    boxes = panel_boxes(2)
    assert len(boxes) == 5
    for left, top, width, height in boxes:
        panel = pixels[top : top + height, left : left + width].astype(int)
        assert panel.std() > 5  # a spectrogram, not a flat fill
        assert (panel.std(axis=(0, 1)) > 0).all()
    label_strip = pixels[boxes[1][1] - demo.LABEL_HEIGHT : boxes[1][1], boxes[1][0] : boxes[1][0] + 200]
    assert (label_strip < 128).any()  # the label text is drawn


def ceiling(reference: np.ndarray) -> float:
    """The SDR of a perfect estimate: signal power over the DCASE epsilon."""
    return 10 * math.log10(np.mean(np.asarray(reference, dtype=np.float64) ** 2) / DCASE_SDR_EPS)


def test_scores_compare_stems_with_the_right_references(scene):
    loaded = load_scene(scene)
    perfect = {q.name: {"extract": loaded.references[q.source],
                        "remove": loaded.mixture - loaded.references[q.source]} for q in loaded.queries}
    rows = score_scene(loaded, perfect)
    for row, query in zip(rows, loaded.queries):
        reference = loaded.references[query.source][0].astype(np.float64)
        rest = loaded.mixture[0] - loaded.references[query.source][0]
        best = {"extract": ceiling(reference), "remove": ceiling(rest)}  # error power clipped at the DCASE epsilon
        assert row["extract"]["sdr"] == pytest.approx(best["extract"])
        assert row["extract"]["sdri"] == pytest.approx(best["extract"] - sdr(reference, loaded.mixture[0]))
        assert row["remove"]["sdr"] == pytest.approx(best["remove"])
        assert row["remove"]["sdri"] == pytest.approx(best["remove"] - sdr(rest, loaded.mixture[0]))
    assert "sine tone" in demo.format_table(rows)


def test_missing_default_bundle_says_how_to_get_it(scene, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(separate_command, "DEFAULT_BUNDLE", tmp_path / "models" / "default")
    assert hybridsep(["demo", "--demo", str(scene), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hybridsep demo: error: no model bundle") and "hybridsep export" in err
    assert not (tmp_path / "out").exists()


def demo_error(capsys, folder: Path, bundle: Path) -> str:
    assert hybridsep(["demo", "--bundle", str(bundle), "--demo", str(folder), "--out", str(folder / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hybridsep demo: error: ")
    return err


def test_missing_or_corrupt_demo_folders(scene, tmp_path, capsys):
    bundle = tmp_path / "bundle"  # never opened: the scene is checked first
    assert "no demo scene at" in demo_error(capsys, tmp_path / "nowhere", bundle)

    def broken(name: str, change) -> Path:
        folder = tmp_path / name
        shutil.copytree(scene, folder)
        change(folder)
        return folder

    folder = broken("json", lambda f: (f / "demo.json").write_text("{not json"))
    assert "not valid JSON" in demo_error(capsys, folder, bundle)
    folder = broken("audio", lambda f: (f / "mixture.flac").write_bytes(b"\x00" * 64))
    assert "cannot be decoded" in demo_error(capsys, folder, bundle)
    folder = broken("source", lambda f: (f / "sources" / "noise.flac").unlink())
    assert "not found" in demo_error(capsys, folder, bundle)

    def retarget(f: Path):
        description = json.loads((f / "demo.json").read_text())
        description["queries"][0]["source"] = "piano"
        (f / "demo.json").write_text(json.dumps(description))

    assert "names source 'piano'" in demo_error(capsys, broken("query", retarget), bundle)

    def shorten(f: Path):
        sf.write(str(f / "sources" / "chord.flac"), np.zeros(SR), SR, subtype="PCM_16")

    assert "source 'chord' has shape" in demo_error(capsys, broken("length", shorten), bundle)
    for name in ("json", "audio", "source", "query", "length"):
        assert not (tmp_path / name / "out").exists()
    with pytest.raises(DemoError, match="version"):
        load_scene(broken("version", lambda f: (f / "demo.json").write_text(
            json.dumps({**json.loads((scene / "demo.json").read_text()), "version": 99}))))


def test_colour_and_spectrogram_helpers():
    assert demo.colour(np.array([0.0, 1.0])).tolist() == [[68, 1, 84], [253, 231, 37]]
    t = np.arange(SR) / SR
    power = demo.power_spectrogram(np.sin(2 * np.pi * 1000 * t))
    assert power.shape[0] == demo.STFT_SIZE // 2 + 1
    assert abs(int(np.argmax(power[:, 10])) - round(1000 * demo.STFT_SIZE / SR)) <= 1
    pixels = demo.panel_pixels(power, SR, 50, 40)
    assert pixels.shape == (40, 50)
    row = int(np.argmax(pixels[:, 25]))
    assert 10 < row < 35  # 1 kHz sits in the lower middle of a mel axis up to 22 kHz, high frequencies on top


# ---------------------------------------------------------------------------------------------- assets/demo


def test_committed_demo_scene_is_consistent():
    scene = load_scene(ASSETS)
    assert scene.sample_rate == SR and scene.mixture.shape[0] == 1
    assert 19.5 <= scene.mixture.shape[1] / SR <= 20.5
    assert len(scene.queries) == 3 and len(scene.references) >= 3
    total = np.sum(list(scene.references.values()), axis=0)
    assert np.abs(total - scene.mixture).max() <= len(scene.references) / 32768  # within 16-bit rounding
    assert np.abs(scene.mixture).max() <= 0.99
    for name, reference in scene.references.items():
        rest = scene.mixture - reference
        ratio = 10 * math.log10(np.mean(reference**2) / np.mean(rest**2))
        assert -12.0 < ratio < 6.0, name  # a scene, not one dominant source
    files = [p for p in ASSETS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    assert all(sf.info(str(p)).subtype == "PCM_16" for p in files if p.suffix == ".flac")

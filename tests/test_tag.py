"""`hybridsep tag` and the runtime tagger: real recordings from Debian packages through the default bundle's
tagger graph (torch-free), its timeline across windows, its outputs and their checks, and adding a tagger to a
bundle exported without one."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from hybridsep_rt.bundle import MANIFEST_FILE, TAGGER, Bundle, BundleError
from hybridsep_rt.cli import main as hybridsep
from hybridsep_rt.tagger import Tagger

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "models" / "default"
SPEECH = sorted(Path("/usr/share/pocketsphinx/test/data/librivox").glob("*.wav"))  # pocketsphinx-testdata
KEYS = sorted(Path("/usr/share/buckle/wav").glob("*.wav"))  # bucklespring-data: key presses of an IBM Model M


def _mono(path: Path, rate: int) -> np.ndarray:
    audio, file_rate = sf.read(path, dtype="float32", always_2d=True)
    return soxr.resample(audio.mean(axis=1), file_rate, rate).astype(np.float32)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Speech, 20 s of key clicks, speech again (about 34 s at 16 kHz), and where each part lies."""
    rate = 16000
    speech = [_mono(p, rate) for p in SPEECH[:2]]
    clicks = np.concatenate([np.pad(_mono(p, rate), (0, 1200)) for p in KEYS[:60]])
    wave = np.concatenate([speech[0], clicks, speech[1]])
    path = tmp_path_factory.mktemp("tag") / "scene.wav"
    sf.write(path, wave, rate)
    edges = np.cumsum([0, len(speech[0]), len(clicks), len(speech[1])]) / rate
    return path, edges


def test_timeline_tags_real_speech_and_clicks_where_they_are(scene):
    path, edges = scene
    tagger = Tagger(DEFAULT, device="cpu", threads=2)
    wave = _mono(path, tagger.sample_rate)
    windows = []
    timeline = tagger.timeline(wave, on_window=lambda: windows.append(1))
    assert len(windows) == tagger.window_count(wave.shape[0]) >= 3  # the scene spans several windows
    assert timeline.times[-1] <= wave.shape[0] / tagger.sample_rate < timeline.times[-1] + tagger.info.frame_seconds
    np.testing.assert_allclose(np.diff(timeline.times), tagger.info.frame_seconds, atol=1e-9)  # one time grid
    speech = timeline.classes.index("Speech")
    inside = lambda a, b: (timeline.times > a + 1.0) & (timeline.times < b - 1.0)  # noqa: E731
    assert np.median(timeline.scores[inside(edges[0], edges[1]), speech]) > 0.8
    assert np.median(timeline.scores[inside(edges[2], edges[3]), speech]) > 0.8
    clicks = timeline.scores[inside(edges[1], edges[2])]
    assert np.median(clicks[:, speech]) < 0.1
    assert timeline.classes[int(np.argmax(clicks.mean(axis=0)))] in {"Wood block", "Typing", "Computer keyboard",
                                                                    "Percussion", "Chop", "Clicking", "Tick"}


def test_timeline_rows_are_the_rows_of_the_window_they_come_from(scene):
    path, _ = scene
    tagger = Tagger(DEFAULT, device="cpu", threads=2)
    wave = _mono(path, tagger.sample_rate)
    timeline = tagger.timeline(wave)
    hop_rows = tagger.rows_per_window() - 2
    hop = int(round(hop_rows * tagger.info.frame_seconds * tagger.sample_rate))
    second = tagger.scores(wave[hop:hop + tagger.window_samples])  # window 1 gives grid rows hop_rows+1 .. 2 hop_rows
    np.testing.assert_allclose(timeline.scores[hop_rows + 1:2 * hop_rows + 1], second[1:hop_rows + 1], atol=1e-6)


def test_tag_cli_prints_the_timeline_and_writes_json_csv_and_png(scene, tmp_path, capsys):
    path, _ = scene
    out_json, out_csv, plot = tmp_path / "tags.json", tmp_path / "tags.csv", tmp_path / "tags.png"
    assert hybridsep(["tag", str(path), "-o", str(out_json), "--plot", str(plot), "--threads", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Speech" in printed and "strongest: Speech" in printed
    document = json.loads(out_json.read_text())
    assert document["strongest"][0]["class"] == "Speech" and len(document["frames"][0]["tags"]) == 5
    assert document["frames"][0]["tags"][0]["score"] >= document["frames"][0]["tags"][1]["score"]
    assert plot.stat().st_size > 2000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert hybridsep(["tag", str(path), "-o", str(out_csv), "--top", "2", "--threads", "2"]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 2 * len(document["frames"]) and rows[0]["rank"] == "1" and rows[0]["class"] == "Speech"


def test_tag_cli_refuses_bad_outputs_before_reading_anything(scene, tmp_path, capsys):
    path, _ = scene
    kept = tmp_path / "kept.json"
    kept.write_text("keep me")
    assert hybridsep(["tag", str(path), "-o", str(tmp_path / "tags.txt")]) == 2
    assert "must end in .json or .csv" in capsys.readouterr().err
    folder = tmp_path / "folder.json"
    folder.mkdir()
    assert hybridsep(["tag", str(path), "-o", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert hybridsep(["tag", str(path), "--plot", str(tmp_path / "tags.jpg")]) == 2
    assert "must end in .png" in capsys.readouterr().err
    assert hybridsep(["tag", str(tmp_path / "missing.wav"), "-o", str(kept)]) == 2
    assert "not found" in capsys.readouterr().err and kept.read_text() == "keep me"


def manifest_graph(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_FILE).read_text())["graphs"][TAGGER]


def test_a_bundle_without_a_tagger_gets_one_added_in_place(small_bundle, tmp_path, capsys):
    from export.bundle import add_tagger

    folder = tmp_path / "bundle"
    shutil.copytree(small_bundle(), folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    expected = manifest["graphs"].pop(TAGGER)
    del manifest["tagger"]
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    (folder / "tagger.onnx").unlink()
    with pytest.raises(BundleError, match="no tagger graph"):
        Tagger(folder)
    assert hybridsep(["tag", str(SPEECH[0]), "--bundle", str(folder)]) == 2
    assert "no tagger graph" in capsys.readouterr().err

    add_tagger(folder, threads=2, log=lambda line: None)
    bundle = Bundle.load(folder)
    assert bundle.tagger is not None and "Speech" in bundle.tagger.classes
    assert manifest_graph(folder)["outputs"] == expected["outputs"]
    assert Tagger(bundle).scores(np.zeros(bundle.window_samples, np.float32)).shape[1] == 521
    with pytest.raises(FileExistsError, match="already has a tagger"):
        add_tagger(folder, log=lambda line: None)

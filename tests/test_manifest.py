"""Manifest reading/writing and the audio loading helpers it relies on."""

import json
import logging

import numpy as np
import pytest
import soundfile as sf

from training.data.audio import AudioError, chunks, fit_length, load_audio, write_audio
from training.data.manifest import (
    Clip,
    ManifestError,
    read_manifest,
    write_manifest,
)

RATE = 8000


def _noise(seconds=0.5, seed=0):
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def _row(path, **override):
    row = {"path": path, "keywords": ["dog"], "captions": ["a dog barking"],
           "source": "test", "split": "train"}
    row.update(override)
    return row


@pytest.fixture
def folder(tmp_path):
    sf.write(tmp_path / "good.wav", _noise(), RATE)
    sf.write(tmp_path / "good2.flac", _noise(seed=1), RATE)
    sf.write(tmp_path / "silent.wav", np.zeros(RATE // 2, np.float32), RATE)
    (tmp_path / "broken.wav").write_text("this is not audio")
    return tmp_path


# One bad row of each kind, with a fragment of the reason it must give.
BAD_ROWS = {
    "invalid JSON": ('{"path": "good.wav", "keywords": [', "invalid JSON"),
    "missing field": (json.dumps({"path": "good.wav", "keywords": ["dog"], "captions": []}), "missing field"),
    "not an object": ("[1, 2, 3]", "not an object"),
    "missing file": (json.dumps(_row("nowhere.wav")), "missing audio file"),
    "unreadable audio": (json.dumps(_row("broken.wav")), "unreadable audio"),
    "no labels": (json.dumps(_row("good.wav", keywords=[], captions=[])), "no labels"),
    "silent clip": (json.dumps(_row("silent.wav")), "silent"),
    "bad split": (json.dumps(_row("good.wav", split="dev")), "'split'"),
    "bad keywords": (json.dumps(_row("good.wav", keywords="dog")), "'keywords'"),
    "wrong rate": (json.dumps(_row("good.wav", sample_rate=44100)), "8000 Hz"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_raise_names_file_and_line(folder, kind):
    text, reason = BAD_ROWS[kind]
    manifest = folder / "manifest.jsonl"
    good = json.dumps(_row("good.wav"))
    manifest.write_text("\n".join([good, "", good, text, good]) + "\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest, on_error="raise")
    message = str(caught.value)
    assert message.startswith(f"{manifest}:4: "), message
    assert reason in message


def test_skip_collects_every_bad_row(folder, caplog):
    manifest = folder / "manifest.jsonl"
    lines = [json.dumps(_row("good.wav"))]
    lines += [text for text, _ in BAD_ROWS.values()]
    lines.append(json.dumps(_row(str(folder / "good2.flac"), split="test", captions=[])))
    manifest.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        result = read_manifest(manifest)
    assert [clip.path.name for clip in result.clips] == ["good.wav", "good2.flac"]
    assert [problem.line for problem in result.problems] == list(range(2, 2 + len(BAD_ROWS)))
    for problem, (_, reason) in zip(result.problems, BAD_ROWS.values()):
        assert reason in problem.reason
        assert str(problem).startswith(f"{manifest}:{problem.line}: ")
        assert str(problem) in caplog.text
    assert result.split("test")[0].keywords == ["dog"]


def test_check_audio_off_only_checks_fields(folder):
    manifest = folder / "manifest.jsonl"
    manifest.write_text(json.dumps(_row("silent.wav")) + "\n" + json.dumps(_row("nowhere.wav")) + "\n")
    assert len(read_manifest(manifest, on_error="raise", check_audio=False).clips) == 2


def test_on_error_is_checked(folder):
    (folder / "m.jsonl").write_text("")
    with pytest.raises(ValueError):
        read_manifest(folder / "m.jsonl", on_error="ignore")


def test_write_then_read_round_trip(folder, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "far.wav"
    sf.write(elsewhere, _noise(seed=2), RATE)
    clips = [
        Clip(folder / "good.wav", ["dog", "bark"], [], "test", "train", duration=0.5, sample_rate=RATE),
        Clip(folder / "good2.flac", [], ["noise", "hiss"], "test", "valid"),
        Clip(elsewhere, ["hiss"], ["white noise"], "other", "test"),
    ]
    manifest = write_manifest(folder / "sub" / ".." / "manifest.jsonl", clips)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert rows[0]["path"] == "good.wav" and rows[1]["path"] == "good2.flac"
    assert rows[2]["path"] == str(elsewhere.resolve())
    assert "duration" not in rows[1] and rows[0]["sample_rate"] == RATE
    assert not list(folder.glob(".*.part"))
    result = read_manifest(manifest, on_error="raise")
    assert result.problems == []
    assert [clip.path for clip in result.clips] == [clip.path.resolve() for clip in clips]
    assert [(c.keywords, c.captions, c.source, c.split) for c in result.clips] == [
        (c.keywords, c.captions, c.source, c.split) for c in clips
    ]


def test_write_replaces_atomically(folder):
    manifest = folder / "manifest.jsonl"
    manifest.write_text("old\n")
    write_manifest(manifest, [Clip(folder / "good.wav", ["dog"], [], "test", "train")])
    assert manifest.read_text().count("\n") == 1 and "old" not in manifest.read_text()


# ---------------------------------------------------------------- audio helpers


def test_load_audio_converts_channels_and_rate(tmp_path):
    t = np.arange(48000) / 48000
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    stereo = np.stack([tone, 0.5 * tone], axis=1).astype(np.float32)
    sf.write(tmp_path / "stereo.flac", stereo, 48000)
    mono = load_audio(tmp_path / "stereo.flac", 16000)
    assert mono.dtype == np.float32 and mono.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(mono))
    assert np.argmax(spectrum) == 1000  # 1 s at 16 kHz: bin k is k Hz
    assert np.max(np.abs(mono[1000:-1000])) == pytest.approx(0.375, abs=0.01)  # mean of the channels
    both = load_audio(tmp_path / "stereo.flac", 48000, mono=False)
    assert both.shape == (2, 48000)
    np.testing.assert_allclose(both[1], 0.5 * both[0], atol=1e-4)


def test_load_audio_errors_name_the_file(tmp_path):
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(AudioError, match="text.wav"):
        load_audio(tmp_path / "text.wav", RATE)
    with pytest.raises(AudioError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav", RATE)
    wave = _noise()
    wave[100] = np.nan
    sf.write(tmp_path / "nan.wav", wave, RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*NaN or Inf"):
        load_audio(tmp_path / "nan.wav", RATE)


def test_chunks_pad_or_drop():
    wave = np.arange(25, dtype=np.float32) + 1
    padded = chunks(wave, sample_rate=1, seconds=10)
    assert [len(chunk) for chunk in padded] == [10, 10, 10]
    assert np.all(padded[2][5:] == 0) and np.all(padded[2][:5] == wave[20:])
    dropped = chunks(wave, sample_rate=1, seconds=10, pad_last=False)
    assert len(dropped) == 2 and np.array_equal(np.concatenate(dropped), wave[:20])
    assert len(chunks(wave[:20], 1, 10)) == 2
    stereo = chunks(np.stack([wave, -wave]), 1, 10)
    assert [chunk.shape for chunk in stereo] == [(2, 10)] * 3


def test_chunks_reject_nan_and_inf():
    for bad in (np.nan, np.inf):
        wave = np.zeros(30, np.float32)
        wave[3] = bad
        with pytest.raises(AudioError, match="NaN or Inf"):
            chunks(wave, 1, 10)


def test_fit_length_and_write_audio(tmp_path):
    assert fit_length(np.ones(5), 3).shape == (3,)
    assert np.array_equal(fit_length(np.ones((2, 2)), 4), [[1, 1, 0, 0], [1, 1, 0, 0]])
    wave = _noise() / 4
    write_audio(tmp_path / "out.flac", wave, RATE)
    assert not list(tmp_path.glob(".*"))
    back, rate = sf.read(tmp_path / "out.flac", dtype="float32")
    assert rate == RATE and np.max(np.abs(back - wave)) < 1e-4
    with pytest.raises(AudioError, match="clip"):
        write_audio(tmp_path / "loud.flac", 4 * wave, RATE)
    wave[0] = np.inf
    with pytest.raises(AudioError, match="NaN or Inf"):
        write_audio(tmp_path / "bad.flac", wave, RATE)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.flac"]

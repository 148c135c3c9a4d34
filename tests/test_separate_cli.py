"""`hybridsep separate` end to end on generated files, with a `small` model (random weights, 1 s window)
exported once for the module."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from export.bundle import synthetic_audio
from hybridsep_rt import separate as separate_command
from hybridsep_rt.audio import read_audio
from hybridsep_rt.cli import main as hybridsep
from hybridsep_rt.separate import slug, stem_names, window_count

@pytest.fixture(scope="module")
def bundle_dir(small_bundle):
    return small_bundle(window_seconds=1.0)


def stereo_file(path, seconds: float, rate: int, subtype: str = "PCM_24"):
    n = int(seconds * rate)
    data = np.stack([synthetic_audio(n, rate, seed=1), 0.5 * synthetic_audio(n, rate, seed=2)])
    sf.write(path, data.T, rate, subtype=subtype)
    return data


def separate(*args: str) -> int:
    return hybridsep(["separate", *map(str, args), "--device", "cpu", "--threads", "2"])


def test_two_queries_write_two_stems_like_the_input(bundle_dir, tmp_path, capsys):
    mixture = tmp_path / "song.wav"
    stereo_file(mixture, 15.0, 48000)
    out = tmp_path / "stems"
    assert separate(mixture, "-q", "A dog barking!", "-q", "rain", "-o", out, "--bundle", bundle_dir,
                    "--hop", "1") == 0
    stems = sorted(out.iterdir())
    assert [p.name for p in stems] == ["a_dog_barking.wav", "rain.wav"]
    for stem in stems:
        info = sf.info(stem)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (48000, 2, 15 * 48000, "PCM_24")
        data, _ = read_audio(stem)
        assert np.isfinite(data).all() and np.abs(data).max() > 0
    err = capsys.readouterr().err
    assert "CPUExecutionProvider" in err and "30/30" in err  # the progress bar: 15 windows per query


def test_extract_plus_remove_gives_the_mixture(bundle_dir, tmp_path):
    mixture = tmp_path / "mix.wav"
    data = stereo_file(mixture, 3.0, 44100, subtype="FLOAT")  # the model's rate: no conversion
    target, rest = tmp_path / "target.wav", tmp_path / "rest.wav"
    assert separate(mixture, "-q", "a bell", "-o", target, "--bundle", bundle_dir, "--hop", "1") == 0
    assert separate(mixture, "-q", "a bell", "--mode", "remove", "-o", rest, "--bundle", bundle_dir, "--hop", "1") == 0
    total = read_audio(target)[0] + read_audio(rest)[0]
    assert np.abs(total - data).max() < 1e-5


def test_query_by_example_and_mono_at_another_rate(bundle_dir, tmp_path):
    mixture, example = tmp_path / "mono.flac", tmp_path / "bird.wav"
    sf.write(mixture, synthetic_audio(40000, 16000, seed=3), 16000)
    sf.write(example, synthetic_audio(8000, 8000, seed=4), 8000)
    out = tmp_path / "out"
    assert separate(mixture, "--example", example, "-o", out, "--bundle", bundle_dir) == 0
    (stem,) = out.iterdir()
    assert stem.name == "example_bird.flac"
    data, rate = read_audio(stem)
    assert rate == 16000 and data.shape == (1, 40000)


def test_silence_in_gives_silence_out(bundle_dir, tmp_path):
    mixture = tmp_path / "silence.wav"
    sf.write(mixture, np.zeros((44100, 2), np.float32), 44100)
    out = tmp_path / "out.wav"
    assert separate(mixture, "-q", "a dog", "-o", out, "--bundle", bundle_dir, "--hop", "1") == 0
    data, rate = read_audio(out)
    assert rate == 44100 and data.shape == (2, 44100) and np.abs(data).max() < 1e-4


def test_bad_requests_give_clear_errors(bundle_dir, tmp_path, capsys):
    mixture = tmp_path / "mix.wav"
    stereo_file(mixture, 1.0, 44100)

    def error(*args) -> str:
        assert separate(*args) == 2
        return capsys.readouterr().err

    assert "-o must name a folder" in error(mixture, "-q", "a", "-q", "b", "-o", tmp_path / "x.wav",
                                            "--bundle", bundle_dir)
    assert "nothing to separate" in error(mixture, "-o", tmp_path / "x.wav", "--bundle", bundle_dir)
    assert "text query is empty" in error(mixture, "-q", " ", "-o", tmp_path / "x.wav", "--bundle", bundle_dir)
    assert "audio file not found" in error(tmp_path / "none.wav", "-q", "a", "-o", tmp_path / "x.wav",
                                           "--bundle", bundle_dir)
    assert "--hop must be between" in error(mixture, "-q", "a", "-o", tmp_path / "x.wav", "--bundle", bundle_dir,
                                            "--hop", "3")
    assert "model bundle folder" in error(mixture, "-q", "a", "-o", tmp_path / "x.wav", "--bundle",
                                          tmp_path / "no_bundle")
    assert not (tmp_path / "x.wav").exists()


def test_missing_default_bundle_says_how_to_pass_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(separate_command, "DEFAULT_BUNDLE", tmp_path / "models" / "default")
    mixture = tmp_path / "mix.wav"
    stereo_file(mixture, 0.5, 44100)
    assert separate(mixture, "-q", "a", "-o", tmp_path / "x.wav") == 2
    err = capsys.readouterr().err
    assert "has not been built yet" in err and "--bundle BUNDLE" in err


def test_stem_names_and_window_count():
    assert slug("  A Dog -- barking!! ") == "a_dog_barking"
    assert stem_names(["rain", "Rain", "???"], "extract") == ["rain", "rain_2", "query_3"]
    assert stem_names(["rain"], "remove") == ["without_rain"]
    # Windows end every hop until the last sample is covered by every window that reaches it.
    assert window_count(total=10, window=4, hop=2) == 6
    assert window_count(total=1, window=4, hop=4) == 1

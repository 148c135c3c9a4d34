"""Augmentation of mixture sources, class-balanced draws and the combined manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import training.data.mixer as mixer_module
from training.data.augment import (AugmentConfig, apply_band_limit, apply_source_effects, augment_sources,
                                   draw_source_effects)
from training.data.combined import combine_manifests
from training.data.manifest import Clip, read_manifest
from training.data.mixer import Mixer, MixerConfig, class_weights

RATE = 16000
EVERYTHING = AugmentConfig(eq_probability=1.0, reverb_probability=1.0, pitch_probability=1.0,
                           tempo_probability=1.0, band_limit_probability=1.0)
EFFECTS = {
    "gain": {"gain_db": 4.0},
    "eq": {"gain_db": 0.0, "eq": (1000.0, 9.0)},
    "reverb": {"gain_db": 0.0, "reverb": (0.6, 0.3)},
    "pitch": {"gain_db": 0.0, "pitch_semitones": 0.8},
    "tempo": {"gain_db": 0.0, "tempo": 1.06},
}


def _noise(seed: int, seconds: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * seconds)) / RATE
    return 0.3 * np.sin(2 * np.pi * (200 + 100 * seed) * t) + 0.05 * rng.standard_normal(t.size)


@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_each_transform_is_deterministic_keeps_the_length_and_changes_the_audio(name):
    wave = _noise(1)
    first = apply_source_effects(wave, RATE, EFFECTS[name])
    second = apply_source_effects(wave, RATE, EFFECTS[name])
    np.testing.assert_array_equal(first, second)
    assert first.shape == wave.shape
    assert np.max(np.abs(first - wave)) > 1e-3


@pytest.mark.parametrize("band", [(300.0, 3400.0), (None, 5500.0)])
def test_band_limiting_is_deterministic_linear_and_removes_the_high_band(band):
    a, b = _noise(2), _noise(3)
    limited = apply_band_limit(a, RATE, band)
    np.testing.assert_array_equal(limited, apply_band_limit(a, RATE, band))
    # Linear: the sources band-limited one by one sum to the band-limited mixture.
    np.testing.assert_allclose(apply_band_limit(a, RATE, band) + apply_band_limit(b, RATE, band),
                               apply_band_limit(a + b, RATE, band), atol=1e-5)
    spectrum = np.abs(np.fft.rfft(np.random.default_rng(0).standard_normal(RATE)))
    filtered = np.abs(np.fft.rfft(apply_band_limit(np.random.default_rng(0).standard_normal(RATE), RATE, band)))
    high = np.fft.rfftfreq(RATE, 1 / RATE) > 7000
    assert np.mean(filtered[high]) < 0.1 * np.mean(spectrum[high])


def test_the_drawn_transforms_depend_only_on_the_seed():
    segments = [_noise(4), _noise(5)]
    first = augment_sources(segments, RATE, EVERYTHING, np.random.default_rng(7))
    second = augment_sources(segments, RATE, EVERYTHING, np.random.default_rng(7))
    other = augment_sources(segments, RATE, EVERYTHING, np.random.default_rng(8))
    for a, b, c in zip(first, second, other):
        np.testing.assert_array_equal(a, b)
        assert np.max(np.abs(a - c)) > 1e-3
    assert draw_source_effects(EVERYTHING, np.random.default_rng(1)).keys() == {
        "gain_db", "eq", "reverb", "pitch_semitones", "tempo"}


def _clips(classes: dict[str, int]) -> list[Clip]:
    clips = []
    for cls, count in classes.items():
        clips += [Clip(path=Path(f"/{cls}/{i}.wav"), keywords=[cls], captions=[], source="test", split="train")
                  for i in range(count)]
    return clips


def _load(clip: Clip) -> np.ndarray:
    return _noise(int(clip.path.stem) % 7 + 1, seconds=0.5).astype(np.float32)


def test_the_target_reference_goes_through_the_same_transform_as_the_target_in_the_mixture(monkeypatch):
    seen = []

    def recording(segments, sample_rate, cfg, rng):
        out = augment_sources(segments, sample_rate, cfg, rng)
        seen.append((segments, out))
        return out

    monkeypatch.setattr(mixer_module, "augment_sources", recording)
    cfg = MixerConfig(sample_rate=RATE, segment_seconds=0.5, caption_probability=0.0, augment=EVERYTHING)
    mixer = Mixer(_clips({"dog": 3, "bird": 3, "speech": 3}), cfg, load=_load)
    example = mixer.sample(np.random.default_rng(3))
    segments, transformed = seen[-1]
    assert np.max(np.abs(transformed[0] - segments[0])) > 1e-3  # the target was transformed
    np.testing.assert_allclose(example.target, (transformed[0] * example.gain).astype(np.float32), rtol=0, atol=1e-7)
    np.testing.assert_allclose(example.mixture, example.target + example.interference, atol=1e-6)
    # The same seed gives the same example.
    again = mixer.sample(np.random.default_rng(3))
    np.testing.assert_array_equal(again.mixture, example.mixture)
    np.testing.assert_array_equal(again.target, example.target)


def test_augmentation_is_off_by_default_and_in_every_evaluation_preset():
    assert MixerConfig().augment is None
    for preset in (MixerConfig.paper(), MixerConfig.keyword_eval(), MixerConfig.caption_eval()):
        assert preset.augment is None and not preset.balance_classes


def test_class_weights_make_classes_equally_likely_and_cap_speech():
    clips = _clips({"speech": 90, "dog": 6, "bird": 4})
    weights = class_weights(clips)
    totals = {cls: weights[[i for i, c in enumerate(clips) if c.keywords[0] == cls]].sum() for cls in ("speech", "dog", "bird")}
    assert totals == pytest.approx({"speech": 1 / 3, "dog": 1 / 3, "bird": 1 / 3})
    capped = class_weights(clips, speech_share=0.2)
    assert capped[:90].sum() == pytest.approx(0.2)
    assert capped[90:96].sum() == pytest.approx(0.4)


def test_a_balanced_mixer_draws_targets_by_class_not_by_clip():
    clips = _clips({"speech": 90, "dog": 6, "bird": 4})
    cfg = MixerConfig(sample_rate=RATE, segment_seconds=0.1, caption_probability=0.0, keyword_sources=(2, 2),
                      balance_classes=True, speech_share=0.2)
    mixer = Mixer(clips, cfg, load=_load)
    targets = [mixer.sample(np.random.default_rng(i)).clips[0].keywords[0] for i in range(600)]
    share = {cls: targets.count(cls) / len(targets) for cls in ("speech", "dog", "bird")}
    assert share["speech"] == pytest.approx(0.2, abs=0.06)
    assert share["bird"] == pytest.approx(0.4, abs=0.07)
    unbalanced = Mixer(clips, MixerConfig(sample_rate=RATE, segment_seconds=0.1, caption_probability=0.0,
                                          keyword_sources=(2, 2)), load=_load)
    plain = [unbalanced.sample(np.random.default_rng(i)).clips[0].keywords[0] for i in range(300)]
    assert plain.count("speech") / len(plain) > 0.8


def test_combined_manifest_holds_both_corpora_with_absolute_paths(tmp_path):
    import soundfile as sf

    for name, cls in (("synth", "piano"), ("real", "Bird")):
        folder = tmp_path / name
        folder.mkdir()
        sf.write(folder / "a.wav", _noise(1), RATE)
        row = {"path": "a.wav", "keywords": [cls], "captions": [], "source": name, "split": "train",
               "package": "p" if name == "real" else None}
        (folder / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    out = combine_manifests([tmp_path / "synth/manifest.jsonl", tmp_path / "real/manifest.jsonl"],
                            tmp_path / "elsewhere/combined.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["corpus"] for row in rows] == ["synth", "real"]
    assert rows[1]["package"] == "p"
    clips = read_manifest(out).clips  # audio found from the new folder
    assert [clip.keywords for clip in clips] == [["piano"], ["Bird"]]

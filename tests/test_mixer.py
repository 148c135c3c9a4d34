"""The mixing rules of paper section 3.1, as property tests."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from training.data.manifest import Clip, read_manifest
from training.data.mixer import Example, Mixer, MixerConfig, MixtureDataset, join_keywords

RATE = 8000
SECONDS = 0.1
SIZE = int(RATE * SECONDS)


def _clip(name, keywords=(), captions=()):
    return Clip(Path(f"/clips/{name}.wav"), list(keywords), list(captions), "test", "train")


# Every keyword target below has at least three clips with no keyword in common.
CLIPS = [
    _clip("guitar", ["guitar"]),
    _clip("guitar-piano", ["Guitar", "piano"]),
    _clip("bird-speech", ["bird", "speech"]),
    _clip("speech", ["speech"]),
    _clip("dog", ["dog"]),
    _clip("dog2", ["dog"]),
    _clip("rain", ["rain"]),
    _clip("car-horn-engine", ["car", "horn", "engine"]),
    _clip("siren-both", ["siren"], ["a siren wails", "an ambulance passes"]),
    _clip("cap1", captions=["people talk in a cafe"]),
    _clip("cap2", captions=["a car drives by", "traffic noise"]),
    _clip("cap3", captions=["birds chirp at dawn"]),
    _clip("speech-both", ["speech"], ["a man speaks"]),
    _clip("speech-caption", ["speech"], ["a woman talks"]),
]
AUDIO = {
    clip.path: (0.5 * np.random.default_rng(number).standard_normal(SIZE) * (number + 1)).astype(np.float32)
    for number, clip in enumerate(CLIPS)
}


def _mixer(cfg, seed):
    return Mixer(CLIPS, cfg, seed, load=lambda clip: AUDIO[clip.path])


def _config(ratio, sources, caption_probability):
    return MixerConfig(sample_rate=RATE, segment_seconds=SECONDS, ratio_db=ratio,
                       keyword_sources=sources, caption_probability=caption_probability)


ratios = st.tuples(st.floats(-30, 30), st.floats(-30, 30)).map(sorted).map(tuple)
source_counts = st.tuples(st.integers(2, 4), st.integers(2, 4)).map(sorted).map(tuple)


def _energy_db(a, b):
    return 10 * np.log10(np.sum(a.astype(np.float64) ** 2) / np.sum(b.astype(np.float64) ** 2))


def _check(example: Example, cfg: MixerConfig):
    target_clip, other_clips = example.clips[0], example.clips[1:]
    n = example.sources.shape[0]
    assert n == len(example.clips)
    assert len({clip.path for clip in example.clips}) == n  # no clip twice
    if example.kind == "keyword":
        assert cfg.keyword_sources[0] <= n <= cfg.keyword_sources[1]
        # no cross-protocol mixing: every source was drawn for its keywords
        assert all(clip.keywords for clip in example.clips)
        target_keywords = {k.lower() for k in target_clip.keywords}
        for clip in other_clips:
            assert target_keywords.isdisjoint(k.lower() for k in clip.keywords)
        assert example.query == join_keywords(target_clip.keywords)
    else:
        assert example.kind == "caption"
        assert n == 2
        assert all(clip.captions for clip in example.clips)
        assert example.query in target_clip.captions
    # energy ratio of target to the rest, within the range, as drawn
    measured = _energy_db(example.target, example.interference)
    assert cfg.ratio_db[0] - 0.01 <= measured <= cfg.ratio_db[1] + 0.01
    assert abs(measured - example.ratio_db) < 0.01
    # one gain for mixture, target and sources: they still add up, and the target is the scaled clip
    np.testing.assert_allclose(example.mixture, example.target + example.interference, atol=1e-6)
    np.testing.assert_allclose(example.interference, example.sources[1:].sum(axis=0), atol=1e-6)
    np.testing.assert_array_equal(example.sources[0], example.target)
    np.testing.assert_allclose(example.target, example.gain * AUDIO[target_clip.path], rtol=1e-5, atol=1e-7)
    # peak normalisation, no clipping
    arrays = (example.mixture, example.target, example.interference, example.sources)
    peaks = [np.max(np.abs(array)) for array in arrays]
    assert max(peaks) == pytest.approx(cfg.peak, rel=1e-5)
    assert max(peaks) < 1.0
    for array in (example.mixture, example.target, example.interference, example.sources):
        assert array.dtype == np.float32 and array.shape[-1] == SIZE


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), ratio=ratios, sources=source_counts,
       caption_probability=st.floats(0, 1))
def test_mixtures_follow_the_paper_rules(seed, ratio, sources, caption_probability):
    cfg = _config(ratio, sources, caption_probability)
    mixer = _mixer(cfg, seed)
    for _ in range(5):
        _check(mixer.sample(), cfg)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_both_protocols_and_all_source_counts_occur(seed):
    # about half the draws are keyword mixtures and each source count a third of those: 400 draws all but rule
    # out missing a case, where 60 could (seed 1909461: 19 keyword mixtures, none of 3 sources)
    mixer = _mixer(_config((-20, 20), (2, 4), 0.5), seed)
    examples = [mixer.sample() for _ in range(400)]
    assert {example.kind for example in examples} == {"keyword", "caption"}
    assert {example.sources.shape[0] for example in examples if example.kind == "keyword"} == {2, 3, 4}


def _caption_partners(cfg, stem, draws=300):
    mixer = _mixer(cfg, 3)
    partners = set()
    for _ in range(draws):
        example = mixer.sample()
        assert example.kind == "caption"
        if example.clips[0].path.stem == stem:
            partners.add(example.clips[1].path.stem)
    return partners


def test_caption_partner_keywords_rule():
    # With the rule, "speech-both" is never paired with the other "speech" caption clip.
    cfg = _config((-5, 5), (2, 2), 1.0)
    assert _caption_partners(cfg, "speech-both") == {"siren-both", "cap1", "cap2", "cap3"}
    loose = dataclasses.replace(cfg, caption_partner_distinct_keywords=False)
    assert _caption_partners(loose, "speech-both") == {"siren-both", "cap1", "cap2", "cap3", "speech-caption"}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(st.characters(categories=("L",)), min_size=1, max_size=8), min_size=1, max_size=6))
def test_keywords_joined_into_one_phrase(keywords):
    phrase = join_keywords(keywords)
    if len(keywords) == 1:
        assert phrase == keywords[0]
    else:
        head, last = phrase.rsplit(" and ", 1)
        assert last == keywords[-1]
        assert head.split(", ") == keywords[:-1]


def test_join_example_from_the_paper():
    assert join_keywords(["guitar", "bird", "speech"]) == "guitar, bird and speech"
    assert join_keywords(["guitar", "bird"]) == "guitar and bird"
    with pytest.raises(ValueError):
        join_keywords([])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_same_seed_same_examples(seed):
    cfg = _config((-20, 20), (2, 4), 0.5)
    first, second = _mixer(cfg, seed), _mixer(cfg, seed)
    for _ in range(5):
        a, b = first.sample(), second.sample()
        assert (a.query, a.kind, a.ratio_db) == (b.query, b.kind, b.ratio_db)
        np.testing.assert_array_equal(a.mixture, b.mixture)
        np.testing.assert_array_equal(a.target, b.target)


def test_different_seeds_differ():
    cfg = _config((-20, 20), (2, 4), 0.5)
    first, second = _mixer(cfg, 1), _mixer(cfg, 2)
    assert [first.sample().ratio_db for _ in range(5)] != [second.sample().ratio_db for _ in range(5)]


def test_presets():
    assert MixerConfig.paper().ratio_db == (-20.0, 20.0)
    assert MixerConfig.paper().keyword_sources == (2, 4)
    assert MixerConfig.paper().sample_rate == 44100 and MixerConfig.paper().segment_samples == 441000
    caption = MixerConfig.caption_eval()
    assert caption.ratio_db == (-15.0, 15.0) and caption.caption_probability == 1.0
    keyword = MixerConfig.keyword_eval()
    assert keyword.ratio_db == (-10.0, 10.0) and keyword.keyword_sources == (4, 4)
    assert keyword.caption_probability == 0.0


def test_config_and_pool_errors():
    with pytest.raises(ValueError):
        MixerConfig(ratio_db=(5, -5))
    with pytest.raises(ValueError):
        MixerConfig(keyword_sources=(1, 3))
    with pytest.raises(ValueError):
        MixerConfig(peak=1.2)
    captions_only = [clip for clip in CLIPS if not clip.keywords]
    with pytest.raises(ValueError, match="keyword"):
        Mixer(captions_only, _config((-5, 5), (2, 4), 0.0), 0)
    with pytest.raises(ValueError, match="caption"):
        Mixer([clip for clip in CLIPS if not clip.captions], _config((-5, 5), (2, 4), 1.0), 0)
    with pytest.raises(ValueError):
        Mixer(CLIPS[:1], _config((-5, 5), (2, 4), 0.5), 0)
    only = Mixer(captions_only, _config((-5, 5), (2, 4), 0.5), 0, load=lambda c: AUDIO[c.path])
    assert {only.sample().kind for _ in range(10)} == {"caption"}
    four = Mixer([clip for clip in CLIPS if clip.path.stem in ("guitar", "dog", "rain")],
                 _config((-5, 5), (4, 4), 0.0), 0, load=lambda c: AUDIO[c.path])
    with pytest.raises(RuntimeError):  # 4 sources asked, only 3 clips of distinct keywords
        four.sample()
    all_speech = [clip for clip in CLIPS if "speech" in clip.keywords]
    mixer = Mixer(all_speech, _config((-5, 5), (2, 4), 0.0), 0, load=lambda c: AUDIO[c.path])
    with pytest.raises(RuntimeError, match="distinct keywords"):
        mixer.sample()


def test_long_clips_are_cropped_to_sound_and_short_ones_padded():
    loud = np.ones(SIZE // 2, np.float32)
    long = np.zeros(10 * SIZE, np.float32)
    long[7 * SIZE : 8 * SIZE] = 0.5  # only one stretch is not silent
    audio = {"a": long, "b": loud}
    clips = [_clip("a", ["a"]), _clip("b", ["b"])]
    cfg = MixerConfig(sample_rate=RATE, segment_seconds=SECONDS, caption_probability=0.0, max_tries=200)
    mixer = Mixer(clips, cfg, 0, load=lambda clip: audio[clip.path.stem])
    for _ in range(10):
        example = mixer.sample()
        assert example.sources.shape == (2, SIZE)
        short = example.sources[[clip.path.stem for clip in example.clips].index("b")]
        assert np.all(short[SIZE // 2 :] == 0) and np.all(short[: SIZE // 2] != 0)
        cropped = example.sources[[clip.path.stem for clip in example.clips].index("a")]
        assert np.any(cropped != 0)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rows = []
    for number, clip in enumerate(CLIPS):
        name = f"{clip.path.stem}.flac"
        sf.write(folder / name, 0.5 * np.sin(np.arange(2 * RATE) * 0.01 * (number + 1)), 2 * RATE)
        rows.append({"path": name, "keywords": clip.keywords, "captions": clip.captions,
                     "source": "test",
                     "split": "valid" if clip.path.stem in ("cap3", "speech-both") else "train"})
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_dataset_reads_files_and_yields_tensors(manifest):
    cfg = MixerConfig(segment_seconds=0.5)
    dataset = MixtureDataset(manifest, "train", sample_rate=RATE, seed=4, cfg=cfg, length=6)
    assert len(dataset) == 6
    item = dataset[2]
    assert set(item) == {"mixture", "target", "interference", "ratio_db", "num_sources", "query", "kind"}
    assert item["mixture"].dtype == torch.float32 and item["mixture"].shape == (RATE // 2,)
    torch.testing.assert_close(item["mixture"], item["target"] + item["interference"], atol=1e-6, rtol=0)
    assert -20 <= float(item["ratio_db"]) <= 20
    again = MixtureDataset(manifest, "train", sample_rate=RATE, seed=4, cfg=cfg, length=6)[2]
    assert torch.equal(item["mixture"], again["mixture"]) and item["query"] == again["query"]
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2]["mixture"], item["mixture"])
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch["mixture"].shape == (3, RATE // 2) and len(batch["query"]) == 3
    with pytest.raises(IndexError):
        dataset[6]


def test_dataset_split_and_errors(manifest):
    valid = MixtureDataset(read_manifest(manifest), "valid", sample_rate=RATE, seed=0,
                           cfg=MixerConfig(segment_seconds=0.5, caption_probability=1.0))
    assert len(valid) == 2
    # the valid split holds "cap3" and "speech-both", so each example pairs the two
    assert {valid[0]["kind"], valid[1]["kind"]} == {"caption"}
    assert {valid[i]["query"] for i in range(2)} <= {"birds chirp at dawn", "a man speaks"}
    with pytest.raises(ValueError, match="no clips in split 'test'"):
        MixtureDataset(manifest, "test", sample_rate=RATE)

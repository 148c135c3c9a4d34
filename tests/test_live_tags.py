"""Live tags on real recordings through the default bundle's tagger: the top sounds follow the input within a few
hops, the presence meters follow the queried class in input and output, and a free-text query finds its class."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from hybridsep_rt.live_tags import ClassMatcher, LiveTags
from hybridsep_rt.tagger import Tagger

DEFAULT = Path(__file__).resolve().parent.parent / "models" / "default"
SPEECH = sorted(Path("/usr/share/pocketsphinx/test/data/librivox").glob("*.wav"))  # pocketsphinx-testdata
KEYS = sorted(Path("/usr/share/buckle/wav").glob("*-0.wav"))  # bucklespring-data: key presses


def _mono(path: Path, rate: int) -> np.ndarray:
    audio, file_rate = sf.read(path, dtype="float32", always_2d=True)
    return soxr.resample(audio.mean(axis=1), file_rate, rate).astype(np.float32)


@pytest.fixture(scope="module")
def tagger():
    return Tagger(DEFAULT, device="cpu", threads=2)


def _window(wave: np.ndarray, size: int) -> np.ndarray:
    return np.resize(wave, size).astype(np.float32)  # tiled to the window


def test_top_sounds_follow_the_input_and_meters_follow_the_query(tagger):
    size = tagger.window_samples
    speech = _window(np.concatenate([_mono(p, tagger.sample_rate) for p in SPEECH[:2]]), size)
    clicks = _window(np.concatenate([np.pad(_mono(p, tagger.sample_rate), (0, 3000)) for p in KEYS[:30]]), size)
    tags = LiveTags(tagger, top=3)
    assert tags.snapshot().top == ()
    tags.set_query_class("speech")  # case does not matter
    for _ in range(3):
        tags.observe(speech, output=np.zeros(size, np.float32))  # as if the model removed the speech
    snap = tags.snapshot()
    assert snap.top[0][0] == "Speech" and snap.top[0][1] > 0.8 and snap.hops == 3
    assert snap.query_class == "Speech" and snap.present_input > 0.8 and snap.present_output < 0.1
    assert 0 < snap.seconds_per_hop < 1.0
    for _ in range(6):
        tags.observe(clicks)
    snap = tags.snapshot()
    assert snap.top[0][0] != "Speech" and snap.present_input < 0.2  # gone from the input within a few hops
    with pytest.raises(ValueError, match="not one of the tagger"):
        tags.set_query_class("no such sound")


def test_a_free_text_query_finds_the_class_it_names():
    classes = ("Speech", "Dog", "Rain")
    directions = {"speech": 0, "talk": 0, "dog": 1, "bark": 1, "rain": 2}

    def embed_text(text: str) -> np.ndarray:  # a stand-in text encoder: one direction per concept word
        vector = np.full(3, 0.01)
        for word, axis in directions.items():
            vector[axis] += word in text.lower()
        return vector[None]

    match = ClassMatcher(classes, embed_text)
    assert match("dog") == "Dog" and match("RAIN") == "Rain"
    assert match("someone talking") == "Speech" and match("a dog barking loudly") == "Dog"

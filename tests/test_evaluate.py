"""Test sets, the evaluation loop, the Table-2 formatter and the `eval` command, on tiny synthetic audio."""

import argparse
import csv
import dataclasses
import io
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training import evaluate as ev
from training.data.manifest import read_manifest
from training.data.mixer import Example

RATE = 8000
SECONDS = 0.5
SIZE = int(RATE * SECONDS)
EMBED_DIM = 4


def _embed_audio(waves: np.ndarray) -> np.ndarray:
    """Log energies of 4 frequency bands: a deterministic stand-in for a CLAP audio encoder, (B, N) -> (B, 4)."""
    spectrum = np.abs(np.fft.rfft(np.asarray(waves, dtype=np.float64), axis=-1)) ** 2
    bands = np.array_split(spectrum, EMBED_DIM, axis=-1)
    return np.log(np.stack([band.sum(axis=-1) for band in bands], axis=-1) + 1e-6)


def _embed_frames(waves: np.ndarray) -> np.ndarray:
    """The band log energies of each half of the wave: a stand-in reference encoder, (B, N) -> (B, 2, 4)."""
    halves = np.array_split(np.asarray(waves, dtype=np.float64), 2, axis=-1)
    return np.stack([_embed_audio(half) for half in halves], axis=1)


def _embed_text(texts: list[str]) -> np.ndarray:
    """A fixed pseudo-random vector per text, (B, 4)."""
    return np.stack([np.random.default_rng(sum(map(ord, text))).standard_normal(EMBED_DIM) for text in texts])


def _tone(frequency: float, rng: np.random.Generator) -> np.ndarray:
    time = np.arange(SIZE) / RATE
    return (0.3 * np.sin(2 * np.pi * frequency * time + rng.uniform(0, 6)) + 0.01 * rng.standard_normal(SIZE))


def _examples(count: int, seed: int = 0) -> list[Example]:
    """Two-source mixtures: a tone target and a noise interference."""
    rng = np.random.default_rng(seed)
    examples = []
    for index in range(count):
        target = _tone(rng.uniform(200, 3000), rng).astype(np.float32)
        rest = (rng.uniform(0.05, 0.3) * rng.standard_normal(SIZE)).astype(np.float32)
        mixture = target + rest
        examples.append(Example(mixture=mixture, target=target, interference=rest,
                                sources=np.stack([target, rest]), query=f"tone {index % 3}", kind="keyword",
                                ratio_db=0.0, gain=1.0))
    return examples


def _perfect_system(examples):
    targets = {example.mixture.tobytes(): example.target for example in examples}
    return lambda mixture, query: targets[mixture.tobytes()]


def test_reference_rows_and_trivial_systems():
    examples = _examples(12)
    results = ev.evaluate({"perfect": _perfect_system(examples), "identity": lambda mixture, query: mixture},
                          examples, _embed_audio, _embed_text, _embed_frames, oracle_n_fft=256, oracle_hop=64,
                          batch_size=5, progress=False)
    assert results.systems == [ev.NO_PROCESSING, ev.ORACLE_IRM, "perfect", "identity"]
    assert results.n == 12 and results.embedding_dim == EMBED_DIM
    assert all(results.scores["perfect"][metric].shape == (12,) for metric in ev.METRICS)
    # the mixture itself: SDRi 0 by definition; "identity" is the same system
    np.testing.assert_array_equal(results.scores[ev.NO_PROCESSING]["sdri"], 0.0)
    for metric in ev.METRICS:
        np.testing.assert_allclose(results.scores["identity"][metric], results.scores[ev.NO_PROCESSING][metric])
    assert results.fad["identity"] == pytest.approx(results.fad[ev.NO_PROCESSING])
    # the target itself: error 0, so SDR is the DCASE epsilon bound, CLAPScore_A 100, FAD 0
    assert results.mean("perfect", "sdr") > 60.0
    np.testing.assert_allclose(results.scores["perfect"]["clap_score_a"], 100.0)
    assert results.fad["perfect"] == pytest.approx(0.0, abs=1e-6)
    target_emb = _embed_audio(np.stack([ex.target for ex in examples]))
    text_emb = _embed_text([ex.query for ex in examples])
    expected_clap = [100 * np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(target_emb, text_emb)]
    np.testing.assert_allclose(results.scores["perfect"]["clap_score"], expected_clap)
    # the oracle mask separates a tone from noise well
    assert results.mean(ev.ORACLE_IRM, "sdri") > 5.0
    assert results.fad[ev.NO_PROCESSING] > results.fad[ev.ORACLE_IRM]
    assert results.fad_note is None


def test_query_blind_rows_half_gain_and_the_best_scalar_gain_per_mixture():
    examples = _examples(8)
    results = ev.evaluate({}, examples, _embed_audio, _embed_text, _embed_frames, oracle_n_fft=256, oracle_hop=64,
                          progress=False, query_blind=True)
    assert results.systems == [ev.NO_PROCESSING, ev.ORACLE_IRM, ev.HALF_GAIN, ev.ORACLE_GAIN]
    sdr_at = lambda example, gain: ev.sdr(example.target, (gain * example.mixture).astype(np.float32))
    for index, example in enumerate(examples):
        assert results.scores[ev.HALF_GAIN]["sdr"][index] == pytest.approx(sdr_at(example, 0.5))
        best = max(sdr_at(example, gain) for gain in np.linspace(0.0, 2.0, 401))
        assert best - 1e-3 <= results.scores[ev.ORACLE_GAIN]["sdr"][index] <= best + 0.05
        assert results.scores[ev.ORACLE_GAIN]["sdr"][index] >= results.scores[ev.NO_PROCESSING]["sdr"][index]
    # SI-SDR does not see a gain: both rows equal the mixture's
    for row in ev.QUERY_BLIND:
        np.testing.assert_allclose(results.scores[row]["si_sdr"], results.scores[ev.NO_PROCESSING]["si_sdr"], atol=1e-4)
    markdown, _ = ev.format_table({"KA": results})
    assert [line.split("|")[1].strip() for line in markdown.splitlines()[2:6]] == list(results.systems)
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    args = parser.parse_args(["--manifest", "m", "--bundle", "a=b", "-o", "out", "--query-blind"])
    assert args.query_blind


def test_evaluate_rejects_reserved_names_and_bad_shapes():
    examples = _examples(2)
    with pytest.raises(ValueError, match="reserved"):
        ev.evaluate({ev.ORACLE_IRM: lambda m, q: m}, examples, _embed_audio, _embed_text, _embed_frames,
                    progress=False)
    with pytest.raises(ValueError, match="reserved"):
        ev.evaluate({ev.ORACLE_GAIN: lambda m, q: m}, examples, _embed_audio, _embed_text, _embed_frames,
                    progress=False)
    with pytest.raises(ValueError, match="'short' returned shape"):
        ev.evaluate({"short": lambda m, q: m[:-1]}, examples, _embed_audio, _embed_text, _embed_frames,
                    progress=False)


def test_fad_is_not_available_with_too_few_examples():
    results = ev.evaluate({}, _examples(EMBED_DIM // 2), _embed_audio, _embed_text, _embed_frames, progress=False)
    assert all(math.isnan(value) for value in results.fad.values())  # 2 frames per example: N = D frames
    assert f"N={EMBED_DIM}" in results.fad_note and f"D={EMBED_DIM}" in results.fad_note
    markdown, _ = ev.format_table({"KA": results})
    assert "n/a" in markdown and "FAD n/a on KA" in markdown


def _results_by_set():
    small = ev.evaluate({"model A": lambda m, q: 0.5 * m}, _examples(10, seed=1), _embed_audio, _embed_text,
                        _embed_frames, oracle_n_fft=256, oracle_hop=64, progress=False)
    large = ev.evaluate({"model A": lambda m, q: 0.5 * m, "model B": lambda m, q: m}, _examples(12, seed=2),
                        _embed_audio, _embed_text, _embed_frames, oracle_n_fft=256, oracle_hop=64, progress=False)
    return {"KA": large, "DE-S-like": small}


def test_table_has_the_shape_of_table_2():
    by_set = _results_by_set()
    markdown, table_csv = ev.format_table(by_set)
    lines = markdown.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    groups = ["SDR ↑", "SDRi ↑", "CLAPScore ↑", "CLAPScore_A ↑", "FAD ↓"]
    assert header == ["System"] + [f"{group} {name}" for group in groups for name in ("KA", "DE-S-like")]
    rows = [line for line in lines[2:] if line.startswith("|")]
    assert [row.strip("|").split("|")[0].strip() for row in rows] == [ev.NO_PROCESSING, ev.ORACLE_IRM,
                                                                       "model A", "model B"]
    assert all(len(row.strip("|").split("|")) == len(header) for row in rows)
    cells = dict(zip(header, (cell.strip() for cell in rows[2].strip("|").split("|"))))
    assert cells["SDR ↑ KA"] == f"{by_set['KA'].mean('model A', 'sdr'):.2f}"
    assert cells["CLAPScore_A ↑ DE-S-like"] == f"{by_set['DE-S-like'].mean('model A', 'clap_score_a'):.1f}"
    model_b = [cell.strip() for cell in rows[3].strip("|").split("|")]
    assert model_b[dict((name, i) for i, name in enumerate(header))["SDR ↑ DE-S-like"]] == "n/a"  # not run there
    assert "KA N = 12" in markdown and "DE-S-like N = 10" in markdown

    parsed = list(csv.DictReader(io.StringIO(table_csv)))
    assert [row["system"] for row in parsed] == [ev.NO_PROCESSING, ev.ORACLE_IRM, "model A", "model B"]
    assert float(parsed[0]["sdri_KA"]) == 0.0 and parsed[0]["n_DE-S-like"] == "10"
    assert float(parsed[2]["fad_KA"]) == pytest.approx(by_set["KA"].fad["model A"], rel=1e-5)


# ---------------------------------------------------------------------------------------------- test sets


def _write_corpus(folder: Path, valid: bool = False) -> Path:
    """A test split of 12 labelled clips (tones and noises) and its manifest; with `valid`, a valid split of 6 more,
    one per class, clip `12 + k` a tone of 150 (13 + k) Hz."""
    rng = np.random.default_rng(7)
    rows = []
    labels = [(["piano"], ["a piano plays a tune"]), (["dog"], ["a dog barks twice"]), (["rain"], []),
              (["speech"], ["a man speaks slowly"]), (["bird"], ["birds chirp"]), (["car"], ["a car drives past"])]
    for index in range(18 if valid else 12):
        keywords, captions = labels[index % len(labels)]
        path = folder / f"clip{index}.wav"
        sf.write(path, (_tone(150.0 * (index + 1), rng) * rng.uniform(0.3, 1.0)).astype(np.float32), RATE)
        rows.append({"path": path.name, "keywords": keywords, "captions": captions, "source": "test",
                     "split": "test" if index < 12 else "valid"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def test_test_sets_follow_the_eval_rules_and_are_deterministic(tmp_path):
    manifest = _write_corpus(tmp_path)
    keyword = ev.make_test_set(manifest, "test", "keyword", 6, seed=3, sample_rate=RATE, segment_seconds=SECONDS)
    caption = ev.make_test_set(manifest, "test", "caption", 6, seed=3, sample_rate=RATE, segment_seconds=SECONDS)
    assert all(ex.kind == "keyword" and ex.sources.shape == (4, SIZE) and -10 <= ex.ratio_db <= 10 for ex in keyword)
    assert all(ex.kind == "caption" and ex.sources.shape == (2, SIZE) and -15 <= ex.ratio_db <= 15 for ex in caption)
    assert all(" " in ex.query for ex in caption)  # captions, not keywords
    again = ev.make_test_set(manifest, "test", "keyword", 4, seed=3, sample_rate=RATE, segment_seconds=SECONDS)
    for first, second in zip(keyword, again):  # a shorter set is a prefix of a longer one
        np.testing.assert_array_equal(first.mixture, second.mixture)
        assert first.query == second.query
    other = ev.make_test_set(manifest, "test", "keyword", 6, seed=4, sample_rate=RATE, segment_seconds=SECONDS)
    assert any(not np.array_equal(a.mixture, b.mixture) for a, b in zip(keyword, other))
    with pytest.raises(ValueError, match="no clips in split 'train'"):
        ev.make_test_set(manifest, "train", "keyword", 2, sample_rate=RATE, segment_seconds=SECONDS)
    with pytest.raises(ValueError, match="kind"):
        ev.make_test_set(manifest, "test", "music", 2, sample_rate=RATE, segment_seconds=SECONDS)


def test_test_set_cache(tmp_path):
    manifest = _write_corpus(tmp_path)
    cache = tmp_path / "cache" / "ka.npz"
    drawn = ev.make_test_set(manifest, "test", "keyword", 5, seed=1, sample_rate=RATE, cache=cache,
                             segment_seconds=SECONDS)
    assert cache.is_file() and not list(cache.parent.glob(".*"))  # written atomically, no temp file left
    loaded = ev.make_test_set(manifest, "test", "keyword", 5, seed=1, sample_rate=RATE, cache=cache,
                              segment_seconds=SECONDS, load=lambda clip: pytest.fail("read audio despite cache"))
    for a, b in zip(drawn, loaded):
        np.testing.assert_array_equal(a.mixture, b.mixture)
        np.testing.assert_array_equal(a.target, b.target)
        np.testing.assert_array_equal(b.interference, b.mixture - b.target)
        assert (a.query, a.kind, a.ratio_db, a.gain) == (b.query, b.kind, b.ratio_db, b.gain)
        assert [clip.path for clip in a.clips] == [clip.path for clip in b.clips]
        assert a.clips[0].keywords == b.clips[0].keywords
    redrawn = ev.make_test_set(manifest, "test", "keyword", 5, seed=2, sample_rate=RATE, cache=cache,
                               segment_seconds=SECONDS)  # other settings: drawn again and rewritten
    assert any(not np.array_equal(a.mixture, b.mixture) for a, b in zip(drawn, redrawn))
    with np.load(cache) as data:
        assert json.loads(str(data["identity"]))["seed"] == 2


# ---------------------------------------------------------------------------------------------- bundles


class FakeSeparator:
    """The Separator protocol plus the CLAP embedders of an OnnxSeparator: halves the mixture."""

    def __init__(self, folder=None, sample_rate=RATE, window_samples=SIZE, gain=0.5):
        self.folder = folder
        self.sample_rate = sample_rate
        self.window_samples = window_samples
        self.gain = gain
        self.prepared = []
        self.calls = 0

    def prepare(self, query):
        self.prepared.append(query.text)
        return query.text

    def separate(self, window, condition):
        assert window.shape == (1, self.window_samples) and isinstance(condition, str)
        self.calls += 1
        return self.gain * window

    def embed_audio(self, clip):
        assert clip.ndim == 1
        return _embed_audio(clip[None])

    def embed_text(self, text):
        assert isinstance(text, str)
        return _embed_text([text])


def test_offline_system_runs_the_separator_per_window():
    separator = FakeSeparator()
    system = ev.offline_system(separator, RATE)
    mixture = np.random.default_rng(0).standard_normal(SIZE).astype(np.float32)
    np.testing.assert_allclose(system(mixture, "a dog"), 0.5 * mixture, rtol=1e-5, atol=1e-6)
    system(mixture, "a dog")
    assert separator.calls == 2 and separator.prepared == ["a dog"]  # one window per call, one prepare per query
    resampling = ev.offline_system(FakeSeparator(sample_rate=2 * RATE, window_samples=2 * SIZE), RATE)
    time = np.arange(SIZE) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 300 * time)).astype(np.float32)
    estimate = resampling(tone, "a tone")
    assert estimate.shape == tone.shape
    np.testing.assert_allclose(estimate[200:-200], 0.5 * tone[200:-200], atol=1e-2)


class RampSeparator(FakeSeparator):
    """Scales each window by a ramp, so what a sample gets depends on which windows are overlap-added."""

    def separate(self, window, condition):
        return window * np.linspace(0.0, 1.0, self.window_samples, dtype=np.float32)


def test_offline_system_scores_the_streaming_rule():
    from hybridsep_rt.engine import Query
    from hybridsep_rt.overlap import separate_offline

    separator = RampSeparator()
    mixture = np.random.default_rng(1).standard_normal(2 * SIZE).astype(np.float32)
    hop = SIZE // 4
    streamed = ev.offline_system(separator, RATE, hop / RATE, lookahead_seconds=0.0)(mixture, "q")
    expected = separate_offline(mixture[None], separator, separator.prepare(Query(text="q")), hop_samples=hop,
                                lookahead_samples=0)[0]
    np.testing.assert_allclose(streamed, expected, atol=1e-6)
    every_window = ev.offline_system(separator, RATE, hop / RATE)(mixture, "q")
    assert np.abs(every_window - streamed).max() > 0.1


def test_yamnet_frames_are_the_reference_space_of_fad_and_clapscore_a():
    import torch

    from training.models.yamnet import YAMNet

    waves = np.random.default_rng(0).standard_normal((2, 5 * 16000)).astype(np.float32) * 0.1
    frames = ev.yamnet_frames(16000)(waves)
    assert frames.shape == (2, 5, 1024)  # 15 cells of 0.32 s with their centre in 5 s -> five 0.96 s frames
    with torch.no_grad():
        cells = YAMNet(16000, classifier=False).frame_features(torch.from_numpy(waves), 14).numpy()
    np.testing.assert_allclose(frames[:, 1], cells[:, 3:6].mean(axis=1), rtol=1e-5, atol=1e-6)
    assert ev.yamnet_frames(8000)(waves[:, :4000]).shape == (2, 1, 1024)  # 0.5 s: one frame of its cells


def test_evaluate_separators_and_report(tmp_path):
    manifest = _write_corpus(tmp_path)
    separators = {"half": FakeSeparator(), "whole": FakeSeparator(gain=1.0)}
    results = ev.evaluate_separators(separators, manifest, "test", {"keyword": 6, "caption": 5}, seed=0,
                                     cache_dir=tmp_path / "cache", segment_seconds=SECONDS, progress=False)
    assert list(results) == ["KA", "DE-S-like"]
    assert results["KA"].n == 6 and results["DE-S-like"].n == 5
    for name, result in results.items():
        assert result.systems == [ev.NO_PROCESSING, ev.ORACLE_IRM, "half", "whole"]
        np.testing.assert_allclose(result.scores["whole"]["sdri"], 0.0, atol=1e-4)
        np.testing.assert_allclose(result.scores["half"]["si_sdr"], result.scores[ev.NO_PROCESSING]["si_sdr"],
                                   atol=1e-3)
        assert result.embedding_dim == 1024  # CLAPScore_A and FAD in YAMNet's space, not the bundles' CLAP
        # half the gain: YAMNet's log-mel front end hears it, so the two rows differ there
        assert not np.allclose(result.scores["half"]["clap_score_a"], result.scores["whole"]["clap_score_a"])
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    markdown = ev.write_report(results, tmp_path / "out")
    assert (tmp_path / "out" / "table.md").read_text() == markdown
    assert (tmp_path / "out" / "table.csv").is_file()
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert table["KA"]["n"] == 6 and set(table["KA"]["systems"]) == {ev.NO_PROCESSING, ev.ORACLE_IRM, "half", "whole"}
    assert table["KA"]["systems"]["half"]["sdri"] == pytest.approx(results["KA"].mean("half", "sdri"), abs=1e-4)
    rows = list(csv.DictReader(open(tmp_path / "out" / "examples_KA.csv")))
    assert len(rows) == 4 * 6 and set(ev.METRICS) <= set(rows[0])


class EchoSeparator(FakeSeparator):
    """Outputs the mixture for one query and silence for every other: a system that follows the query."""

    def __init__(self, keep: str, **kwargs):
        super().__init__(**kwargs)
        self.keep = keep

    def separate(self, window, condition):
        return window if condition == self.keep else 0.0 * window


def test_other_query_control_row(tmp_path):
    manifest = _write_corpus(tmp_path)
    examples = ev.make_test_set(manifest, "test", "keyword", 6, 0, RATE, segment_seconds=SECONDS, progress=False)
    queries = sorted({example.query for example in examples})
    assert len(queries) >= 2
    follower = ev.offline_system(EchoSeparator(queries[0]), RATE)
    control = ev.other_query_system(follower, [example.query for example in examples])
    mixture = examples[0].mixture
    np.testing.assert_allclose(control(mixture, queries[-1]), mixture, atol=1e-5)  # the last query's other is the first
    assert not np.any(control(mixture, queries[0]))
    with pytest.raises(ValueError, match="two distinct"):
        ev.other_query_system(follower, ["a dog", "a dog"])

    separators = {"half": FakeSeparator(), "whole": FakeSeparator(gain=1.0)}
    results = ev.evaluate_separators(separators, manifest, "test", {"keyword": 6, "caption": 0}, seed=0,
                                     segment_seconds=SECONDS, progress=False, other_query="half")
    ka = results["KA"]
    assert ka.systems == [ev.NO_PROCESSING, ev.ORACLE_IRM, "half", "whole", "half, other query"]
    np.testing.assert_allclose(ka.scores["half, other query"]["sdri"], ka.scores["half"]["sdri"])  # query-blind
    with pytest.raises(ValueError, match="not one of the bundles"):
        ev.evaluate_separators(separators, manifest, "test", {"keyword": 6, "caption": 0}, other_query="nope")


class ExampleEchoSeparator(EchoSeparator):
    """Outputs the mixture when queried by an example clip whose strongest frequency is `keep` Hz (to 10 Hz) and
    silence for any other query."""

    def prepare(self, query):
        if query.example is None:
            return "text"
        spectrum = np.abs(np.fft.rfft(query.example))
        return round(float(np.argmax(spectrum) * self.sample_rate / query.example.shape[-1]), -1)


def test_example_query_row(tmp_path):
    manifest = _write_corpus(tmp_path, valid=True)
    examples = ev.make_test_set(manifest, "test", "keyword", 6, 0, RATE, segment_seconds=SECONDS, progress=False)
    clips = ev.example_clips(read_manifest(manifest).split("valid"), RATE)
    assert set(clips) == {"piano", "dog", "rain", "speech", "bird", "car"}
    piano = 150.0 * 13  # the first valid clip: a piano, clip12
    follower = ExampleEchoSeparator(piano)
    system = ev.example_query_system(follower, RATE, examples, clips)
    for example in examples:
        expected = example.mixture if ev.class_of(example.clips[0]) == "piano" else 0.0 * example.mixture
        np.testing.assert_allclose(system(example.mixture, example.query), expected, atol=1e-5)
    assert any(ev.class_of(example.clips[0]) == "piano" for example in examples)
    with pytest.raises(ValueError, match="no example clip for the classes \\['car'"):
        ev.example_query_system(follower, RATE, examples, {k: v for k, v in clips.items() if k != "car"})
    other = next(example for example in examples if example.query != examples[0].query)
    confused = [examples[0], dataclasses.replace(other, query=examples[0].query)]
    with pytest.raises(ValueError, match="names two classes"):
        ev.example_query_system(follower, RATE, confused, clips)

    separators = {"half": FakeSeparator(), "echo": ExampleEchoSeparator(piano)}
    results = ev.evaluate_separators(separators, manifest, "test", {"keyword": 6, "caption": 4}, seed=0,
                                     segment_seconds=SECONDS, progress=False, example_query="echo")
    for result in results.values():
        assert result.systems == [ev.NO_PROCESSING, ev.ORACLE_IRM, "half", "echo", "echo, example clip"]
        np.testing.assert_allclose(result.scores["echo"]["sdr"], 0.0, atol=1e-6)  # text queries: silence
    drawn = ev.make_test_set(manifest, "test", "keyword", 6, 0, RATE, segment_seconds=SECONDS)
    is_piano = np.array([ev.class_of(example.clips[0]) == "piano" for example in drawn])
    ka = results["KA"].scores
    np.testing.assert_allclose(ka["echo, example clip"]["sdr"],
                               np.where(is_piano, ka[ev.NO_PROCESSING]["sdr"], 0.0), atol=1e-4)
    with pytest.raises(ValueError, match="another split"):
        ev.evaluate_separators(separators, manifest, "test", {"keyword": 6, "caption": 0}, example_query="echo",
                               example_split="test")
    with pytest.raises(ValueError, match="not one of the bundles"):
        ev.evaluate_separators(separators, manifest, "test", {"keyword": 6, "caption": 0}, example_query="nope")
    with pytest.raises(ValueError, match="no labelled clips in split 'train'"):
        ev.evaluate_separators(separators, manifest, "test", {"keyword": 6, "caption": 0}, example_query="echo",
                               example_split="train")


def test_eval_command(tmp_path, monkeypatch, capsys):
    manifest = _write_corpus(tmp_path)
    module = types.ModuleType("hybridsep_rt.separator")
    module.OnnxSeparator = FakeSeparator  # the command loads bundles through hybridsep_rt.separator.OnnxSeparator
    monkeypatch.setitem(sys.modules, "hybridsep_rt.separator", module)
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    out = tmp_path / "report"
    args = parser.parse_args(["--manifest", str(manifest), "--bundle", f"tiny={tmp_path}", "--keyword-n", "5",
                              "--caption-n", "0", "--seed", "1", "-o", str(out), "--quiet",
                              "--other-query", "tiny"])
    assert ev.run(args) == 0
    assert "| tiny |" in (out / "table.md").read_text() and "| tiny, other query |" in (out / "table.md").read_text()
    assert (out / "examples_KA.csv").is_file() and not (out / "examples_DE-S-like.csv").exists()
    assert "| System |" in capsys.readouterr().out
    duplicate = parser.parse_args(["--manifest", str(manifest), "--bundle", "a=x", "--bundle", "a=y", "-o", str(out)])
    assert ev.run(duplicate) == ev.EXIT_USAGE
    assert "distinct" in capsys.readouterr().err
    no_examples = parser.parse_args(["--manifest", str(manifest), "--bundle", f"tiny={tmp_path}", "--keyword-n", "5",
                                     "--caption-n", "0", "-o", str(out), "--quiet", "--example-query", "tiny"])
    assert ev.run(no_examples) == ev.EXIT_USAGE  # this corpus has no valid split
    assert "no labelled clips in split 'valid'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--manifest", str(manifest), "--bundle", "no-equals-sign", "-o", str(out)])


def test_a_balanced_test_set_draws_targets_by_class(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for index, keyword in enumerate(["speech"] * 9 + ["piano", "dog", "bird"]):
        sf.write(tmp_path / f"c{index}.wav", _tone(200.0 * (index + 1), rng).astype(np.float32), RATE)
        rows.append({"path": f"c{index}.wav", "keywords": [keyword], "captions": [], "source": "t", "split": "test"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    draw = lambda balanced, cache=None: ev.make_test_set(manifest, "test", "keyword", 80, 0, RATE, cache=cache,
                                                         segment_seconds=SECONDS, balance_classes=balanced)
    speech_share = lambda examples: np.mean([ex.clips[0].keywords == ["speech"] for ex in examples])
    assert speech_share(draw(False)) > 0.6
    assert speech_share(draw(True)) == pytest.approx(0.25, abs=0.12)
    cache = tmp_path / "set.npz"
    plain = draw(False, cache)
    balanced = draw(True, cache)  # another identity: drawn again, not read from the plain set's cache
    assert [ex.query for ex in balanced] != [ex.query for ex in plain]

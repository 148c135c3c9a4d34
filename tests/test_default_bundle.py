"""The shipped default bundle (models/default): it loads and checks out, it records how it was made and how it
scores, and `make demo` (`hybridsep demo` on it and the shipped scene) runs end to end."""

import json
from pathlib import Path

import numpy as np
import pytest

from hybridsep_rt.bundle import Bundle
from hybridsep_rt.cli import main as hybridsep
from hybridsep_rt.demo import DEFAULT_DEMO, load_scene, score
from hybridsep_rt.engine import Query
from hybridsep_rt.separator import OnnxSeparator

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "models" / "default"
MAX_COMMITTED_MB = 40.0  # the whole default bundle is committed to the repository


def test_default_bundle_is_complete_and_small():
    bundle = Bundle.load(DEFAULT)  # checks every file's sha256 and the graphs' inputs and outputs
    size = sum(f.stat().st_size for f in DEFAULT.rglob("*") if f.is_file()) / 1e6
    assert size < MAX_COMMITTED_MB, f"{size:.1f} MB"
    assert bundle.sample_rate == 44100 and bundle.window_samples == 10 * 44100
    provenance = bundle.provenance
    assert provenance["git_commit"]
    stages = [run["stage"] for run in provenance["training"]]  # newest first; stage 2 may span several runs
    assert stages[0] == "stage2" and stages[-2:] == ["stage1", "stage0"] and set(stages[:-2]) == {"stage2"}
    assert all(run["steps_done"] > 0 for run in provenance["training"])
    offline = provenance["evaluation"]["offline"]
    assert offline["KA"]["n"] >= 300 and offline["DE-S-like"]["n"] >= 300
    assert np.isfinite(offline["KA"]["systems"]["Hybrid-Sep"]["sdri"])


def test_make_demo_runs_on_the_default_bundle(tmp_path, capsys):
    assert hybridsep(["demo", "--out", str(tmp_path), "--threads", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert "SDRi" in printed and (tmp_path / "spectrograms.png").stat().st_size > 10_000
    for query in ("piano", "speech", "siren"):
        assert (tmp_path / f"{query}_extract.wav").is_file() and (tmp_path / f"{query}_remove.wav").is_file()
    assert [q["query"] for q in scores["queries"]] == ["piano", "speech", "siren"]
    assert all(np.isfinite(q[mode]["sdri"]) for q in scores["queries"] for mode in ("extract", "remove"))


@pytest.fixture(scope="module")
def siren_scene():
    """The default bundle's separator and, from the demo scene, the first 10 s (mixture, siren reference) and the
    siren's second 10 s."""
    scene = load_scene(DEFAULT_DEMO)
    separator = OnnxSeparator(DEFAULT, device="cpu", threads=2)
    assert scene.sample_rate == separator.sample_rate
    w = separator.window_samples
    siren = scene.references["siren"]
    return separator, scene.mixture[:1, :w], siren[:1, :w], siren[0, w:2 * w]


def test_a_quiet_recording_separates_as_well_as_a_loud_one(siren_scene):
    """The first 10 s of the demo scene, as shipped and 30 dB down (a quiet microphone): the siren comes out
    equally well."""
    separator, mixture, reference, _ = siren_scene
    condition = separator.prepare(Query(text="siren"))
    scores = []
    for gain in (1.0, 10 ** (-30 / 20)):
        separated = separator.separate(gain * mixture, condition)
        scores.append(score(gain * reference, separated, gain * mixture)["sdri"])
    assert scores[0] > 3.0, scores
    assert abs(scores[1] - scores[0]) < 0.05, scores


def test_a_quiet_example_clip_queries_like_a_loud_one(siren_scene):
    """Query by example: the siren's second 10 s of the demo scene, at its level and 30 dB down, picks the siren
    out of the first 10 s equally well."""
    separator, mixture, reference, example = siren_scene
    scores = []
    for gain in (1.0, 10 ** (-30 / 20)):
        condition = separator.prepare(Query(example=gain * example))
        scores.append(score(reference, separator.separate(mixture, condition), mixture)["sdri"])
    assert scores[0] > 3.0, scores
    assert abs(scores[1] - scores[0]) < 0.05, scores

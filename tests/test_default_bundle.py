"""The shipped default bundle (models/default): it loads and checks out, it records how it was made and how it
scores, and `make demo` (`hybridsep demo` on it and the shipped scene) runs end to end."""

import json
from pathlib import Path

import numpy as np

from hybridsep_rt.bundle import Bundle
from hybridsep_rt.cli import main as hybridsep

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

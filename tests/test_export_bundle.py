"""Export to a model bundle (export/bundle.py, `hybridsep export`) and the runtime against torch.

A `small` model with random weights and a 1 s window (the window length does not matter here) is exported
once with fp16 variants; a one-stage model goes through `hybridsep export` from a save_pretrained folder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export import bundle as export_module
from export.bundle import ParityError, export_bundle, snr_db, synthetic_audio
from hybridsep_rt.bundle import FORMAT_VERSION, GRAPH_IO, MANIFEST_FILE, Bundle, sha256_file
from hybridsep_rt.cli import main as hybridsep
from hybridsep_rt.engine import Query
from hybridsep_rt.separator import OnnxSeparator, fit_to_window
from training.config import get_config
from training.models.hybridsep import HybridSep

WINDOW_SECONDS = 1.0

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HybridSep(get_config("small", window_seconds=WINDOW_SECONDS)).eval()


@pytest.fixture(scope="module")
def export_log():
    return []


@pytest.fixture(scope="module")
def bundle_dir(model, export_log, tmp_path_factory):
    return export_bundle(model, tmp_path_factory.mktemp("export") / "bundle", fp16=True, threads=2,
                         evaluation={"sdr_db": 1.5}, log=export_log.append)


@pytest.fixture(scope="module")
def separator(bundle_dir):
    return OnnxSeparator(bundle_dir, device="cpu", threads=2, precision="fp32")


def stereo_window(model) -> np.ndarray:
    window = model.cfg.window_samples
    left = synthetic_audio(window, model.cfg.sample_rate, seed=1)
    right = 0.5 * synthetic_audio(window, model.cfg.sample_rate, seed=2)
    return np.stack([left, right])


def test_bundle_holds_the_graphs_and_a_complete_manifest(model, bundle_dir):
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    cfg = model.cfg
    assert manifest["format_version"] == FORMAT_VERSION
    assert (manifest["sample_rate"], manifest["window_samples"], manifest["embedding_dim"]) == (
        cfg.sample_rate, cfg.window_samples, cfg.embedding_dim)
    assert manifest["max_text_tokens"] == model.clap.max_text_tokens
    assert manifest["one_stage"] is False
    assert set(manifest["graphs"]) == set(GRAPH_IO)
    for name, graph in manifest["graphs"].items():
        assert [s["name"] for s in graph["inputs"]] == list(GRAPH_IO[name][0])
        assert [s["name"] for s in graph["outputs"]] == list(GRAPH_IO[name][1])
        assert set(graph["variants"]) == {"fp32", "fp16"}
        for precision, variant in graph["variants"].items():
            assert sha256_file(bundle_dir / variant["file"]) == variant["sha256"]
            minimum = 50.0 if precision == "fp32" else export_module.FP16_MIN_SNR_DB
            assert {label for label in variant["parity"]} == {"random", "real"}
            for figures in variant["parity"].values():
                assert figures["snr_db"] >= minimum and figures["max_abs_error"] >= 0
    asm = manifest["graphs"]["asm"]
    assert asm["inputs"][0] == {"name": "mixture", "shape": ["batch", cfg.window_samples], "dtype": "float32"}
    assert asm["outputs"][0]["shape"] == ["batch", cfg.window_samples]
    assert sha256_file(bundle_dir / "tokenizer.json") == manifest["tokenizer"]["sha256"]
    provenance = manifest["provenance"]
    assert provenance["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert provenance["evaluation"] == {"sdr_db": 1.5}
    assert "git_commit" in provenance and provenance["created"]
    # Built in a temporary folder renamed into place: nothing else is left beside the bundle.
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["bundle"]
    assert Bundle.load(bundle_dir).window_samples == cfg.window_samples


def test_export_prints_the_parity_figures(export_log):
    figures = [line for line in export_log if "SNR" in line]
    assert len(figures) == 4 * 2 * 2  # graphs x precisions x inputs
    assert all("max abs error" in line for line in figures)


def test_runtime_embeddings_match_torch(model, separator):
    query = "a dog barking in the rain"
    with torch.no_grad():
        expected = model.clap.embed_text([query]).numpy()
    assert snr_db(expected, separator.embed_text(query)) >= 50

    clip = synthetic_audio(model.cfg.window_samples // 2, model.cfg.sample_rate, seed=3)
    with torch.no_grad():
        expected = model.clap.audio_features(torch.from_numpy(fit_to_window(clip, model.cfg.window_samples))[None])
    condition = separator.prepare(Query(example=clip))
    assert condition.kind == "example"
    assert snr_db(expected.numpy(), condition.embedding) >= 50


def test_runtime_separation_matches_torch(model, separator):
    window = stereo_window(model)
    query = "a trumpet"
    with torch.no_grad():
        text_emb = model.clap.embed_text([query]).repeat(2, 1)
        expected = model(torch.from_numpy(window), text_emb).numpy()
    got = separator.separate(window, separator.prepare(Query(text=query)))
    assert got.shape == window.shape and got.dtype == np.float32
    for channel in range(2):
        assert snr_db(expected[channel], got[channel]) >= 50


def test_query_by_example_skips_the_aet(model, separator):
    window = stereo_window(model)
    example = synthetic_audio(model.cfg.window_samples, model.cfg.sample_rate, seed=4)
    condition = separator.prepare(Query(example=example))
    with torch.no_grad():
        target = torch.from_numpy(condition.embedding).repeat(2, 1)
        expected = model.asm(torch.from_numpy(window), target)[0].numpy()
    got = separator.separate(window, condition)
    for channel in range(2):
        assert snr_db(expected[channel], got[channel]) >= 50


def test_fp16_variant_separates_close_to_fp32(model, bundle_dir, separator):
    half = OnnxSeparator(bundle_dir, device="cpu", threads=2, precision="fp16")
    assert half.precision == "fp16"
    window = stereo_window(model)
    full = separator.separate(window, separator.prepare(Query(text="a piano")))
    got = half.separate(window, half.prepare(Query(text="a piano")))
    assert snr_db(full, got) >= export_module.FP16_MIN_SNR_DB


def test_failed_parity_writes_nothing_and_keeps_the_old_bundle(model, bundle_dir, monkeypatch):
    monkeypatch.setattr(export_module, "PARITY_MIN_SNR_DB", 1000.0)
    before = {p.name: sha256_file(p) for p in bundle_dir.iterdir()}
    with pytest.raises(ParityError, match="parity check failed for the fp32 text_encoder graph"):
        export_bundle(model, bundle_dir, overwrite=True, log=lambda line: None)
    assert {p.name: sha256_file(p) for p in bundle_dir.iterdir()} == before
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["bundle"]  # no temporary folder left


def test_a_finished_bundle_replaces_the_old_one_as_a_whole(tmp_path):
    old, new = tmp_path / "bundle", tmp_path / ".staging"
    for folder, files in ((old, ("manifest.json", "stale.onnx")), (new, ("manifest.json", "asm.onnx"))):
        folder.mkdir()
        for name in files:
            (folder / name).write_text(f"{folder.name}/{name}")
    export_module._move_into_place(new, old)
    assert sorted(p.name for p in old.iterdir()) == ["asm.onnx", "manifest.json"]
    assert (old / "manifest.json").read_text() == ".staging/manifest.json"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_refuses_to_overwrite(model, bundle_dir, tmp_path):
    with pytest.raises(FileExistsError, match="overwrite"):
        export_bundle(model, bundle_dir, log=lambda line: None)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("not a bundle")
    with pytest.raises(FileExistsError, match="not a model bundle"):
        export_bundle(model, other, overwrite=True, log=lambda line: None)
    assert (other / "keep.txt").read_text() == "not a bundle"


@pytest.fixture(scope="module")
def one_stage_dir(tmp_path_factory):
    torch.manual_seed(1)
    model = HybridSep(get_config("small", window_seconds=WINDOW_SECONDS, one_stage=True)).eval()
    folder = tmp_path_factory.mktemp("one_stage") / "model"
    model.save_pretrained(folder)
    return model, folder


def test_one_stage_model_exports_with_the_cli_and_separates(one_stage_dir, tmp_path, capsys):
    import soundfile as sf

    model, model_dir = one_stage_dir
    clip = tmp_path / "clip.wav"
    sf.write(clip, synthetic_audio(3 * 22050, 22050, seed=5), 22050)  # any rate: converted for the check
    out = tmp_path / "bundle"
    assert hybridsep(["export", str(model_dir), "-o", str(out), "--audio", str(clip), "--threads", "2"]) == 0
    assert "asm            fp32  real" in capsys.readouterr().out
    assert not (out / "aet.onnx").exists()
    bundle = Bundle.load(out)
    assert bundle.one_stage and set(bundle.graphs) == {"text_encoder", "asm", "audio_encoder"}

    separator = OnnxSeparator(bundle, device="cpu", threads=2)
    window = stereo_window(model)
    with torch.no_grad():
        expected = model(torch.from_numpy(window), model.clap.embed_text(["a violin"]).repeat(2, 1)).numpy()
    got = separator.separate(window, separator.prepare(Query(text="a violin")))
    assert snr_db(expected, got) >= 50

    # An existing bundle is only replaced with --overwrite.
    assert hybridsep(["export", str(model_dir), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_export_cli_reports_a_missing_model_folder(tmp_path, capsys):
    assert hybridsep(["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "b")]) == 2
    assert "not a Hybrid-Sep model folder" in capsys.readouterr().err

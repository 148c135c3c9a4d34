"""BEATs encoder: official checkpoint layout, save/load, frame features and ONNX export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.models.beats import (
    BEATs,
    BEATsConfig,
    WeightNormConv1d,
    relative_position_bucket_table,
)

SAMPLE_RATE = 16000

# A tiny config with the switches of the official iter3 checkpoints (deep norm, gated relative position
# bias) and embed_dim != encoder_embed_dim so that post_extract_proj exists.
TINY = dict(
    input_patch_size=16,
    embed_dim=32,
    encoder_layers=2,
    encoder_embed_dim=64,
    encoder_ffn_embed_dim=128,
    encoder_attention_heads=4,
    layer_wise_gradient_decay_ratio=0.6,
    deep_norm=True,
    dropout=0.0,
    attention_dropout=0.0,
    encoder_layerdrop=0.05,
    conv_pos=16,
    conv_pos_groups=4,
    relative_position_embedding=True,
    num_buckets=320,
    max_distance=800,
    gru_rel_pos=True,
)


def tiny_model(seed: int = 0, **overrides) -> BEATs:
    """Tiny BEATs in eval mode with every parameter perturbed, so zero biases and unit gains hide nothing."""
    torch.manual_seed(seed)
    model = BEATs(BEATsConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def official_tiny_layout() -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the official state dict for TINY, written out by hand."""
    layout = {
        "patch_embedding.weight": (32, 1, 16, 16),
        "layer_norm.weight": (32,),
        "layer_norm.bias": (32,),
        "post_extract_proj.weight": (64, 32),
        "post_extract_proj.bias": (64,),
        "encoder.pos_conv.0.bias": (64,),
        "encoder.pos_conv.0.weight_g": (1, 1, 16),
        "encoder.pos_conv.0.weight_v": (64, 16, 16),
        "encoder.layer_norm.weight": (64,),
        "encoder.layer_norm.bias": (64,),
    }
    for n in range(2):
        p = f"encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            layout[p + f"self_attn.{proj}.weight"] = (64, 64)
            layout[p + f"self_attn.{proj}.bias"] = (64,)
        layout[p + "self_attn.relative_attention_bias.weight"] = (320, 4)
        layout[p + "self_attn.grep_linear.weight"] = (8, 16)
        layout[p + "self_attn.grep_linear.bias"] = (8,)
        layout[p + "self_attn.grep_a"] = (1, 4, 1, 1)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            layout[p + f"{norm}.weight"] = (64,)
            layout[p + f"{norm}.bias"] = (64,)
        layout[p + "fc1.weight"] = (128, 64)
        layout[p + "fc1.bias"] = (128,)
        layout[p + "fc2.weight"] = (64, 128)
        layout[p + "fc2.bias"] = (64,)
    return layout


def waves(batch: int, seconds: float, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(seconds * SAMPLE_RATE), generator=generator)


def test_state_dict_has_official_key_names_and_shapes():
    state = tiny_model().state_dict()
    layout = official_tiny_layout()
    assert sorted(state) == sorted(layout)
    for name, shape in layout.items():
        assert tuple(state[name].shape) == shape, name


def test_relative_attention_bias_is_shared_by_all_layers():
    model = tiny_model()
    first, second = (layer.self_attn.relative_attention_bias for layer in model.encoder.layers)
    assert first is second


def test_save_then_load_gives_identical_outputs(tmp_path):
    model = tiny_model()
    path = tmp_path / "beats.pt"
    model.save_checkpoint(path)
    assert [p.name for p in tmp_path.iterdir()] == ["beats.pt"]  # no temporary file left behind

    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"cfg", "model"}
    assert saved["cfg"] == model.cfg.to_dict()
    assert sorted(saved["model"]) == sorted(official_tiny_layout())

    loaded = BEATs.from_checkpoint(path).eval()
    wave = waves(2, 2.0)
    with torch.no_grad():
        assert torch.equal(model.extract_features(wave), loaded.extract_features(wave))


def test_hand_built_official_checkpoint_loads(tmp_path):
    official_cfg = {**BEATsConfig().to_dict(), **TINY, "some_future_option": 3}  # unknown keys are ignored
    generator = torch.Generator().manual_seed(5)
    state = {name: 0.1 * torch.randn(shape, generator=generator) for name, shape in official_tiny_layout().items()}
    shared = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    state["encoder.layers.1.self_attn.relative_attention_bias.weight"] = shared.clone()
    path = tmp_path / "BEATs_tiny.pt"
    torch.save({"cfg": official_cfg, "model": state}, path)

    model = BEATs.from_checkpoint(path)
    assert model.cfg == BEATsConfig(**{**BEATsConfig().to_dict(), **TINY})
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_pos_conv_weight_is_weight_normalised_over_the_kernel_axis():
    conv = WeightNormConv1d(channels=8, kernel_size=4, groups=2)
    with torch.no_grad():
        conv.weight_g.uniform_(0.5, 2.0)
        conv.weight_v.normal_()
    weight = conv.weight()
    norms = weight.norm(dim=(0, 1))
    assert torch.allclose(norms, conv.weight_g.flatten(), atol=1e-6)
    x = torch.randn(2, 8, 20)
    before = conv(x)
    with torch.no_grad():
        conv.weight_v.mul_(3.0)  # weight norm: the scale of v does not matter
    assert torch.allclose(conv(x), before, atol=1e-5)


def test_missing_key_gives_clear_error(tmp_path):
    path = tmp_path / "beats.pt"
    tiny_model().save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["model"]["encoder.pos_conv.0.weight_g"]
    checkpoint["model"]["encoder.layers.0.self_attn.extra"] = torch.zeros(1)
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"missing \['encoder.pos_conv.0.weight_g'\].*unexpected"):
        BEATs.from_checkpoint(path)


def test_shape_mismatch_gives_clear_error(tmp_path):
    path = tmp_path / "beats.pt"
    tiny_model().save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"]["encoder.layers.1.fc1.weight"] = torch.zeros(3, 3)
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="does not match its cfg"):
        BEATs.from_checkpoint(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_a_checkpoint"])
def test_corrupt_file_gives_clear_error(tmp_path, damage):
    path = tmp_path / "beats.pt"
    if damage == "garbage":
        path.write_bytes(b"this is not a torch file" * 10)
    elif damage == "truncated":
        tiny_model().save_checkpoint(path)
        path.write_bytes(path.read_bytes()[:2000])
    else:
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="checkpoint"):
        BEATs.from_checkpoint(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        BEATs.from_checkpoint(tmp_path / "absent.pt")


def test_relative_position_buckets_follow_the_official_formula():
    num_buckets, max_distance = 320, 800
    table = relative_position_bucket_table(num_buckets, max_distance)
    half, max_exact = num_buckets // 2, num_buckets // 4
    for distance in [0, 1, 79, 80, 81, 100, 400, 799, 800]:
        if distance < max_exact:
            expected = distance
        else:
            log_part = math.log(distance / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
            expected = min(max_exact + int(log_part), half - 1)
        assert table[distance].item() == expected, distance
    assert table[-1].item() == half - 1
    assert bool((table[1:] >= table[:-1]).all())

    attention = tiny_model(num_buckets=16, max_distance=20).encoder.layers[0].self_attn
    length = 50  # longer than max_distance: the buckets saturate
    with torch.no_grad():
        attention.relative_attention_bias.weight.copy_(torch.arange(16.0)[:, None].expand(16, 4))
    bucket = attention.position_bias(length)[0].long()  # (L, L) bucket ids of head 0
    small = relative_position_bucket_table(16, 20)
    for query, key in [(0, 0), (3, 0), (0, 3), (0, 49), (49, 0), (10, 30)]:
        d = key - query
        expected = small[min(abs(d), 20)].item() + (8 if d > 0 else 0)
        assert bucket[query, key].item() == expected, (query, key)


def test_gated_attention_and_deep_norm_layer_follow_the_published_equations():
    """One layer against the equations written out per head (BEATs paper / official backbone)."""
    model = tiny_model()
    layer = model.encoder.layers[0]
    attention = layer.self_attn
    heads, head_dim, length = 4, 16, 12
    x = torch.randn(2, length, 64)
    bias = torch.randn(heads, length, length)
    with torch.no_grad():
        got = layer(x, bias)

        def split(t):  # (B, L, 64) -> (B, heads, L, head_dim)
            return t.view(2, length, heads, head_dim).permute(0, 2, 1, 3)

        q, k, v = split(attention.q_proj(x)), split(attention.k_proj(x)), split(attention.v_proj(x))
        gate_logits = torch.einsum("bhld,gd->bhlg", q, attention.grep_linear.weight) + attention.grep_linear.bias
        gate_a = torch.sigmoid(gate_logits[..., :4].sum(-1, keepdim=True))
        gate_b = torch.sigmoid(gate_logits[..., 4:].sum(-1, keepdim=True))
        gate = gate_a * (gate_b * attention.grep_a - 1.0) + 2.0  # (B, heads, L, 1)
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(head_dim) + gate * bias
        mixed = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v).permute(0, 2, 1, 3).reshape(2, length, 64)
        alpha = (2 * 2) ** 0.25  # deep norm residual scale (2 N)^(1/4) with N = 2 layers
        h = layer.self_attn_layer_norm(alpha * x + attention.out_proj(mixed))
        ffn = layer.fc2(torch.nn.functional.gelu(layer.fc1(h)))
        expected = layer.final_layer_norm(alpha * h + ffn)
    assert torch.allclose(got, expected, atol=1e-5)


def test_layer_wise_gradient_decay_scales_the_input_gradient():
    grads = []
    for ratio in (1.0, 0.6):
        encoder = tiny_model(layer_wise_gradient_decay_ratio=ratio, encoder_layerdrop=0.0).encoder.train()
        x = torch.randn(1, 24, 64, requires_grad=True)
        encoder(x).pow(2).sum().backward()
        grads.append(x.grad)
    assert torch.allclose(grads[1], 0.6**2 * grads[0], atol=1e-5)  # one factor per layer


def test_batch_items_are_independent():
    model = tiny_model()
    wave = waves(3, 1.5)
    with torch.no_grad():
        together = model.extract_features(wave)
        alone = torch.cat([model.extract_features(wave[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_time_patch_features_and_their_centres_for_10s():
    model = tiny_model()
    wave = waves(2, 10.0)
    with torch.no_grad():
        patches = model.extract_features(wave)
        frames = model.time_patch_features(wave)
    # 10 s -> 1 + (160000 - 400) // 160 = 998 fbank frames -> 62 time patches x 8 mel patches.
    assert patches.shape == (2, 62 * 8, 64)
    assert torch.allclose(frames, patches.view(2, 62, 8, 64).mean(dim=2), atol=1e-6)
    # patch 0 holds fbank frames 0..15, centred at 7.5 * 10 ms + 12.5 ms; one patch every 16 frames
    first, spacing = model.patch_centre_seconds()
    assert first == pytest.approx(0.0875) and spacing == pytest.approx(0.16)


def test_default_config_fails_clearly_and_iter3_is_90m_parameters():
    with pytest.raises(ValueError, match="input_patch_size"):
        BEATs(BEATsConfig())  # the official default input_patch_size is -1
    model = BEATs(BEATsConfig.iter3())
    count = sum(p.numel() for p in model.parameters())
    print(f"BEATs iter3 parameters: {count}")
    assert 89e6 < count < 91e6  # paper section 2.2: "a 90M-parameter BEATs encoder"
    tagger = BEATs(BEATsConfig.iter3(finetuned_model=True))
    assert sum(p.numel() for p in tagger.parameters()) - count == 768 * 527 + 527


def test_config_dict_round_trip():
    cfg = BEATsConfig.iter3()
    assert BEATsConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg
    assert BEATsConfig.from_dict({"encoder_layers": 3}).encoder_embed_dim == 768


def test_tag_probabilities_need_a_tagging_head():
    wave = waves(1, 1.0)
    with pytest.raises(RuntimeError, match="tagging head"):
        tiny_model().tag_probabilities(wave)
    with torch.no_grad():
        probs = tiny_model(finetuned_model=True, predictor_class=5).eval().tag_probabilities(wave)
    assert probs.shape == (1, 5)
    assert bool(((probs > 0) & (probs < 1)).all())


class FrameFeatures(torch.nn.Module):
    def __init__(self, beats: BEATs):
        super().__init__()
        self.beats = beats

    def forward(self, wave16k: torch.Tensor) -> torch.Tensor:
        return self.beats.time_patch_features(wave16k)


def test_onnx_export_of_time_patch_features_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    module = FrameFeatures(tiny_model()).eval()
    path = tmp_path / "beats_frames.onnx"
    with torch.no_grad():
        torch.onnx.export(
            module,
            (waves(1, 2.0),),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["wave16k"],
            output_names=["frames"],
            dynamic_axes={"wave16k": {0: "batch", 1: "samples"}, "frames": {0: "batch", 1: "patches"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seconds in [(1, 2.0), (2, 3.3)]:  # the traced length and another one
        wave = waves(batch, seconds, seed=7)
        with torch.no_grad():
            expected = module(wave).numpy()
        (got,) = session.run(None, {"wave16k": wave.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

"""Shapes, gradients, freezing and save/load of the Hybrid-Sep modules (paper Table 1 presets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from training.config import HybridSepConfig, get_config
from training.models.asm import bins_per_layer
from training.models.discriminator import MultiScaleSTFTDiscriminator
from training.models.hybridsep import HybridSep

SR = 44100


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return HybridSep(get_config("small"))


def two_windows(cfg: HybridSepConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return 0.1 * torch.randn(2, cfg.window_samples, generator=g)


def test_every_input_is_brought_to_the_training_level(small_model):
    """The model scales each mixture to the training mixtures' peak and its output back: a quiet input gives the
    same embedding and the same separation, scaled, as a loud one; a silent one gives silence."""
    model = small_model.eval()
    mixture = two_windows(model.cfg)
    text_emb = model.clap.embed_text(["a piano", "a man speaking"])
    with torch.no_grad():
        emb = model.target_embedding(mixture, text_emb)
        assert torch.allclose(model.target_embedding(0.001 * mixture, text_emb), emb, atol=1e-4)
        loud = model(mixture, text_emb)
        quiet = model(0.001 * mixture, text_emb) / 0.001
        assert (quiet - loud).abs().max() < 1e-3 * loud.abs().max()
        silent = model(torch.zeros_like(mixture), text_emb)
    assert torch.isfinite(silent).all() and silent.abs().max() < 1e-6


def test_paper_preset_is_table_1():
    cfg = get_config("paper")
    assert (cfg.fe.layers, cfg.fe.heads, cfg.fe.dim) == (3, 8, 512)
    assert (cfg.aet.layers, cfg.aet.heads, cfg.aet.dim) == (32, 8, 512)
    assert cfg.asm.stride == 2
    assert cfg.asm.channels == (48, 96, 192, 384, 192, 96, 48, 8)
    assert [h for i, h in enumerate(cfg.asm.lstm_hidden) if i != 6] == [12, 24, 48, 96, 48, 24, 2]
    assert cfg.asm.fa_layers == 4 and cfg.asm.fa_kernel == 9
    assert (cfg.asm.teaca_dim, cfg.asm.teaca_heads) == (64, 8)
    assert cfg.asm.subbands == 4
    assert bins_per_layer(cfg.asm) == [256, 128, 64, 32, 16, 32, 64, 128, 256]


def test_config_round_trip(tmp_path):
    cfg = get_config("small", sample_rate=16000, one_stage=True)
    cfg.save(tmp_path / "c.json")
    assert HybridSepConfig.load(tmp_path / "c.json") == cfg


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="2 x subbands"):
        get_config("small").asm.__class__(channels=(48, 96, 192, 384, 192, 96, 48, 6))
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("huge")


def test_small_forward_backward_two_10s_windows(small_model):
    """Every module of `small` on a batch of two 10 s 44.1 kHz windows: shapes, and gradients reach every
    trainable parameter and no frozen one."""
    model = small_model.train()
    cfg = model.cfg
    mixture, target = two_windows(cfg), two_windows(cfg).flip(-1)
    text_emb = model.clap.embed_text(["a piano", "a man speaking"])
    assert text_emb.shape == (2, cfg.embedding_dim)

    frames = model.fe(mixture)
    assert frames.shape == (2, cfg.window_samples // cfg.fe.hop_length + 1, cfg.fe.dim)
    emb = model.target_embedding(mixture, text_emb)
    assert emb.shape == (2, cfg.embedding_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)

    separated, condition = model.asm(mixture, emb)
    assert separated.shape == mixture.shape
    frames_asm = cfg.window_samples // cfg.asm.subbands // cfg.asm.hop_length + 1
    assert condition.shape == (2, frames_asm, 4 * cfg.asm.cond_dim)

    sigma = torch.tensor([0.05, 2.0])
    denoised = model.cd(target + sigma[:, None] * torch.randn_like(target), sigma, condition)
    assert denoised.shape == target.shape

    disc = MultiScaleSTFTDiscriminator(cfg.discriminator)
    logits, features = disc(separated)
    assert len(logits) == len(cfg.discriminator.n_ffts) and all(l.shape[1] == 1 for l in logits)

    loss = (separated - target).abs().mean() + (denoised - target).abs().mean()
    loss = loss + sum(((l - 1) ** 2).mean() for l in logits)
    loss.backward()

    for name, p in list(model.named_parameters()) + [("disc." + n, p) for n, p in disc.named_parameters()]:
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        else:
            assert p.grad is None, f"frozen parameter {name} got a gradient"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("clap.") for n in frozen) and any(n.startswith("asm.ssl.") for n in frozen)
    assert not any(n.startswith(("asm.stack", "fe.", "aet.", "cd.")) for n in frozen)
    model.zero_grad(set_to_none=True)


def test_frozen_encoders_stay_in_eval_mode(small_model):
    small_model.train()
    assert small_model.asm.stack.training
    assert not small_model.asm.ssl.training and not small_model.clap.training


def test_ablations_build_and_run():
    mixture = 0.1 * torch.randn(1, 2 * SR // 4 * 4)
    for flag in ("one_stage", "no_ssl", "no_cd"):
        cfg = get_config("small", **{flag: True})
        model = HybridSep(cfg).eval()
        with torch.no_grad():
            out = model.separate(mixture, ["a violin"])
        assert out.shape == mixture.shape and torch.isfinite(out).all()
    assert HybridSep(get_config("small", one_stage=True)).aet is None
    assert HybridSep(get_config("small", no_ssl=True)).asm.ssl is None
    assert HybridSep(get_config("small", no_cd=True)).cd is None


def test_16khz_config_runs():
    cfg = get_config("small", sample_rate=16000)
    model = HybridSep(cfg).eval()
    mixture = 0.1 * torch.randn(1, cfg.window_samples)
    with torch.no_grad():
        assert model.separate(mixture, ["speech"]).shape == mixture.shape


def test_paper_forward_on_a_short_window():
    """The full Table 1 model (90M BEATs, 32-layer AET) on a 1 s window, with a 512-d audio-text encoder."""
    from training.models.clap import CompactClapConfig, CompactClapEncoder

    cfg = get_config("paper")
    clap = CompactClapEncoder(CompactClapConfig(embedding_dim=cfg.embedding_dim, input_rate=cfg.sample_rate))
    model = HybridSep(cfg, clap=clap).eval()
    mixture = 0.1 * torch.randn(1, SR)
    with torch.no_grad():
        out = model.separate(mixture, ["fireworks"])
    assert out.shape == mixture.shape and torch.isfinite(out).all()
    asm_params = sum(p.numel() for n, p in model.asm.named_parameters() if not n.startswith("ssl."))
    assert 20e6 <= asm_params <= 30e6, asm_params  # paper 3.1: "25M in ASM", within 20 %


def test_save_and_load_pretrained(tmp_path, small_model):
    model = small_model.eval()
    model.save_pretrained(tmp_path / "m")
    loaded = HybridSep.from_pretrained(tmp_path / "m").eval()
    mixture = 0.1 * torch.randn(1, SR)
    with torch.no_grad():
        assert torch.equal(model.separate(mixture, ["a dog barking"]), loaded.separate(mixture, ["a dog barking"]))


def test_from_pretrained_errors(tmp_path, small_model):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        HybridSep.from_pretrained(tmp_path)
    small_model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        HybridSep.from_pretrained(tmp_path / "m")


def test_weights_of_an_older_architecture_start_the_new_parts_afresh(tmp_path, small_model):
    """Weights saved before the ASM had its TEACAs: refused by default; with new_parts=True the saved weights
    load and the TEACAs keep their initialisation. A parameter whose shape changed is refused either way."""
    small_model.save_pretrained(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    older = {k: v for k, v in state.items() if not k.startswith("asm.stack.teaca.")}
    torch.save(older, tmp_path / "m" / "model.pt")
    with pytest.raises(ValueError, match="missing .*new_parts=True starts the missing ones afresh"):
        HybridSep.from_pretrained(tmp_path / "m")

    torch.manual_seed(1)
    model = HybridSep.from_pretrained(tmp_path / "m", new_parts=True)
    assert model.new_parameters == [k for k in state if k.startswith("asm.stack.teaca.")]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in older.items())
    assert not torch.equal(loaded["asm.stack.teaca.0.query.weight"], state["asm.stack.teaca.0.query.weight"])

    older["asm.stack.teaca.0.query.weight"] = torch.zeros(3, 3)
    torch.save(older, tmp_path / "m" / "model.pt")
    with pytest.raises(ValueError, match="does not fit this model"):
        HybridSep.from_pretrained(tmp_path / "m", new_parts=True)


def test_pretrained_beats_checkpoint_is_loaded_into_the_model(tmp_path):
    """An official-format BEATs checkpoint named by `beats_checkpoint` supplies the ASM's frozen encoder; the
    saved model keeps its weights and no longer needs the file."""
    from training.models.beats import BEATs

    cfg = get_config("small")
    beats = BEATs(cfg.beats)
    with torch.no_grad():
        for p in beats.parameters():
            p.add_(0.01)
    beats.save_checkpoint(tmp_path / "beats.pt")
    model = HybridSep(get_config("small", ssl="beats", beats_checkpoint=str(tmp_path / "beats.pt")))
    for name, value in beats.state_dict().items():
        assert torch.equal(model.asm.ssl.beats.state_dict()[name], value), name
    assert model.cfg.beats_checkpoint is None
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "beats.pt").unlink()
    loaded = HybridSep.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.asm.ssl.beats.patch_embedding.weight, beats.patch_embedding.weight)


def test_nested_overrides():
    cfg = get_config("paper", clap={"path": "/models/laion-clap"}, sample_rate=16000)
    assert cfg.clap.backend == "hf" and cfg.clap.path == "/models/laion-clap" and cfg.sample_rate == 16000
    with pytest.raises(ValueError, match="unknown model settings"):
        get_config("small", colour="red")


def test_ablation_starts_from_a_trained_model(tmp_path, small_model):
    """one_stage / no_cd start from a saved full model: the kept parts load its weights, the dropped parts go,
    the discriminator settings may change, and any other setting is refused."""
    small_model.save_pretrained(tmp_path / "m")
    one_stage = HybridSep.from_pretrained(tmp_path / "m", overrides={"one_stage": True, "discriminator": {"filters": 4}})
    assert one_stage.aet is None and one_stage.fe is None and one_stage.cfg.discriminator.filters == 4
    for name, value in small_model.asm.state_dict().items():
        assert torch.equal(one_stage.asm.state_dict()[name], value), name
    no_cd = HybridSep.from_pretrained(tmp_path / "m", overrides={"no_cd": True})
    assert no_cd.cd is None and torch.equal(no_cd.aet.head.weight, small_model.aet.head.weight)
    for bad in ({"no_ssl": True}, {"one_stage": False, "sample_rate": 16000}, {"window_seconds": 2.0}):
        with pytest.raises(ValueError, match="cannot change"):
            HybridSep.from_pretrained(tmp_path / "m", overrides=bad)


def test_asm_follows_the_query():
    """Sixty steps teach a small ASM to pick either of two sources (a tone, a noise) by the embedding alone: on
    fresh mixtures the output for the right query must beat the output for the other query by a wide margin."""
    from training.metrics import sdr
    from training.models.asm import AudioSeparationModel

    torch.manual_seed(0)
    cfg = get_config("small", no_ssl=True)
    asm = AudioSeparationModel(cfg)
    g = torch.Generator().manual_seed(0)
    queries = nn.functional.normalize(torch.randn(2, cfg.embedding_dim, generator=g), dim=-1)
    n = 8192
    t = torch.arange(n) / SR

    def batch(size: int):
        freq = 150 + 250 * torch.rand(size, 1, generator=g)
        tone = 0.3 * torch.sin(2 * torch.pi * freq * t + 6.3 * torch.rand(size, 1, generator=g))
        noise = 0.1 * torch.randn(size, n, generator=g)
        which = torch.arange(size) % 2
        target = torch.where(which[:, None] == 0, tone, noise)
        return tone + noise, target, which

    optimizer = torch.optim.Adam(asm.parameters(), lr=3e-4)
    for _ in range(60):
        mixture, target, which = batch(8)
        loss = (asm(mixture, queries[which])[0] - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mixture, target, which = batch(8)
    with torch.no_grad():
        right, wrong = asm(mixture, queries[which])[0], asm(mixture, queries[1 - which])[0]
    margin = [sdr(r, a) - sdr(r, b) for r, a, b in zip(target.numpy(), right.numpy(), wrong.numpy())]
    # At this learning rate a query left at the unit embedding's scale (entries ~1/sqrt(E)) gives about 6 dB.
    assert np.mean(margin) > 8.0, margin

"""Adversarial consistent training's parts (paper 2.2, Algorithm 1): the conditional denoiser as a consistency
function, the discriminator losses of Xcodec / EnCodec, and the range of the ASM's mask."""

from __future__ import annotations

import pytest
import torch

from tests.train_utils import make_manifest
from training import stages
from training.config import get_config
from training.losses import feature_matching_loss, pseudo_huber
from training.models.asm import AudioSeparationModel
from training.models.denoiser import ConditionalDenoiser
from training.models.discriminator import MultiScaleSTFTDiscriminator
from training.schedules import SIGMA_MIN, sample_noise_levels
from training.trainer import DistributedEnv, TrainConfig

SR = 44100
N = 8192  # samples: a multiple of the small preset's PQMF x STFT hop (2048)


def tones(batch: int) -> torch.Tensor:
    """A fixed batch of targets: one tone per example at the training targets' level (RMS about sigma_data)."""
    t = torch.arange(N) / SR
    freqs = torch.tensor([220.0, 330.0, 495.0, 742.5])[:batch, None]
    return 0.16 * torch.sin(2 * torch.pi * freqs * t)


def condition_for(cd: ConditionalDenoiser, batch: int) -> torch.Tensor:
    """Fixed condition vectors, one per example (what the ASM would say about each target)."""
    frames = N // 4 // 512 + 1
    g = torch.Generator().manual_seed(3)
    return torch.randn(batch, frames, cd.condition_to_bins.proj.in_features, generator=g)


def consistency_loss(cd, target, condition, step: int, seed: int) -> torch.Tensor:
    """L_consist of Algorithm 1 as stage 2 computes it: adjacent Karras levels, one z per example, detached
    teacher, pseudo-Huber distance, weights 1 / (sigma_{i+1} - sigma_i)."""
    gens = [torch.Generator().manual_seed(seed * 100 + i) for i in range(len(target))]
    lo, hi, weight = sample_noise_levels(step, 1000, gens)
    z = torch.stack([torch.randn(target.shape[1:], generator=g) for g in gens])
    student = cd(target + hi[:, None] * z, hi, condition)
    teacher = cd(target + lo[:, None] * z, lo, condition).detach()
    return (weight * pseudo_huber(student, teacher)).mean()


def test_the_cd_is_the_identity_at_sigma_min():
    """The boundary condition of a consistency model: f(x, sigma_min) = x exactly, whatever the weights."""
    torch.manual_seed(0)
    cd = ConditionalDenoiser(get_config("small"))
    x = 0.1 * torch.randn(2, N)
    condition = condition_for(cd, 2)
    with torch.no_grad():
        assert torch.equal(cd(x, torch.full((2,), SIGMA_MIN), condition), x)
        assert not torch.equal(cd(x, torch.full((2,), 0.05), condition), x)


def test_the_consistency_loss_rewards_denoising_not_collapse():
    """On a fixed batch, a CD whose F outputs zeros (f = c_skip x: it only shrinks its input) scores a consistency
    loss well above that of a CD trained briefly on that loss. Without the boundary condition an output of zeros
    scored 0, the best possible, and training drove the CD there."""
    torch.manual_seed(0)
    cd = ConditionalDenoiser(get_config("small"))
    target = tones(4)
    condition = condition_for(cd, 4)

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(sum(consistency_loss(cd, target, condition, step=0, seed=1000 + s) for s in range(8)) / 8)

    network = cd.network
    cd.network = lambda x, sigma, c: torch.zeros_like(x)
    zero_f = held_out_loss()
    cd.network = network
    untrained = held_out_loss()
    optimizer = torch.optim.Adam(cd.parameters(), lr=2e-3)
    for step in range(80):
        loss = consistency_loss(cd, target, condition, step=0, seed=step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = held_out_loss()
    assert trained < 0.5 * zero_f, (trained, zero_f, untrained)
    assert trained < untrained, (trained, untrained)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("corpus"))


def test_feature_matching_trains_the_generator_and_not_the_discriminator(manifest, tmp_path, monkeypatch):
    """In the generator step (phase 2 of Algorithm 1) the relative feature-matching loss is part of the loss,
    sends gradient to the ASM and none to the discriminator, whose gradients stay those of its own step."""
    real = (0.1 * torch.randn(2, N)).requires_grad_()
    fake = (0.1 * torch.randn(2, N)).requires_grad_()
    disc = MultiScaleSTFTDiscriminator(get_config("small").discriminator)
    _, features = disc(torch.cat((real, fake)))
    loss = feature_matching_loss([[f[:2] for f in s] for s in features], [[f[2:] for f in s] for s in features])
    loss.backward()
    assert real.grad is None or not real.grad.any()  # the real maps are the reference
    assert fake.grad.abs().sum() > 0

    cfg = TrainConfig(stage="stage2", manifest=str(manifest), out=str(tmp_path), steps=2, batch_size=2,
                      eval_examples=2).with_overrides(["model.window_seconds=1.0", "workers=0", "log_every=1"])
    torch.manual_seed(0)
    stage = stages.build_stage(cfg, DistributedEnv())
    seen = {}

    def spy(real_features, fake_features):
        loss = feature_matching_loss(real_features, fake_features)
        seen["loss"] = float(loss.detach())
        disc = list(stage.discriminator.parameters())
        seen["disc_grads_from_feat"] = [g for g in torch.autograd.grad(loss, disc, retain_graph=True, allow_unused=True)
                                        if g is not None]
        asm = [p for p in stage.model.asm.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, asm, retain_graph=True, allow_unused=True)
        seen["asm_grad"] = float(sum(g.abs().sum() for g in grads if g is not None))
        return loss

    step_optimizer = stage.step_optimizer

    def record(optimizer, loss):
        norm = step_optimizer(optimizer, loss)
        if optimizer is stage.opt_d:
            seen["disc_grads"] = [p.grad.clone() for p in stage.discriminator.parameters()]
        return norm

    monkeypatch.setattr(stages, "feature_matching_loss", spy)
    monkeypatch.setattr(stage, "step_optimizer", record)
    batch = stage.collate([stage.train_set[i] for i in range(2)])
    scalars = stage.train_step(batch, 0)
    assert seen["loss"] > 0 and float(scalars["feat"]) == pytest.approx(seen["loss"])
    assert seen["asm_grad"] > 0
    assert seen["disc_grads_from_feat"] == []
    for before, p in zip(seen["disc_grads"], stage.discriminator.parameters()):
        assert torch.equal(before, p.grad)


def test_the_mask_is_not_bounded_by_a_gelu():
    """The mask head can ask for any value: set to output -1 it gives -1 (a final GELU would give -0.16 at
    best, every mask component >= -0.17, a cap on how much of a bin the mask can cancel)."""
    asm = AudioSeparationModel(get_config("small", no_ssl=True))
    head = asm.stack.decoder[-1]
    with torch.no_grad():
        head.conv.linear.weight.zero_()
        head.conv.linear.bias.fill_(-1.0)
        x = torch.randn(1, 5, asm.cfg.asm.n_fft // 2, 2 * asm.cfg.asm.subbands)
        emb = torch.nn.functional.normalize(torch.randn(1, asm.cfg.embedding_dim), dim=-1)
        mask, _ = asm.stack(x, emb)
    assert mask.min() < -0.2
    assert torch.allclose(mask, torch.full_like(mask, -1.0))

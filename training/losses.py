"""Loss functions of the three training stages."""

from __future__ import annotations

import torch
from torch import nn


def discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN discriminator loss, Algorithm 1: 1/2 (E[(d_real - 1)^2] + E[d_fake^2]), averaged over the K scales
    as EnCodec [16] (section 3.4) averages its discriminators' losses (1/K sum_k)."""
    terms = [0.5 * (((r - 1) ** 2).mean() + (f**2).mean()) for r, f in zip(real_logits, fake_logits)]
    return sum(terms) / len(terms)


def adversarial_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator loss, Algorithm 1: E[(d_fake - 1)^2], averaged over the K scales (EnCodec's 1/K)."""
    return sum(((f - 1) ** 2).mean() for f in fake_logits) / len(fake_logits)


def feature_matching_loss(real_features: list[list[torch.Tensor]],
                          fake_features: list[list[torch.Tensor]]) -> torch.Tensor:
    """Relative feature matching of EnCodec [16] (section 3.4, the training objective), the generator's second
    discriminative loss, for each example x and its estimate x_hat:
    1/(K L) sum_k sum_l ||D_k^l(x) - D_k^l(x_hat)||_1 / mean(||D_k^l(x)||_1) over the K scales and the L feature
    maps of each, then averaged over the batch (per example, so that a distributed step equals a single-process
    one). The real maps are a fixed reference (detached): only the generated side carries gradient."""
    terms = []
    for reals, fakes in zip(real_features, fake_features):
        for real, fake in zip(reals, fakes):
            real = real.detach()
            terms.append((fake - real).abs().flatten(1).mean(1) / real.abs().flatten(1).mean(1).clamp_min(1e-8))
    return torch.stack(terms).mean()


def pseudo_huber(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-item pseudo-Huber distance of improved consistency training [17] (section 3.3),
    sqrt(||x - y||^2 + c^2) - c with c = 0.00054 sqrt(d), divided by sqrt(d) so that its scale is that of an RMS
    error and does not grow with the window length. x, y: (B, ...) -> (B,)."""
    d = x[0].numel()
    c = 0.00054 * d**0.5
    return (torch.sqrt((x - y).flatten(1).pow(2).sum(dim=1) + c**2) - c) / d**0.5


def symmetric_info_nce(audio_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP / CLAP contrastive loss: cross-entropy over audio->text and text->audio similarities of a batch
    of unit embeddings (B, D), matching pairs on the diagonal."""
    logits = logit_scale.exp() * audio_emb @ text_emb.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.t(), labels))

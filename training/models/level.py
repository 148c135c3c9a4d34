"""Input levels. The separator knows only the training mixtures' peak (MIXTURE_PEAK), and its conditions only
audio embeddings of clips at one level (`HybridSep.example_peak`), so their inputs are scaled to that level
first (docs/eval: "Input level")."""

from __future__ import annotations

import torch

from training.data.manifest import SILENCE_PEAK


def peak_gain(wave: torch.Tensor, peak: float) -> torch.Tensor:
    """(B, N) -> (B, 1): the gain that brings each wave's peak to ``peak``. A silent wave (peak under -80 dBFS)
    gets the gain of that floor."""
    return peak / wave.abs().amax(dim=-1, keepdim=True).clamp_min(SILENCE_PEAK)

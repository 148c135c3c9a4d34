"""Shared fixtures: small random-weight model bundles, exported once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory):
    """small_bundle(window_seconds=1.0, sample_rate=44100) -> the folder of an exported `small` bundle with
    random weights (seed 0). Each distinct setting is exported once per session."""
    import torch

    from export.bundle import export_bundle
    from training.config import get_config
    from training.models.hybridsep import HybridSep

    cache = {}

    def make(window_seconds: float = 1.0, sample_rate: int = 44100):
        key = (window_seconds, sample_rate)
        if key not in cache:
            torch.manual_seed(0)
            model = HybridSep(get_config("small", window_seconds=window_seconds, sample_rate=sample_rate)).eval()
            folder = tmp_path_factory.mktemp("bundle") / "bundle"
            cache[key] = export_bundle(model, folder, threads=2, log=lambda line: None)
        return cache[key]

    return make

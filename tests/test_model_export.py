"""The `small` ASM and FE+AET export to ONNX and ONNX Runtime matches torch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.graphs import AETGraph, ASMGraph, export_graph
from training.config import get_config
from training.models.hybridsep import HybridSep


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - estimate) ** 2)))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HybridSep(get_config("small")).eval()


def session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_asm_exports_and_matches_torch(model, tmp_path):
    cfg = model.cfg
    g = torch.Generator().manual_seed(3)
    t = torch.arange(cfg.window_samples) / cfg.sample_rate
    mixture = torch.stack([0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(t.shape, generator=g),
                           0.1 * torch.randn(t.shape, generator=g)])
    emb = torch.nn.functional.normalize(torch.randn(2, cfg.embedding_dim, generator=g), dim=-1)
    graph = ASMGraph(model)
    export_graph(graph, (mixture[:1], emb[:1]), ["mixture", "target_embedding"], ["separated"], tmp_path / "asm.onnx")
    with torch.no_grad():
        expected = graph(mixture, emb).numpy()
    got = session(tmp_path / "asm.onnx").run(None, {"mixture": mixture.numpy(), "target_embedding": emb.numpy()})[0]
    assert got.shape == expected.shape
    for i in range(2):
        assert snr_db(expected[i], got[i]) >= 60


def test_fe_aet_exports_and_matches_torch(model, tmp_path):
    cfg = model.cfg
    g = torch.Generator().manual_seed(4)
    mixture = 0.1 * torch.randn(2, cfg.window_samples, generator=g)
    text_emb = model.clap.embed_text(["a trumpet", "rain"])
    graph = AETGraph(model)
    export_graph(graph, (mixture[:1], text_emb[:1]), ["mixture", "text_embedding"], ["target_embedding"],
                 tmp_path / "aet.onnx")
    with torch.no_grad():
        expected = graph(mixture, text_emb).numpy()
    got = session(tmp_path / "aet.onnx").run(None, {"mixture": mixture.numpy(),
                                                    "text_embedding": text_emb.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4

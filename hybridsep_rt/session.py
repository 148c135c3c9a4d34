"""ONNX Runtime sessions: the CUDA execution provider where asked for and present, the CPU one otherwise,
and a runner that feeds a session through IO binding on CUDA.

Int8 graphs of a bundle (``*.int8.onnx``, the text encoder by default) always run on the CPU: ONNX Runtime
runs their int8 weights directly there (MatMulNBits), and the text encoder runs once per query.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from hybridsep_rt.bundle import file_precision

__all__ = ["DEVICES", "CPU_PROVIDER", "CUDA_PROVIDER", "cuda_available", "create_session", "GraphRunner"]

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PRECISIONS = ("int8",)  # graph files of these precisions run on the CPU whatever the device


def cuda_available() -> bool:
    """True when this onnxruntime build offers the CUDA execution provider (onnxruntime-gpu)."""
    return CUDA_PROVIDER in ort.get_available_providers()


def _providers(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device == "cuda":
        _warn(f"CUDA was asked for but this onnxruntime has no CUDA execution provider (it has "
              f"{', '.join(available)}; install onnxruntime-gpu): running on the CPU")
    return [CPU_PROVIDER]


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def create_session(path: str | Path, device: str = "auto", threads: int | None = None
                   ) -> tuple[ort.InferenceSession, str]:
    """An inference session for the ONNX file at ``path`` and the execution provider it got.

    Args:
        device: "cuda" (warns when CUDA cannot be had and falls back to the CPU), "cpu", or "auto"
            (CUDA when onnxruntime offers it, else the CPU). An int8 graph runs on the CPU either way.
        threads: intra-op threads of the CPU provider (None: onnxruntime's default, one per core).

    Returns:
        (session, provider), provider being e.g. "CUDAExecutionProvider" or "CPUExecutionProvider".
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if device != "cpu" and file_precision(path) in CPU_PRECISIONS:
        log.info("%s has int8 weights: it runs on the CPU", Path(path).name)
        device = "cpu"
    providers = _providers(device)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the warning below says what matters
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=providers)
    provider = session.get_providers()[0]
    if CUDA_PROVIDER in providers and provider != CUDA_PROVIDER:
        # onnxruntime-gpu falls back silently when the CUDA libraries or the GPU are missing.
        _warn(f"CUDA was {'asked for' if device == 'cuda' else 'offered'} but the session for {Path(path).name} "
              f"runs on {provider} (are the CUDA and cuDNN libraries onnxruntime-gpu needs installed?)")
    log.info("%s runs on %s", Path(path).name, provider)
    return session, provider


class GraphRunner:
    """Runs one session on numpy inputs and returns numpy outputs.

    On CUDA the inputs are bound from host memory and the outputs are bound on the device (IO binding:
    one copy in, one copy out, no per-call allocation of the outputs by the Python API); on the CPU a plain
    ``session.run``.
    """

    def __init__(self, session: ort.InferenceSession, provider: str):
        self.session = session
        self.provider = provider
        self.input_names = [a.name for a in session.get_inputs()]
        self.output_names = [a.name for a in session.get_outputs()]

    @classmethod
    def open(cls, path: str | Path, device: str = "auto", threads: int | None = None) -> "GraphRunner":
        return cls(*create_session(path, device, threads))

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.provider != CUDA_PROVIDER:
            return self.session.run(self.output_names, inputs)
        binding = self.session.io_binding()
        for name in self.input_names:
            binding.bind_cpu_input(name, np.ascontiguousarray(inputs[name]))
        for name in self.output_names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

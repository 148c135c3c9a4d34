"""Loading a model bundle off the GUI thread (checking the files and opening the ONNX sessions takes seconds)."""

from __future__ import annotations

from pathlib import Path

from PyQt6.QtCore import QThread, pyqtSignal

from hybridsep_rt.separate import DEFAULT_BUNDLE

__all__ = ["BundleLoader", "DEFAULT_BUNDLE", "default_bundle", "provider_name"]


def default_bundle() -> Path | None:
    """The default bundle (``models/default``) when it exists."""
    return DEFAULT_BUNDLE if DEFAULT_BUNDLE.is_dir() else None


def provider_name(provider: str) -> str:
    """"CUDAExecutionProvider" -> "CUDA", "CPUExecutionProvider" -> "CPU"."""
    return provider.removesuffix("ExecutionProvider") or provider


class BundleLoader(QThread):
    """Builds an ``OnnxSeparator`` for ``path`` in its own thread.

    Signals:
        loaded(OnnxSeparator)
        failed(str): why the bundle cannot be used (missing, invalid, corrupt ...).
    """

    loaded = pyqtSignal(object)
    failed = pyqtSignal(str)

    def __init__(self, path: str | Path, compute_device: str = "auto", parent=None):
        super().__init__(parent)
        self.path = Path(path)
        self.compute_device = compute_device

    def run(self) -> None:
        from hybridsep_rt.bundle import BundleError
        from hybridsep_rt.separator import OnnxSeparator

        try:
            separator = OnnxSeparator(self.path, device=self.compute_device)
        except BundleError as e:
            self.failed.emit(f"model bundle unusable: {e}")
            return
        except Exception as e:  # onnxruntime errors, unreadable files: shown in the window
            self.failed.emit(f"cannot load the model bundle {self.path}: {type(e).__name__}: {e}")
            return
        self.loaded.emit(separator)

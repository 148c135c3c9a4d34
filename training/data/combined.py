"""A combined manifest: the rows of several corpora (the synthetic one, the real recordings) in one file.

Each row keeps all its fields, with its path made absolute (so the file may live anywhere) and a "corpus" field
naming the folder of the manifest it came from. The splits stay those of each corpus. Training reads it like
any manifest; its class balance is the mixer's `balance_classes` / `speech_share` (TrainConfig's).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from hybridsep_rt.atomic import atomic_write_text
from training.data.manifest import ManifestError, read_manifest


def combine_manifests(manifests: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write the rows of `manifests` into `out` (atomically); returns its path. Every row is validated first
    (training.data.manifest, audio not opened): a bad row raises ManifestError naming file:line."""
    out = Path(out)
    lines = []
    for manifest in manifests:
        manifest = Path(manifest)
        read_manifest(manifest, on_error="raise", check_audio=False)
        root = manifest.resolve().parent
        for text in manifest.read_text(encoding="utf-8").splitlines():
            if not text.strip():
                continue
            row = json.loads(text)
            row["path"] = str((root / row["path"]).resolve())
            row["corpus"] = root.name
            lines.append(json.dumps(row, ensure_ascii=False))
    if not lines:
        raise ManifestError(f"the manifests {[str(m) for m in manifests]} hold no rows")
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out

"""Frame grids and the alignment of one grid's features to another's by the centre times of their frames.

The ASM's frames are the STFT frames of its subbands; the SSL encoder's frames (BEATs patches, YAMNet cells) come
at another rate and another offset. Resizing a feature sequence to the ASM's frame count would place frame i of
both grids at the same fraction of the window, which is off by up to half a frame of either grid at the ends
(80 ms for BEATs' 160 ms patches). Instead each ASM frame takes the encoder's features at its own centre time,
interpolated linearly between the two encoder frames around it (the nearest one beyond the ends).
"""

from __future__ import annotations

import torch


def stft_frame_centres(num_frames: int, hop_seconds: float) -> torch.Tensor:
    """(num_frames,) centre times in seconds of a centred STFT's frames: frame i is centred on sample i * hop."""
    return torch.arange(num_frames, dtype=torch.float32) * hop_seconds


def align_frames(features: torch.Tensor, first_centre: float, spacing: float, centres: torch.Tensor) -> torch.Tensor:
    """(B, S, D) features on the grid ``first_centre + j * spacing`` (seconds) -> (B, len(centres), D) at the
    times ``centres``, by linear interpolation between neighbouring frames (clamped to the first and last)."""
    last = features.shape[1] - 1
    position = ((centres.to(features.device) - first_centre) / spacing).clamp(0, last)
    low = position.floor().long()
    high = (low + 1).clamp(max=last)
    weight = (position - low.to(position.dtype)).to(features.dtype)[None, :, None]
    return features[:, low] * (1 - weight) + features[:, high] * weight

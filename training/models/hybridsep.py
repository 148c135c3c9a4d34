"""The whole Hybrid-Sep model (paper Fig. 1 and 2) with `save_pretrained` / `from_pretrained`.

Inference (Fig. 2): query text -> CLAP text encoder -> text embedding;
mixture -> CLAP audio encoder + FE -> AET(text emb, mixture emb, FE frames) -> predicted target audio embedding;
mixture + target embedding -> ASM -> separated target.
The `one_stage` ablation feeds the text embedding straight to the ASM (no FE / AET).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from hybridsep_rt.atomic import atomic_path
from training.config import HybridSepConfig, with_overrides
from training.data.manifest import CLIP_PEAK, TARGET_PEAK
from training.models.aet import AudioEmbeddingTransformer, FeatureExtractor
from training.models.asm import AudioSeparationModel, input_gain
from training.models.beats import BEATs
from training.models.clap import AudioTextEncoder, build_audio_text_encoder, load_audio_text_encoder
from training.models.denoiser import ConditionalDenoiser

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
CLAP_FOLDER = "clap"
DROPS = {"one_stage": ("fe.", "aet."), "no_cd": ("cd.",)}  # ablation switch -> the weights it drops
INIT_OVERRIDES = {"discriminator", *DROPS}


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


class HybridSep(nn.Module):
    def __init__(self, cfg: HybridSepConfig, clap: AudioTextEncoder | None = None):
        super().__init__()
        self.new_parameters: list[str] = []  # what from_pretrained(new_parts=True) started afresh
        beats = None
        if cfg.beats_checkpoint and cfg.ssl == "beats" and not cfg.no_ssl:
            # Pretrained BEATs (paper 2.2): its weights end up in this model's own state, so a saved model
            # no longer needs the checkpoint file.
            beats = BEATs.from_checkpoint(cfg.beats_checkpoint)
            cfg = cfg.replace(beats=beats.cfg, beats_checkpoint=None)
        self.cfg = cfg
        self.clap = clap if clap is not None else build_audio_text_encoder(cfg)
        if self.clap.embedding_dim != cfg.embedding_dim:
            raise ValueError(f"the audio-text encoder gives {self.clap.embedding_dim}-d embeddings but the config "
                             f"says embedding_dim={cfg.embedding_dim}")
        self.fe = self.aet = None
        if not cfg.one_stage:
            max_frames = cfg.window_samples // cfg.fe.hop_length + 1
            self.fe = FeatureExtractor(cfg.fe, max_frames)
            self.aet = AudioEmbeddingTransformer(cfg.aet, cfg.embedding_dim, cfg.fe.dim)
        self.asm = AudioSeparationModel(cfg, beats)
        self.cd = None if cfg.no_cd else ConditionalDenoiser(cfg)
        # Paper 2.1 / 2.2: the CLAP encoders and the SSL encoder (BEATs) are pre-trained and frozen.
        freeze(self.clap)
        if self.asm.ssl is not None:
            freeze(self.asm.ssl)

    def frozen_modules(self) -> list[nn.Module]:
        return [m for m in (self.clap, self.asm.ssl) if m is not None]

    def train(self, mode: bool = True) -> "HybridSep":
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()  # frozen encoders keep their inference behaviour (dropout, layer drop) in training
        return self

    @property
    def example_peak(self) -> float:
        """The peak an example clip is brought to before its audio embedding stands in for the condition (query by
        example): a two-stage ASM learned the AET's predictions of the targets' embeddings at their level in the
        training mixtures (TARGET_PEAK); a one-stage ASM learned text embeddings, which stage 0 aligned with clips
        at the corpus's peak (CLIP_PEAK)."""
        return CLIP_PEAK if self.aet is None else TARGET_PEAK

    def target_embedding(self, mixture: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Stage 1 (2.1): the predicted target audio embedding; the text embedding itself when one_stage."""
        if self.aet is None:
            return text_emb
        mixture = mixture * input_gain(mixture)  # the level the AET was trained at, as for the ASM
        mixture_emb = self.clap.audio_features(mixture)
        return self.aet(text_emb, mixture_emb, self.fe(mixture))

    def forward(self, mixture: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """mixture (B, N) at cfg.sample_rate, text_emb (B, E) -> separated target (B, N)."""
        separated, _ = self.asm(mixture, self.target_embedding(mixture, text_emb))
        return separated

    @torch.no_grad()
    def separate(self, mixture: torch.Tensor, queries: list[str]) -> torch.Tensor:
        return self(mixture, self.clap.embed_text(queries))

    def save_pretrained(self, folder: str | Path) -> None:
        """config.json + model.pt (every weight but the audio-text encoder's) + clap/ (its own folder)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.cfg.save(folder / CONFIG_FILE)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("clap.")}
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            torch.save(state, tmp)
        self.clap.save_pretrained(folder / CLAP_FOLDER)

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu",
                        overrides: dict | None = None, new_parts: bool = False) -> "HybridSep":
        """Loads a saved model. `overrides` may change what the saved weights do not fix: the discriminator's
        settings, and the ablations that drop a part (one_stage drops FE + AET, no_cd drops the CD), so an
        ablation starts from the same trained encoders as the full model. `new_parts=True` also loads weights
        saved by an older architecture: parameters the current code has and the file lacks keep their fresh
        initialisation (`new_parameters` lists them); a parameter whose shape changed is still an error."""
        folder = Path(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE, CLAP_FOLDER):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder} is not a Hybrid-Sep model folder: {name} is missing")
        try:
            cfg = HybridSepConfig.load(folder / CONFIG_FILE)
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{folder / CONFIG_FILE} is not a valid Hybrid-Sep config: {e}") from e
        new = with_overrides(cfg, overrides or {})
        changed = {f.name for f in dataclasses.fields(cfg) if getattr(new, f.name) != getattr(cfg, f.name)}
        fixed = sorted(k for k in changed if k not in INIT_OVERRIDES or (k in DROPS and not getattr(new, k)))
        if fixed:
            raise ValueError(f"model settings {fixed} cannot change when starting from {folder}: only the "
                             "discriminator, one_stage=true and no_cd=true can")
        dropped = tuple(prefix for key in changed & set(DROPS) for prefix in DROPS[key])
        cfg = new
        model = cls(cfg, clap=load_audio_text_encoder(folder / CLAP_FOLDER, input_rate=cfg.sample_rate))
        try:
            state = torch.load(folder / WEIGHTS_FILE, map_location=map_location, weights_only=True)
        except Exception as e:
            raise ValueError(f"{folder / WEIGHTS_FILE} cannot be read as a torch checkpoint: {e}") from e
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a size mismatch: the same name, another shape
            raise ValueError(f"{folder / WEIGHTS_FILE} does not fit this model: {e}") from e
        missing = [k for k in missing if not k.startswith("clap.")]
        unexpected = [k for k in unexpected if not k.startswith(dropped)]
        if unexpected or (missing and not new_parts):
            hint = " (new_parts=True starts the missing ones afresh)" if missing and not unexpected else ""
            raise ValueError(f"{folder / WEIGHTS_FILE} does not match its config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}{hint}")
        model.new_parameters = missing
        return model

"""The three training stages (paper Fig. 1, sections 2.1 and 2.2).

- stage0: the compact audio-text encoder, contrastive (symmetric InfoNCE), for users without T-CLAP weights.
- stage1: FE + AET, L1 between the predicted and the frozen CLAP audio embedding of the target (2.1).
- stage2: ASM + CD with a discriminator, adversarial consistent training (2.2, Algorithm 1).

Each stage owns its model parts, optimisers and data; `training.trainer.train` runs the loop.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from training.config import get_config
from training.data.clips import ClipTextDataset
from training.data.manifest import read_manifest
from training.data.weak_labels import weak_labels
from training.data.augment import AugmentConfig
from training.data.mixer import MixerConfig, MixtureDataset
from training.losses import (adversarial_loss, discriminator_loss, feature_matching_loss, pseudo_huber,
                             symmetric_info_nce)
from training.models.discriminator import MultiScaleSTFTDiscriminator
from training.models.hybridsep import HybridSep
from training.schedules import SIGMA_MIN, sample_noise_levels
from training.trainer import DistributedEnv, TrainConfig, generators_for


WEAK_LABELS_FILE = "weak_labels.json"  # stage 0's cache of YAMNet's weak labels, in its output folder
OPEN_VOCABULARY_CLASSES = 20  # AudioSet classes outside the corpus's keywords scored by stage 0's evaluation


class Indexed(torch.utils.data.Dataset):
    """Adds the run-wide example index to each item (it seeds the step's random draws)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "index": index}


def collate(items: list[dict]) -> dict:
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def build_model(cfg: TrainConfig) -> HybridSep:
    if cfg.init:
        return HybridSep.from_pretrained(cfg.init, overrides=cfg.model, new_parts=cfg.init_new_parts)
    model_cfg = get_config(cfg.preset, **cfg.model)
    if model_cfg.ssl == "beats" and not (model_cfg.no_ssl or model_cfg.beats_checkpoint or model_cfg.allow_random_beats):
        raise ValueError("the ASM's BEATs is frozen, so without pretrained weights it stays random: name an official "
                         "checkpoint (--set model.beats_checkpoint=PATH), use YAMNet (--set model.ssl=yamnet), or "
                         "train with a random BEATs on purpose (--set model.allow_random_beats=true)")
    return HybridSep(model_cfg)


class Stage:
    """Shared parts: the model, its device, DDP wrapping, the valid set and saving.

    A stage's `train_step(batch, step)` returns its scalars as 0-d tensors: the loop reads them back only when
    it logs, so a GPU step runs without waiting for the device."""

    name = ""

    def __init__(self, cfg: TrainConfig, env: DistributedEnv):
        self.cfg, self.env = cfg, env
        self.model = build_model(cfg).to(env.device)
        if self.model.new_parameters and env.is_main:
            names = self.model.new_parameters
            print(f"{len(names)} parameters are new to {cfg.init} and start afresh: {', '.join(names[:6])}"
                  + (", ..." if len(names) > 6 else ""), file=sys.stderr)
        self.sample_rate = self.model.cfg.sample_rate
        self.collate = collate
        self._wrapped: dict[str, nn.Module] = {}

    def trainable(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        """What a checkpoint holds (unwrapped modules)."""
        return self.trainable()

    def wrap_distributed(self) -> None:
        for name, module in self.trainable().items():
            self._wrapped[name] = module
            if self.env.world_size > 1:
                ids = [self.env.device.index] if self.env.device.type == "cuda" else None
                # warm-up steps leave the CD out of the generator's graph
                self._wrapped[name] = DistributedDataParallel(module, device_ids=ids,
                                                              find_unused_parameters=self.cfg.warmup_steps > 0)

    def run(self, name: str) -> nn.Module:
        """The module to call in a training step (its DDP wrapper when distributed)."""
        return self._wrapped.get(name, self.trainable()[name])

    def autocast(self):
        if self.env.device.type == "cuda" and self.cfg.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def adamw(self, *modules: nn.Module) -> torch.optim.AdamW:
        """AdamW (paper 3.1); weight decay on weight matrices only, not on biases, norms and scalars. The fused
        implementation updates all parameters in a few kernels instead of several per parameter."""
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        rest = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.betas, fused=True)

    def step_optimizer(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
        """One update; returns the gradient norm before clipping."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        optimizer.step()
        return norm

    def segment_seconds(self) -> float:
        return self.cfg.segment_seconds or self.model.cfg.window_seconds

    def mixtures(self, split: str, length: int, mixer: MixerConfig | None = None) -> Indexed:
        """Mixtures of one split; the training split's follow the config's augmentation and class balance."""
        mixer = mixer or MixerConfig.paper()
        mixer.segment_seconds = self.segment_seconds()
        if split == "train":
            mixer.augment = AugmentConfig() if self.cfg.augment else None
            mixer.balance_classes, mixer.speech_share = self.cfg.balance_classes, self.cfg.speech_share
        return Indexed(MixtureDataset(self.cfg.manifest, split, self.sample_rate, self.cfg.seed, mixer, length))

    def valid_batches(self):
        loader = torch.utils.data.DataLoader(self.valid_set, batch_size=max(1, self.cfg.batch_size // self.env.world_size),
                                             collate_fn=self.collate)
        return loader

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.env.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def log_audio(self, writer, step: int) -> None:
        pass

    def save_model(self, folder: Path) -> None:
        self.model.save_pretrained(folder)


class ContrastiveStage(Stage):
    """Stage 0: trains the compact audio-text encoder's audio tower and text projection (the MiniLM text tower
    stays frozen) with the symmetric InfoNCE loss of CLAP; reports text-to-audio recall@1 and @5 on valid."""

    name = "stage0"

    def __init__(self, cfg: TrainConfig, env: DistributedEnv):
        super().__init__(cfg, env)
        self.clap = self.model.clap
        if not self.clap.trainable_parameters():
            raise ValueError("stage 0 trains the compact audio-text encoder; this model uses "
                             f"the {self.model.cfg.clap.backend!r} backend (frozen pretrained CLAP needs no stage 0)")
        for p in self.clap.trainable_parameters():
            p.requires_grad_(True)
        self.encoder = ContrastiveModel(self.clap)
        window = self.segment_seconds()
        manifest = read_manifest(cfg.manifest, check_audio=False)
        weak = {split: None for split in ("train", "valid")}
        if cfg.weak_label_share > 0:
            weak = {split: weak_labels(manifest.split(split), Path(cfg.out) / WEAK_LABELS_FILE, progress=env.is_main)
                    for split in weak}
        self.train_set = Indexed(ClipTextDataset(manifest, "train", self.sample_rate, cfg.seed, window,
                                                 length=cfg.steps * cfg.batch_size, weak_labels=weak["train"],
                                                 weak_share=cfg.weak_label_share))
        self.valid_set = Indexed(ClipTextDataset(manifest, "valid", self.sample_rate, cfg.seed + 1, window))
        self.open_vocabulary = open_vocabulary_classes(manifest.split("valid"), weak["valid"])
        self.optimizer = self.adamw(self.encoder)

    def trainable(self):
        return {"encoder": self.encoder}

    def optimizers(self):
        return {"encoder": self.optimizer}

    def train_step(self, batch: dict, step: int) -> dict:
        batch = self.to_device(batch)
        self.encoder.train()
        tokens = {k: v.to(self.env.device) for k, v in self.clap.tokenize(batch["text"]).items()}
        with self.autocast():
            loss = self.run("encoder")(batch["audio"], tokens["input_ids"], tokens["attention_mask"])
        norm = self.step_optimizer(self.optimizer, loss)
        return {"loss": loss.detach(), "grad_norm": norm, "logit_scale": self.encoder.logit_scale.detach().clone()}

    def evaluate(self) -> dict:
        self.encoder.eval()
        return retrieval_figures(self.clap, self.valid_batches(), self.open_vocabulary, self.env.device)


@torch.no_grad()
def retrieval_figures(clap, batches, open_vocabulary: dict, device) -> dict:
    """Text-to-audio recall@1/@5 over ``batches`` of a ClipTextDataset that holds each clip of its split once, in
    order, and the open-vocabulary hits of ``open_vocabulary`` (:func:`open_vocabulary_classes`) on them."""
    audio, text, clip = [], [], []
    for batch in batches:
        audio.append(clap.audio_features(batch["audio"].to(device)))
        text.append(clap.embed_text(batch["text"]).to(device))
        clip += batch["clip"]
    audio = torch.cat(audio)
    scores = retrieval_recall(torch.cat(text), audio, clip)
    if open_vocabulary:
        names = sorted(open_vocabulary)
        names_emb = clap.embed_text(names).to(device)
        scores.update(open_vocabulary_hits(names_emb, audio[torch.tensor(clip).argsort()],
                                           [open_vocabulary[n] for n in names]))
    return scores


class ContrastiveModel(nn.Module):
    """The audio-text encoder plus CLIP's learnable temperature; forward returns the InfoNCE loss."""

    def __init__(self, clap):
        super().__init__()
        self.clap = clap
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))  # CLIP's initial temperature 0.07

    def forward(self, audio: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return symmetric_info_nce(self.clap.audio_features(audio), self.clap.text_features(input_ids, attention_mask),
                                  self.logit_scale)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clap.train(mode)  # the encoder keeps its frozen text tower in inference mode itself
        return self


def open_vocabulary_classes(clips, labels: list[list[str]] | None, limit: int = OPEN_VOCABULARY_CLASSES,
                            known: set[str] | None = None) -> dict:
    """The AudioSet classes that YAMNet tags valid clips with and that no corpus keyword names (``known``: those
    keywords, default the keywords of ``clips``): the ``limit`` most frequent, each with the positions of the clips
    it tags ({class name: set of clip positions})."""
    if not labels:
        return {}
    keywords = {k.lower() for k in known} if known is not None else {k.lower() for c in clips for k in c.keywords}
    tagged: dict[str, set[int]] = {}
    for position, names in enumerate(labels):
        for name in names:
            if name.lower() not in keywords:
                tagged.setdefault(name, set()).add(position)
    return dict(sorted(tagged.items(), key=lambda item: (-len(item[1]), item[0]))[:limit])


def open_vocabulary_hits(names_emb: torch.Tensor, audio_emb: torch.Tensor, tagged: list[set[int]]) -> dict:
    """How often an AudioSet class name as a text query retrieves clips YAMNet tags as that class: the share of
    classes whose top-ranked clip is tagged so (hit@1), and whose top 5 hold one (hit@5)."""
    ranked = (names_emb @ audio_emb.t()).argsort(dim=1, descending=True).cpu().tolist()
    hits = [[position in clips for position in order[:5]] for order, clips in zip(ranked, tagged)]
    return {"open_vocabulary_hit@1": float(np.mean([h[0] for h in hits])),
            "open_vocabulary_hit@5": float(np.mean([any(h) for h in hits])),
            "open_vocabulary_classes": float(len(hits))}


def retrieval_recall(text_emb: torch.Tensor, audio_emb: torch.Tensor, clip_ids: list[int]) -> dict:
    """Text-to-audio recall@1 and @5: a text retrieves correctly when its own clip is among the top k audios
    (texts of the same clip count as the same item)."""
    sims = text_emb @ audio_emb.t()
    ids = torch.tensor(clip_ids)
    ranked = ids[sims.argsort(dim=1, descending=True).cpu()]
    hits = ranked == ids[:, None]
    return {f"recall@{k}": float(hits[:, :k].any(dim=1).float().mean()) for k in (1, 5)}


class EmbeddingStage(Stage):
    """Stage 1 (2.1): FE + AET predict the target's CLAP audio embedding from the query's text embedding, the
    mixture's CLAP audio embedding and FE frames; L1 to the frozen CLAP audio encoder on the target."""

    name = "stage1"

    def __init__(self, cfg: TrainConfig, env: DistributedEnv):
        super().__init__(cfg, env)
        if self.model.aet is None:
            raise ValueError("a one_stage model has no FE / AET: it skips stage 1")
        self.predictor = EmbeddingPredictor(self.model)
        self.train_set = self.mixtures("train", cfg.steps * cfg.batch_size)
        self.valid_set = self.mixtures("valid", cfg.eval_examples)
        self.optimizer = self.adamw(self.predictor)

    def trainable(self):
        return {"predictor": self.predictor}

    def optimizers(self):
        return {"predictor": self.optimizer}

    def train_step(self, batch: dict, step: int) -> dict:
        batch = self.to_device(batch)
        self.model.train()
        with torch.no_grad():
            text_emb = self.model.clap.embed_text(batch["query"]).to(self.env.device)
            target_emb = self.model.clap.audio_features(batch["target"])
        with self.autocast():
            predicted = self.run("predictor")(batch["mixture"], text_emb)
        loss = (predicted.float() - target_emb).abs().mean()
        norm = self.step_optimizer(self.optimizer, loss)
        return {"l1": loss.detach(), "grad_norm": norm}

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        predicted, text, target = [], [], []
        for batch in self.valid_batches():
            batch = self.to_device(batch)
            t = self.model.clap.embed_text(batch["query"]).to(self.env.device)
            predicted.append(self.model.target_embedding(batch["mixture"], t))
            text.append(t)
            target.append(self.model.clap.audio_features(batch["target"]))
        predicted, text, target = torch.cat(predicted), torch.cat(text), torch.cat(target)
        return {"cosine_predicted_target": float((predicted * target).sum(-1).mean()),
                "cosine_text_target": float((text * target).sum(-1).mean()),
                "l1": float((predicted - target).abs().mean())}


class EmbeddingPredictor(nn.Module):
    """FE + AET as one module (what stage 1 trains): forward(mixture, text_emb) -> predicted target embedding."""

    def __init__(self, model: HybridSep):
        super().__init__()
        self.fe, self.aet = model.fe, model.aet
        self.clap = [model.clap]  # a list keeps the frozen encoder out of this module's parameters and state

    def forward(self, mixture: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mixture_emb = self.clap[0].audio_features(mixture)
        return self.aet(text_emb, mixture_emb, self.fe(mixture))


class AdversarialConsistentStage(Stage):
    """Stage 2 (2.2): adversarial consistent training, Algorithm 1.

    Per iteration k: one forward gives (X_gen, c) = ASM(X_mixed) and, with noise levels sigma_i < sigma_{i+1} and
    weight lambda_consist(k) from the consistency-training schedules (schedules.py) and one z ~ N(0, I) per
    example, the consistency function f = CD (denoiser.py) at both points of that trajectory:
    f(X_target + sigma_{i+1} z, sigma_{i+1}, c) and f(X_target + sigma_i z, sigma_i, c).
    Phase 1 trains D with the LSGAN loss on X_target vs X_gen (detached). Phase 2: the updated D sees both again;
    L_adv (LSGAN) and the relative feature matching L_feat of Xcodec / EnCodec [16] on its feature maps;
    L_consist = d(pred1, pred2.detach()) with the pseudo-Huber d (the teacher is the student with its gradient
    stopped, as in iCT [17]: no EMA teacher);
    L_T = L_adv + lambda_feat * L_feat + lambda_L1 * L1 + lambda_consist(k) * L_consist; one AdamW step on ASM and
    CD. Algorithm 1 runs the ASM again for phase 2, but only D has changed by then, so the regenerated X_gen and c
    are the ones phase 1 saw: one forward gives the same step and saves a forward of the ASM.

    With `ema_decay` > 0 an EMA of the ASM's weights is kept, evaluated beside the raw weights and saved as the
    model. Every `log_every` steps the CD is probed on the batch's targets (`denoiser_probe`).

    The ASM's target embedding: the frozen CLAP audio encoder on X_target (teacher forcing) by default — Fig. 1
    trains the ASM "based on target audio embedding" while the AET's prediction replaces it at inference (Fig. 2);
    `target_embedding="aet"` uses the stage-1 prediction instead. For the one_stage ablation it is the text embedding.
    """

    name = "stage2"

    def __init__(self, cfg: TrainConfig, env: DistributedEnv):
        super().__init__(cfg, env)
        self.generator = Generator(self.model)
        self.discriminator = MultiScaleSTFTDiscriminator(self.model.cfg.discriminator).to(env.device)
        self.train_set = self.mixtures("train", cfg.steps * cfg.batch_size)
        self.valid_set = self.mixtures("valid", cfg.eval_examples, MixerConfig.keyword_eval())
        self.opt_g = self.adamw(self.generator)  # opt_ASM: ASM and CD (Algorithm 1)
        self.opt_d = self.adamw(self.discriminator)  # opt_D
        self.ema = None
        if cfg.ema_decay > 0:
            self.ema = AveragedModel(self.model.asm, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))

    def trainable(self):
        return {"generator": self.generator, "discriminator": self.discriminator}

    def modules(self):
        return self.trainable() if self.ema is None else {**self.trainable(), "ema": self.ema}

    def optimizers(self):
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    @torch.no_grad()
    def condition_embedding(self, batch: dict) -> torch.Tensor:
        text_emb = self.model.clap.embed_text(batch["query"]).to(self.env.device)
        if self.model.cfg.one_stage:
            return text_emb
        if self.cfg.target_embedding == "aet":
            return self.model.target_embedding(batch["mixture"], text_emb)
        return self.model.clap.audio_features(batch["target"])

    def train_step(self, batch: dict, step: int) -> dict:
        batch = self.to_device(batch)
        self.model.train()
        self.discriminator.train()
        mixture, target = batch["mixture"], batch["target"]
        emb = self.condition_embedding(batch)
        if step < self.cfg.warmup_steps:
            return self.warmup_step(mixture, target, emb)
        disc = self.run("discriminator")
        noisy = sigma = None
        if self.generator.cd is not None:
            gens = generators_for(batch["index"], self.cfg.seed, salt=2)
            sigma_lo, sigma_hi, weight = (x.to(target.device) for x in sample_noise_levels(step, self.cfg.steps, gens))
            z = torch.stack([torch.randn(target.shape[1:], generator=g) for g in gens]).to(target.device)
            noisy = torch.cat((target + sigma_hi[:, None] * z, target + sigma_lo[:, None] * z))
            sigma = torch.cat((sigma_hi, sigma_lo))
        # One forward serves both phases: only D changes in between (see the class docstring).
        with self.autocast():
            generated, condition, pred1, pred2 = self.run("generator")(mixture, emb, noisy, sigma)

        # Phase 1: train D.
        n = len(target)
        with self.autocast():
            logits, _ = disc(torch.cat((target, generated.detach().float())))
        loss_d = discriminator_loss([l[:n] for l in logits], [l[n:] for l in logits])
        norm_d = self.step_optimizer(self.opt_d, loss_d)

        # Phase 2: train ASM and CD.
        self.discriminator.requires_grad_(False)  # phase 2 needs D's input gradients only
        with self.autocast():
            with disc.no_sync() if isinstance(disc, DistributedDataParallel) else contextlib.nullcontext():
                logits, features = disc(torch.cat((target, generated.float())))
        self.discriminator.requires_grad_(True)
        loss_adv = adversarial_loss([l[n:] for l in logits])
        loss_feat = feature_matching_loss([[f[:n] for f in scale] for scale in features],
                                          [[f[n:] for f in scale] for scale in features])
        loss_l1 = (generated.float() - target).abs().mean()
        loss = loss_adv + self.cfg.lambda_feat * loss_feat + self.cfg.lambda_l1 * loss_l1
        scalars = {}
        if pred1 is not None:
            consist = pseudo_huber(pred1.float(), pred2.detach().float())
            loss_consist = (self.cfg.consist_weight * weight * consist).mean()
            loss = loss + loss_consist
            scalars["consist"] = loss_consist.detach()
        norm_g = self.step_optimizer(self.opt_g, loss)
        if self.ema is not None:
            self.ema.update_parameters(self.model.asm)
        if self.generator.cd is not None and (step + 1) % self.cfg.log_every == 0:
            scalars.update(self.denoiser_probe(target, condition.detach(), batch["index"]))
        return {"loss_d": loss_d.detach(), "adv": loss_adv.detach(), "feat": loss_feat.detach(), "l1": loss_l1.detach(),
                **scalars, "loss": loss.detach(), "grad_norm_g": norm_g, "grad_norm_d": norm_d}

    @torch.no_grad()
    def denoiser_probe(self, target: torch.Tensor, condition: torch.Tensor, indices) -> dict:
        """What the CD does with the targets it is trained on, a check against collapse:
        - cd_rms_clean: RMS of f(x + sigma z, sigma) over RMS of x, for a nearly clean x (sigma = RMS(x) / 10, 20 dB
          SNR), averaged over the batch; a CD that shrinks its output towards zeros shows it as a ratio under 1;
        - cd_denoise_db: SNR of f over SNR of its input at sigma = sigma_data (0 dB SNR for a typical target)."""
        gens = generators_for(indices, self.cfg.seed, salt=3)
        z = torch.stack([torch.randn(target.shape[1:], generator=g) for g in gens]).to(target.device)
        rms = target.pow(2).mean(dim=-1).sqrt().clamp_min(1e-6)
        sigma_clean = (0.1 * rms).clamp_min(SIGMA_MIN)
        sigma_mid = torch.full_like(rms, self.model.cfg.cd.sigma_data)
        sigma = torch.cat((sigma_clean, sigma_mid))
        noisy = torch.cat((target, target)) + sigma[:, None] * torch.cat((z, z))
        with self.autocast():
            out = self.generator.cd(noisy, sigma, torch.cat((condition, condition))).float()
        clean, mid = out[: len(target)], out[len(target):]

        def snr(estimate):
            return 10 * torch.log10(target.pow(2).sum(-1) / (estimate - target).pow(2).sum(-1).clamp_min(1e-12))

        return {"cd_rms_clean": (clean.pow(2).mean(dim=-1).sqrt() / rms).mean(),
                "cd_denoise_db": (snr(mid) - snr(noisy[len(target):])).mean()}

    def warmup_step(self, mixture: torch.Tensor, target: torch.Tensor, emb: torch.Tensor) -> dict:
        """A warm-up step (`warmup_steps`): L1 alone on the ASM; D and the CD wait."""
        with self.autocast():
            generated, _, _, _ = self.run("generator")(mixture, emb)
        loss_l1 = (generated.float() - target).abs().mean()
        norm_g = self.step_optimizer(self.opt_g, self.cfg.lambda_l1 * loss_l1)
        if self.ema is not None:
            self.ema.update_parameters(self.model.asm)
        return {"l1": loss_l1.detach(), "grad_norm_g": norm_g}

    @torch.no_grad()
    def evaluate(self) -> dict:
        from training.metrics import sdri

        self.model.eval()
        separators = {"sdri": self.model.asm}
        if self.ema is not None:
            separators["sdri_ema"] = self.ema.module.eval()
        improvements = {name: [] for name in separators}
        for batch in self.valid_batches():
            batch = self.to_device(batch)
            text_emb = self.model.clap.embed_text(batch["query"]).to(self.env.device)
            emb = self.model.target_embedding(batch["mixture"], text_emb)  # inference path: the AET's (Fig. 2)
            for name, asm in separators.items():
                estimate, _ = asm(batch["mixture"], emb)
                for est, ref, mix in zip(estimate.cpu().numpy(), batch["target"].cpu().numpy(),
                                         batch["mixture"].cpu().numpy()):
                    improvements[name].append(sdri(ref, est, mix))
        return {name: float(np.mean(values)) for name, values in improvements.items()}

    @torch.no_grad()
    def log_audio(self, writer, step: int) -> None:
        batch = self.to_device(next(iter(self.valid_batches())))
        text_emb = self.model.clap.embed_text(batch["query"][:1]).to(self.env.device)
        estimate = self.model(batch["mixture"][:1], text_emb)
        for name, wave in (("mixture", batch["mixture"][0]), ("target", batch["target"][0]), ("separated", estimate[0])):
            writer.add_audio(f"example/{name}", wave.clamp(-1, 1).cpu(), step, sample_rate=self.sample_rate)
        writer.add_text("example/query", batch["query"][0], step)

    def save_model(self, folder: Path) -> None:
        """The model folder; with an EMA, its ASM weights are the EMA's (the raw ones stay in the checkpoint)."""
        if self.ema is None:
            return super().save_model(folder)
        raw = {k: v.detach().clone() for k, v in self.model.asm.state_dict().items()}
        self.model.asm.load_state_dict(self.ema.module.state_dict())
        try:
            super().save_model(folder)
        finally:
            self.model.asm.load_state_dict(raw)


class Generator(nn.Module):
    """ASM and CD as one module (what opt_ASM trains): forward(mixture, emb, noisy, sigma) ->
    (X_gen, c, CD(first half of noisy), CD(second half)), `noisy` (2B, N) holding both points of each trajectory
    and `sigma` (2B,) their noise levels; without CD (the no_cd ablation) or noisy the predictions are None."""

    def __init__(self, model: HybridSep):
        super().__init__()
        self.asm, self.cd = model.asm, model.cd

    def forward(self, mixture, emb, noisy=None, sigma=None):
        generated, condition = self.asm(mixture, emb)
        if self.cd is None or noisy is None:
            return generated, condition, None, None
        pred = self.cd(noisy, sigma, torch.cat((condition, condition)))
        return generated, condition, pred[: len(mixture)], pred[len(mixture):]


STAGES = {"stage0": ContrastiveStage, "stage1": EmbeddingStage, "stage2": AdversarialConsistentStage}


def build_stage(cfg: TrainConfig, env: DistributedEnv) -> Stage:
    return STAGES[cfg.stage](cfg, env)

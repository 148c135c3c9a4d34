"""Training plumbing shared by the three stages: configuration, distributed set-up, the data order, checkpoints
with exact resume, signals, logging and the loop itself.

Run on one process (`hybridsep train stage2 ...`) or on many (`torchrun --nproc-per-node 8 -m
hybridsep_rt.cli train stage2 ...`); NCCL on GPUs, gloo on CPU. `batch_size` is the global batch: each of
the W processes takes batch_size / W examples of it, so a step is the same whatever W is.

Exact resume: example i of the run is drawn from (seed, i) and every random draw of a step is seeded from
the example indices, so the data and noise of step k do not depend on what ran before; checkpoints hold the
step, the model, the optimisers and the RNG states.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from hybridsep_rt.atomic import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FOLDER = "model"
CONFIG_FILE = "train_config.json"


@dataclass
class TrainConfig:
    stage: str = "stage2"
    manifest: str = ""
    out: str = "runs/train"
    preset: str = "small"
    model: dict = field(default_factory=dict)  # HybridSepConfig top-level overrides, e.g. {"one_stage": true}
    init: str | None = None  # a model folder to start from (the previous stage's `model/`)
    init_new_parts: bool = False  # `init` is an older architecture: the parameters it lacks start afresh
    steps: int = 60000  # paper 3.1: each stage takes about 60000 steps to converge
    stop_at: int | None = None  # pause here (checkpoint and exit) before `steps`; rerun to go on
    batch_size: int = 128  # paper 3.1: batch size 128 (global: split over the processes)
    lr: float = 1e-4  # paper 3.1: AdamW, initial learning rate 1e-4
    lr_decay_steps: int = 0  # the last N steps lower the learning rate linearly towards 0 (not in the paper)
    betas: tuple[float, float] = (0.8, 0.99)  # paper 3.1: beta1 0.8, beta2 0.99
    weight_decay: float = 0.01  # not given: AdamW's usual default
    grad_clip: float = 1.0  # not given: clip the gradient norm of each optimiser's parameters
    lambda_l1: float = 1.0  # paper 2.2: "lambda_L1 is set to 1"
    # Feature matching, the discriminator loss of Xcodec / EnCodec [16] that Algorithm 1 does not write out: EnCodec
    # weighs it as its adversarial loss (lambda_feat = lambda_g = 3; audiocraft's EnCodec recipe: feat = adv = 4),
    # so here as L_adv, whose weight in Algorithm 1 is 1.
    lambda_feat: float = 1.0
    consist_weight: float = 1.0  # global factor on lambda_consist(k) (schedules.py)
    ema_decay: float = 0.0  # stage 2: > 0 keeps an EMA of the ASM's weights (as iCT [17] keeps one of its
    # student), evaluates it beside the raw weights (valid/sdri_ema) and saves it as the model; 0: no EMA
    warmup_steps: int = 0  # stage 2: the first steps train the ASM on L1 alone (no discriminator, no CD; not in
    # the paper): a query-following generator at a sixth of a full step's cost before adversarial training
    # stage 0: a clip's YAMNet weak labels (AudioSet class names it is tagged with, training/data/weak_labels.py)
    # stand in for its own text this often (0: none)
    weak_label_share: float = 0.25
    target_embedding: str = "clap"  # stage 2: "clap" (teacher forcing, Fig. 1) or "aet" (stage-1 predictions)
    segment_seconds: float | None = None  # training crop length; None = the model's window (paper 3.1: 10 s)
    # stages 1-2, training mixtures only (not in the paper): augment each source (training/data/augment.py), and
    # draw targets class-balanced with at most `speech_share` of them speech (real recordings are mostly speech)
    augment: bool = False
    balance_classes: bool = False
    speech_share: float | None = None
    seed: int = 0
    workers: int = 2
    checkpoint_every: int = 500
    log_every: int = 20
    eval_every: int = 1000
    eval_examples: int = 32
    audio_every: int = 2000
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.stage not in ("stage0", "stage1", "stage2"):
            raise ValueError(f"unknown stage {self.stage!r}: choose stage0, stage1 or stage2")
        if self.target_embedding not in ("clap", "aet"):
            raise ValueError("target_embedding must be 'clap' or 'aet'")
        if not 0 <= self.lr_decay_steps <= self.steps:
            raise ValueError(f"lr_decay_steps must be between 0 and steps ({self.steps}), not {self.lr_decay_steps}")

    def lr_at(self, step: int) -> float:
        """The learning rate of step `step` (0-based): `lr`, then over the last `lr_decay_steps` steps a straight
        line towards 0 at `steps`. A function of the step alone, so a resumed run follows it exactly."""
        left = self.steps - step
        if left > self.lr_decay_steps:
            return self.lr
        return self.lr * left / (self.lr_decay_steps + 1)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the training config {path}: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(names)}")
        return cls(**data)

    def with_overrides(self, overrides: list[str]) -> "TrainConfig":
        """`key=value` overrides (value parsed as JSON, else a string); `model.key=value` sets a model override."""
        data = dataclasses.asdict(self)
        for key, value in parse_overrides(overrides).items():
            if key.startswith("model."):
                data["model"][key[len("model."):]] = value
            else:
                data[key] = value
        return TrainConfig.from_dict(data)


def parse_overrides(items: list[str]) -> dict:
    """`key=value` strings -> {key: value}, each value parsed as JSON, else kept as a string."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form key=value")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


@dataclass
class DistributedEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistributedEnv:
    """Reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and joins the process group."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True  # training shapes are fixed: cuDNN may pick its fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores, as cuDNN's convolutions are
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistributedEnv(rank, world, local, dev)


def example_indices(step: int, batch_size: int, env: DistributedEnv) -> list[int]:
    """The run-wide indices of the examples this process takes at `step`."""
    if batch_size % env.world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {env.world_size} processes")
    local = batch_size // env.world_size
    start = step * batch_size + env.rank * local
    return list(range(start, start + local))


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler: the example indices of steps start, start+1, ..., steps-1 for this process."""

    def __init__(self, start: int, steps: int, batch_size: int, env: DistributedEnv):
        self.start, self.steps, self.batch_size, self.env = start, steps, batch_size, env

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield example_indices(step, self.batch_size, self.env)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def generators_for(indices, seed: int, salt: int = 0) -> list[torch.Generator]:
    """One torch generator per example, seeded from (seed, example index, salt): random draws that do not depend on
    the process count or on what ran before."""
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, int(i), salt]).generate_state(1)[0]))
            for i in indices]


def rng_state() -> dict:
    """The RNG states, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                       has_gauss, cached],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, step: int, stage, cfg: TrainConfig) -> None:
    state = {
        "step": step,
        "config": dataclasses.asdict(cfg),
        "modules": {name: m.state_dict() for name, m in stage.modules().items()},
        "optimizers": {name: o.state_dict() for name, o in stage.optimizers().items()},
        "rng": rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, stage) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read the checkpoint {path}: {e}; move it away to start over") from e
    try:
        for name, m in stage.modules().items():
            m.load_state_dict(state["modules"][name])
        for name, o in stage.optimizers().items():
            o.load_state_dict(state["optimizers"][name])
    except (KeyError, RuntimeError, ValueError) as e:
        raise ValueError(f"the checkpoint {path} does not fit this run's model (it was written by another "
                         f"version of the code or other settings): {e}. Move it away to start over, or start a "
                         "new run from its OUT/model with --init (and --set init_new_parts=true for new parts)") from e
    set_rng_state(state["rng"])
    return int(state["step"])


def training_history(model_dir: str | Path) -> list[dict]:
    """The training runs behind a model folder written by `train` (OUT/model), newest first: each run's
    TrainConfig as a dict plus "steps_done" (its checkpoint's step), following `init` back to the first stage.
    Empty for a folder that no run wrote."""
    history, folder, seen = [], Path(model_dir).resolve(), set()
    while folder not in seen and (folder.parent / CONFIG_FILE).is_file() and folder.name == MODEL_FOLDER:
        seen.add(folder)
        cfg = json.loads((folder.parent / CONFIG_FILE).read_text())
        checkpoint = folder.parent / CHECKPOINT_FILE
        if checkpoint.is_file():
            cfg["steps_done"] = int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["step"])
        history.append(cfg)
        if not cfg.get("init"):
            break
        folder = Path(cfg["init"])
        folder = folder if folder.is_absolute() else (Path.cwd() / folder).resolve()
    return history


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step (then it checkpoints and exits)."""

    def __init__(self):
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum


def _ignore_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT / SIGTERM to the main process, which checkpoints and then stops them
    (Ctrl-C and schedulers signal the whole process group)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _log(writer, scalars: dict, step: int, prefix: str) -> None:
    if writer is not None:
        for k, v in scalars.items():
            writer.add_scalar(f"{prefix}/{k}", v, step)


def throughput(steps: int, batch_size: int, seconds: float, env: DistributedEnv) -> str:
    """The run's speed in one line: what sizes a training budget."""
    seconds = max(seconds, 1e-9)
    line = (f"trained {steps} x {batch_size} examples in {seconds:.1f} s: {1000 * seconds / steps:.0f} ms per step, "
            f"{steps * batch_size / seconds:.1f} examples/s (evaluations and checkpoints included)")
    if env.device.type == "cuda":
        line += f"; peak GPU memory {torch.cuda.max_memory_allocated(env.device) / 2**30:.1f} GiB"
    return line


def train(cfg: TrainConfig, progress: bool = True) -> Path | None:
    """Runs (or resumes) one stage; returns the folder of the trained model (`out/model`, rewritten at every
    checkpoint), or None when a signal stopped it early (the checkpoint is written: the same command resumes)."""
    from tqdm import tqdm

    from training.stages import build_stage

    env = setup_distributed(cfg.device)
    out = Path(cfg.out)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    stage = build_stage(cfg, env)
    step = 0
    if (out / CHECKPOINT_FILE).exists():
        step = load_checkpoint(out / CHECKPOINT_FILE, stage)
    stage.wrap_distributed()
    stop = StopRequest()
    end = cfg.steps if cfg.stop_at is None else min(cfg.steps, cfg.stop_at)  # a rerun past stop_at does nothing
    writer = None
    if env.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    loader = torch.utils.data.DataLoader(
        stage.train_set, batch_sampler=StepBatches(step, end, cfg.batch_size, env),
        num_workers=cfg.workers, collate_fn=stage.collate, worker_init_fn=_ignore_signals,
        pin_memory=env.device.type == "cuda")
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.stage, disable=not (progress and env.is_main), unit="step")
    started, first_step = time.perf_counter(), step
    for batch in loader:
        lr = cfg.lr_at(step)
        for optimizer in stage.optimizers().values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        scalars = stage.train_step(batch, step)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            scalars = {**{k: float(v) for k, v in scalars.items()}, "lr": lr}
            bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()})
            _log(writer, scalars, step, "train")
            if writer is not None:
                rate = (step - first_step) / max(time.perf_counter() - started, 1e-9)
                writer.add_scalar("train/steps_per_second", rate, step)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            _log(writer, stage.evaluate(), step, "valid")
        if writer is not None and step % cfg.audio_every == 0:
            stage.log_audio(writer, step)
        pause = step == end < cfg.steps
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop.signal is not None or pause:
            if env.is_main:
                save_checkpoint(out / CHECKPOINT_FILE, step, stage, cfg)
                stage.save_model(out / MODEL_FOLDER)  # the model as of this checkpoint, ready to export
            if stop.signal is not None or pause:
                why = f"signal {stop.signal}" if stop.signal is not None else "stop_at"
                bar.write(f"stopped by {why} at step {step} of {cfg.steps}; checkpoint written, rerun to resume",
                          file=sys.stderr)
                break
    bar.close()
    if step == first_step and step < cfg.steps and env.is_main:
        print(f"{out} is at step {step} already (stop_at={cfg.stop_at}): nothing to do", file=sys.stderr)
    elif env.is_main and step > first_step:
        print(throughput(step - first_step, cfg.batch_size, time.perf_counter() - started, env), file=sys.stderr)
    finished = step == cfg.steps
    if writer is not None:
        writer.close()
    if dist.is_initialized():
        dist.barrier()
    return out / MODEL_FOLDER if finished else None

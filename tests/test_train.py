"""Training stages, distributed equivalence and exact resume, on a tiny synthetic corpus and 1 s windows."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train_utils import make_manifest
from training.trainer import CHECKPOINT_FILE, DistributedEnv, StepBatches, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.window_seconds=1.0", "workers=0", "log_every=1", "eval_every=1000", "audio_every=1000"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("corpus"))


def config(manifest: Path, out: Path, stage: str, *extra: str) -> TrainConfig:
    return TrainConfig(stage=stage, manifest=str(manifest), out=str(out), steps=2, batch_size=2,
                       eval_examples=2).with_overrides(TINY + list(extra))


def test_overrides_and_errors():
    cfg = TrainConfig().with_overrides(["steps=5", "lr=2e-4", "model.one_stage=true", "out=runs/x"])
    assert (cfg.steps, cfg.lr, cfg.model, cfg.out) == (5, 2e-4, {"one_stage": True}, "runs/x")
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainConfig().with_overrides(["stepz=5"])
    with pytest.raises(ValueError, match="key=value"):
        TrainConfig().with_overrides(["steps"])
    with pytest.raises(ValueError, match="unknown stage"):
        TrainConfig(stage="stage9")
    with pytest.raises(ValueError, match="lr_decay_steps must be between 0 and steps"):
        TrainConfig(steps=5, lr_decay_steps=6)


def test_the_learning_rate_falls_linearly_over_the_last_steps(manifest, tmp_path):
    """lr_decay_steps=3 of 5: steps 0-1 at lr, then 3/4, 2/4, 1/4 of it, as the optimiser sees it in training."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(manifest, tmp_path / "decay", "stage0", "steps=5", "lr=1e-3", "lr_decay_steps=3")
    expected = [1e-3, 1e-3, 0.75e-3, 0.5e-3, 0.25e-3]
    assert [cfg.lr_at(k) for k in range(5)] == pytest.approx(expected)
    assert TrainConfig(steps=5, lr=1e-3).lr_at(4) == 1e-3
    train(cfg, progress=False)
    events = EventAccumulator(str(tmp_path / "decay" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx(expected)


def test_step_batches_split_the_global_batch():
    one = list(StepBatches(3, 5, 4, DistributedEnv(0, 1)))
    two = [list(StepBatches(3, 5, 4, DistributedEnv(r, 2))) for r in range(2)]
    assert one == [[12, 13, 14, 15], [16, 17, 18, 19]]
    assert [a + b for a, b in zip(*two)] == one


@pytest.mark.parametrize("stage", ["stage0", "stage1", "stage2"])
def test_each_stage_runs_and_writes_a_model(manifest, tmp_path, stage):
    folder = train(config(manifest, tmp_path / stage, stage, "eval_every=2"), progress=False)
    assert (folder / "config.json").exists() and (folder / "model.pt").exists()
    state = torch.load(tmp_path / stage / CHECKPOINT_FILE, weights_only=True)
    assert state["step"] == 2


def test_stage_chain_and_ablations(manifest, tmp_path):
    stage0 = train(config(manifest, tmp_path / "s0", "stage0", "steps=1"), progress=False)
    stage1 = train(config(manifest, tmp_path / "s1", "stage1", "steps=1", f"init={stage0}"), progress=False)
    train(config(manifest, tmp_path / "s2", "stage2", "steps=1", f"init={stage1}", "target_embedding=aet"),
          progress=False)
    for flag in ("one_stage", "no_cd", "no_ssl"):
        train(config(manifest, tmp_path / flag, "stage2", "steps=1", f"model.{flag}=true"), progress=False)
    with pytest.raises(ValueError, match="no FE / AET"):
        train(config(manifest, tmp_path / "x", "stage1", "model.one_stage=true"), progress=False)


def test_init_from_an_older_architecture_with_init_new_parts(manifest, tmp_path, capfd):
    """A stage-2 run starts from weights that lack the ASM's TEACAs (saved by an older ASM) when asked to, and
    says which parameters start afresh."""
    folder = train(config(manifest, tmp_path / "old", "stage2", "steps=1"), progress=False)
    state = torch.load(folder / "model.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("asm.stack.teaca.")}, folder / "model.pt")
    with pytest.raises(ValueError, match="new_parts=True"):
        train(config(manifest, tmp_path / "refused", "stage2", "steps=1", f"init={folder}"), progress=False)
    capfd.readouterr()
    train(config(manifest, tmp_path / "new", "stage2", "steps=1", f"init={folder}", "init_new_parts=true"),
          progress=False)
    assert re.search(r"\d+ parameters are new to .* and start afresh: asm\.stack\.teaca\.0\.", capfd.readouterr().err)


def test_stage2_warmup_trains_the_asm_alone(manifest, tmp_path):
    """warmup_steps: the first steps train the ASM on L1 and leave D and the CD as they are; then Algorithm 1,
    with one ASM forward per step."""
    from training.stages import build_stage

    cfg = config(manifest, tmp_path / "w", "stage2", "warmup_steps=1")
    torch.manual_seed(0)
    stage = build_stage(cfg, DistributedEnv())

    def snapshot(module):
        return {n: p.detach().clone() for n, p in module.named_parameters()}

    def changed(before, module):
        return any(not torch.equal(before[n], p) for n, p in module.named_parameters())

    parts = {"asm": stage.model.asm, "cd": stage.model.cd, "d": stage.discriminator}
    before = {k: snapshot(m) for k, m in parts.items()}
    batch = stage.collate([stage.train_set[i] for i in range(cfg.batch_size)])
    scalars = stage.train_step(batch, 0)
    assert set(scalars) == {"l1", "grad_norm_g"}
    assert changed(before["asm"], parts["asm"])
    assert not changed(before["cd"], parts["cd"]) and not changed(before["d"], parts["d"])
    asm_calls = []
    stage.model.asm.register_forward_hook(lambda *args: asm_calls.append(1))
    scalars = stage.train_step(batch, 1)
    assert {"loss_d", "adv", "consist"} <= set(scalars)
    assert len(asm_calls) == 1  # one ASM forward serves D's step and the generator's step
    assert changed(before["cd"], parts["cd"]) and changed(before["d"], parts["d"])


@pytest.mark.parametrize("stage_name", ["stage0", "stage1", "stage2"])
def test_a_step_runs_under_bf16_autocast(manifest, tmp_path, stage_name, monkeypatch):
    """On CUDA the steps run under bf16 autocast (`bf16`, the default there); CPU autocast puts the same
    model code through bf16 matmuls and convolutions, so dtype mismatches show up here too. cuFFT has no
    bf16 where the CPU's FFT has, so torch.stft is held to float32 input here."""
    from training.stages import build_stage

    stft = torch.stft

    def float32_stft(x, *args, **kwargs):
        assert x.dtype == torch.float32, f"torch.stft of {x.dtype}: cuFFT has no bf16"
        return stft(x, *args, **kwargs)

    monkeypatch.setattr(torch, "stft", float32_stft)
    torch.manual_seed(0)
    stage = build_stage(config(manifest, tmp_path / stage_name, stage_name), DistributedEnv())
    stage.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    batch = stage.collate([stage.train_set[i] for i in range(2)])
    scalars = {k: float(v) for k, v in stage.train_step(batch, 0).items()}
    assert scalars and all(math.isfinite(v) for v in scalars.values()), scalars


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GRADIENT_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {root!r})
from training.trainer import TrainConfig, setup_distributed, StepBatches
from training.stages import build_stage
cfg = TrainConfig.load({cfg!r})
torch.manual_seed(cfg.seed)
torch.set_num_threads(1)
env = setup_distributed("cpu")
stage = build_stage(cfg, env)
stage.wrap_distributed()
indices = next(iter(StepBatches(0, 1, cfg.batch_size, env)))
stage.train_step(stage.collate([stage.train_set[i] for i in indices]), 0)
if env.rank == 0:
    torch.save({{n: p.grad.clone() for n, p in stage.generator.named_parameters() if p.grad is not None}},
               {out!r})
"""


def run_gradient_step(cfg_path: Path, out: Path, world: int) -> dict:
    script = GRADIENT_SCRIPT.format(root=str(ROOT), cfg=str(cfg_path), out=str(out))
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env))
    assert all(p.wait(timeout=600) == 0 for p in procs)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("warmup", [0, 1])
def test_two_process_gloo_step_equals_one_process(manifest, tmp_path, warmup):
    """The same global batch of 4 on 1 process and on 2 gloo processes gives the same ASM + CD gradients
    (ASM only in a warm-up step)."""
    cfg = config(manifest, tmp_path / "ddp", "stage2", "batch_size=4", "steps=1", f"warmup_steps={warmup}")
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(__import__("json").dumps(__import__("dataclasses").asdict(cfg)))
    single = run_gradient_step(cfg_path, tmp_path / "one.pt", 1)
    double = run_gradient_step(cfg_path, tmp_path / "two.pt", 2)
    assert single.keys() == double.keys() and len(single) > 50
    assert any(name.startswith("cd.") for name in single) == (warmup == 0)
    for name in single:
        torch.testing.assert_close(double[name], single[name], rtol=1e-4, atol=1e-6, msg=name)


def hybridsep(*args: str) -> list[str]:
    return [sys.executable, "-m", "hybridsep_rt.cli", *args]


def train_command(manifest: Path, out: Path, steps: int) -> list[str]:
    sets = [f"--set={s}" for s in TINY + ["checkpoint_every=1", "eval_every=1000", "lr_decay_steps=3"]]
    return hybridsep("train", "stage2", "--manifest", str(manifest), "--out", str(out), "--steps", str(steps),
                     "--batch-size", "2", "--quiet", *sets)


def test_sigkill_and_resume_reaches_the_same_parameters(manifest, tmp_path):
    steps = 4
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(train_command(manifest, tmp_path / "straight", steps), check=True, env=env, cwd=ROOT)

    proc = subprocess.Popen(train_command(manifest, tmp_path / "killed", steps), env=env, cwd=ROOT)
    ckpt = tmp_path / "killed" / CHECKPOINT_FILE
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["step"] >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 2 <= killed_at < steps
    subprocess.run(train_command(manifest, tmp_path / "killed", steps), check=True, env=env, cwd=ROOT)

    # A run paused by stop_at and rerun without it ends where the straight run ends too.
    paused = subprocess.run(train_command(manifest, tmp_path / "paused", steps) + ["--set=stop_at=1"],
                            env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True, check=True)
    assert "stopped by stop_at at step 1 of 4" in paused.stderr
    assert re.search(r"trained 1 x 2 examples in [\d.]+ s: \d+ ms per step, [\d.]+ examples/s", paused.stderr)
    assert torch.load(tmp_path / "paused" / CHECKPOINT_FILE, weights_only=True)["step"] == 1
    again = subprocess.run(train_command(manifest, tmp_path / "paused", steps) + ["--set=stop_at=1"],
                           env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True, check=True)
    assert "at step 1 already" in again.stderr
    assert torch.load(tmp_path / "paused" / CHECKPOINT_FILE, weights_only=True)["step"] == 1
    subprocess.run(train_command(manifest, tmp_path / "paused", steps), check=True, env=env, cwd=ROOT)

    a = torch.load(tmp_path / "straight" / CHECKPOINT_FILE, weights_only=True)
    for run in (ckpt, tmp_path / "paused" / CHECKPOINT_FILE):
        b = torch.load(run, weights_only=True)
        assert a["step"] == b["step"] == steps
        for module in a["modules"]:
            for name, tensor in a["modules"][module].items():
                assert torch.equal(tensor, b["modules"][module][name]), f"{module}.{name} differs after resume"


def test_sigterm_to_the_process_group_checkpoints_and_stops(manifest, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = train_command(manifest, tmp_path / "term", 50)
    cmd[cmd.index("--set=checkpoint_every=1")] = "--set=checkpoint_every=1000"
    cmd[cmd.index("--set=workers=0")] = "--set=workers=1"
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
    tb = tmp_path / "term" / "tensorboard"
    deadline = time.time() + 300
    while time.time() < deadline and not any(tb.glob("*")):
        time.sleep(0.1)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole process group, data loader workers too, as schedulers do
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert "checkpoint written" in err
    assert 0 < torch.load(tmp_path / "term" / CHECKPOINT_FILE, weights_only=True)["step"] < 50


def test_training_history_follows_init_back_to_the_first_stage(tmp_path, monkeypatch):
    from training.trainer import CONFIG_FILE, MODEL_FOLDER, training_history

    monkeypatch.chdir(tmp_path)
    for name, init, step in (("s0", None, 7), ("s1", f"s0/{MODEL_FOLDER}", 5), ("s2", f"s1/{MODEL_FOLDER}", 3)):
        (tmp_path / name / MODEL_FOLDER).mkdir(parents=True)
        (tmp_path / name / CONFIG_FILE).write_text(__import__("json").dumps({"stage": name, "init": init}))
        torch.save({"step": step}, tmp_path / name / CHECKPOINT_FILE)
    history = training_history(f"s2/{MODEL_FOLDER}")
    assert [(h["stage"], h["steps_done"]) for h in history] == [("s2", 3), ("s1", 5), ("s0", 7)]
    assert training_history(tmp_path) == []

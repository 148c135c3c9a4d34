"""`hybridsep bench`: speed and memory of the model presets, torch eager against ONNX Runtime, and whether
streaming keeps up in real time; `--bundle` measures shipped bundles as they are (ONNX Runtime only).

For each preset, in a child process of its own (so peak memory is that preset's): build the model (random
weights, seed 0), export its bundle, then
- time every graph on one window (batch 1) under torch eager and under ONNX Runtime, on the same inputs;
- run the streaming engine with the bundle, fed in real time for a while, at each hop, and count what it had to
  give up (longer hops, pass-through, underflows);
- report the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

GRAPH_ORDER = ("text_encoder", "audio_encoder", "aet", "asm", "tagger")
SSL_FEATURES = "ssl_features"  # the SSL encoder inside the ASM, timed on its own


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", nargs="+", default=None,
                        help="model presets to measure (small, paper; default: small unless --bundle is given)")
    parser.add_argument("--bundle", type=Path, nargs="+", default=[], metavar="DIR",
                        help="also measure these exported bundles (ONNX Runtime only, as they are shipped): "
                             "per-window compute and streaming keep-up")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="device for both engines")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per graph (the median is reported)")
    parser.add_argument("--hops", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="streaming hops to test (s)")
    parser.add_argument("--stream-seconds", type=float, default=20.0, help="real-time streaming run per hop (s)")
    parser.add_argument("--json", help="also write the figures to this JSON file")


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _stream_keep_up(separator, hop: float, seconds: float, block: int = 1024) -> dict:
    """Feeds the threaded engine a noise signal at real-time pace; returns its counters."""
    import numpy as np

    from hybridsep_rt.engine import EngineConfig, Query, StreamingEngine

    sr = separator.sample_rate
    engine = StreamingEngine(separator, EngineConfig(hop_seconds=hop, lookahead_seconds=hop), threaded=True,
                             query=Query(text="a piano playing a melody"))
    rng = np.random.default_rng(0)
    signal = (0.1 * rng.standard_normal((int(seconds * sr), 1))).astype(np.float32)
    out = np.zeros((block, 1), dtype=np.float32)
    worst_call = 0.0
    with engine:
        start = time.perf_counter()
        for i in range(0, len(signal) - block, block):
            due = start + (i + block) / sr
            time.sleep(max(0.0, due - time.perf_counter()))
            t = time.perf_counter()
            engine.process_block(signal[i:i + block], out)
            worst_call = max(worst_call, time.perf_counter() - t)
        stats = engine.stats()
    return {"hop_s": hop, "latency_s": engine.latency_seconds, "mean_compute_s": stats.mean_compute_seconds,
            "degradations": stats.degradations, "underflows": stats.output_underflows, "windows": stats.windows,
            "kept_up": stats.degradations == 0, "worst_callback_ms": 1000 * worst_call}


def measure_preset(preset: str, device: str, threads: int, repeats: int, hops: list[float],
                   stream_seconds: float) -> dict:
    import resource
    import tempfile

    import torch

    from export.bundle import export_bundle, graph_exports
    from hybridsep_rt.bundle import Bundle
    from hybridsep_rt.separator import OnnxSeparator
    from hybridsep_rt.session import GraphRunner
    from training.config import ClapSettings, get_config
    from training.models.hybridsep import HybridSep

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = get_config(preset)
    if cfg.clap.backend == "hf":  # no pretrained CLAP folder here: a compact encoder of the same width stands in
        cfg = cfg.replace(clap=ClapSettings(backend="compact"))
    model = HybridSep(cfg).eval()
    torch_device = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available())
                                else "cpu")
    result = {"preset": preset, "device": device, "threads": threads, "window_s": cfg.window_seconds,
              "sample_rate": cfg.sample_rate, "graphs": {}, "streaming": []}
    # torch first, then ONNX Runtime: each engine's idle worker threads keep spinning for a while after it ran
    # and would slow down the other one.
    exports = [g for name in GRAPH_ORDER for g in graph_exports(model, None) if g.name == name]
    for graph in exports:
        module = graph.module.to(torch_device)
        inputs = tuple(x.to(torch_device) for x in graph.trace_inputs)

        def run_torch():
            with torch.inference_mode():
                module(*inputs)
            if torch_device.type == "cuda":
                torch.cuda.synchronize()

        result["graphs"][graph.name] = {"torch_s": _median_time(run_torch, repeats)}
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = export_bundle(model, Path(tmp) / "bundle", threads=threads, log=lambda m: None)
        bundle = Bundle.load(bundle_dir)
        for graph in exports:
            runner = GraphRunner.open(bundle.graph_path(graph.name), device=device, threads=threads)
            feeds = {n: x.cpu().numpy() for n, x in zip(graph.input_names, graph.trace_inputs)}
            figures = result["graphs"][graph.name]
            figures["onnxruntime_s"] = _median_time(lambda: runner.run(feeds), repeats)
            figures["provider"] = runner.provider
            figures["torch_over_ort"] = figures["torch_s"] / figures["onnxruntime_s"]
        if model.asm.ssl is not None:
            result["graphs"][SSL_FEATURES] = _time_ssl_features(model, Path(tmp), device, threads, repeats)
        graphs = result["graphs"]
        result["window_compute_s"] = graphs["asm"]["onnxruntime_s"] + graphs.get("aet", {}).get("onnxruntime_s", 0.0)
        separator = OnnxSeparator(bundle, device=device, threads=threads)
        for hop in hops:
            result["streaming"].append(_stream_keep_up(separator, hop, stream_seconds))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _time_ssl_features(model, folder: Path, device: str, threads: int, repeats: int) -> dict:
    """The ASM's SSL encoder (part of the asm graph) on its own: one window -> its frame features, in torch and
    as an ONNX graph of its own."""
    import torch

    from export.graphs import export_graph
    from hybridsep_rt.session import GraphRunner

    from training.models.frames import stft_frame_centres

    cfg = model.cfg
    wave = 0.1 * torch.randn(1, cfg.window_samples, generator=torch.Generator().manual_seed(0))
    frames = model.asm.spectrogram(wave).shape[1]
    centres = stft_frame_centres(frames, cfg.asm.hop_length * cfg.asm.subbands / cfg.sample_rate)

    class Features(torch.nn.Module):  # the SSL encoder as the ASM calls it, at the ASM's frame centres
        def __init__(self, ssl):
            super().__init__()
            self.ssl = ssl

        def forward(self, wave):
            return self.ssl(wave, centres)

    module = Features(model.asm.ssl).eval()
    with torch.inference_mode():
        figures = {"torch_s": _median_time(lambda: module(wave), repeats)}
    path = folder / f"{SSL_FEATURES}.onnx"
    export_graph(module, (wave,), ["wave"], ["features"], path)
    runner = GraphRunner.open(path, device=device, threads=threads)
    figures["onnxruntime_s"] = _median_time(lambda: runner.run({"wave": wave.numpy()}), repeats)
    figures["provider"] = runner.provider
    figures["torch_over_ort"] = figures["torch_s"] / figures["onnxruntime_s"]
    return figures


def measure_bundle(folder: Path, device: str, threads: int, repeats: int, hops: list[float],
                   stream_seconds: float) -> dict:
    """What the streaming engine calls per window on a shipped bundle (aet + asm through `OnnxSeparator`), and
    streaming keep-up at each hop."""
    import resource

    import numpy as np

    from hybridsep_rt.engine import Query
    from hybridsep_rt.separator import OnnxSeparator

    separator = OnnxSeparator(folder, device=device, threads=threads)
    condition = separator.prepare(Query(text="a piano playing a melody"))
    window = (0.1 * np.random.default_rng(0).standard_normal((1, separator.window_samples))).astype(np.float32)
    result = {"bundle": str(folder), "device": device, "threads": threads,
              "window_s": separator.window_samples / separator.sample_rate, "sample_rate": separator.sample_rate,
              "window_compute_s": _median_time(lambda: separator.separate(window, condition), repeats)}
    if separator.bundle.tagger is not None:
        from hybridsep_rt.tagger import Tagger

        tagger = Tagger(separator.bundle, device=device, threads=threads)
        result["tagger_s"] = _median_time(lambda: tagger.scores(window[0]), repeats)
    result["streaming"] = [_stream_keep_up(separator, hop, stream_seconds) for hop in hops]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _child(queue, measure, *args) -> None:
    try:
        queue.put(measure(*args))
    except BaseException as e:  # the parent reports it
        queue.put({"error": f"{type(e).__name__}: {e}"})


def print_report(result: dict) -> None:
    what = f"preset {result['preset']!r}" if "preset" in result else f"bundle {result['bundle']}"
    print(f"\n{what}: one {result['window_s']:g} s window at {result['sample_rate']} Hz, "
          f"device {result['device']}, {result['threads']} threads, peak memory {result['peak_rss_mb']:.0f} MB")
    if "graphs" in result:
        print(f"  {'graph':14s} {'torch eager':>12s} {'onnxruntime':>12s} {'torch/ort':>10s}  provider")
        for name, g in result["graphs"].items():
            print(f"  {name:14s} {g['torch_s']:11.3f}s {g['onnxruntime_s']:11.3f}s {g['torch_over_ort']:9.2f}x  "
                  f"{g['provider']}")
    print(f"  per-window compute (aet + asm, onnxruntime): {result['window_compute_s']:.3f} s")
    if "tagger_s" in result:
        print(f"  tagger, one window (onnxruntime): {result['tagger_s']:.3f} s")
    print(f"  {'hop':>6s} {'latency':>8s} {'compute/window':>15s} {'degradations':>13s} {'underflows':>11s}  real time")
    for s in result["streaming"]:
        print(f"  {s['hop_s']:5.2f}s {s['latency_s']:7.2f}s {s['mean_compute_s']:14.3f}s {s['degradations']:13d} "
              f"{s['underflows']:11d}  {'kept up' if s['kept_up'] else 'fell behind'}")


def run(args) -> int:
    ctx = multiprocessing.get_context("spawn")
    results = []
    presets = args.preset if args.preset is not None else ([] if args.bundle else ["small"])
    jobs = [(measure_preset, preset) for preset in presets] + [(measure_bundle, b) for b in args.bundle]
    for measure, target in jobs:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(queue, measure, target, args.device, args.threads, args.repeats,
                                                list(args.hops), args.stream_seconds))
        proc.start()
        result = queue.get()
        proc.join()
        if "error" in result:
            print(f"hybridsep bench: {target}: {result['error']}", file=sys.stderr)
            return 1
        print_report(result)
        results.append(result)
    if args.json:
        from hybridsep_rt.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2))
    return 0

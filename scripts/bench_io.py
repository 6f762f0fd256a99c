#!/usr/bin/env python
"""I/O benchmark: stream a checkpoint through lsmerge's reader and writer vs plain safetensors.

Two routes copy every tensor of a checkpoint into a new folder:

- ours:  `open_checkpoint(model).items()` -> `CheckpointWriter(max_shard_size=...).add()`
         (one tensor in memory at a time, sharded output, atomic rename, side files copied);
- plain: `safetensors.torch.load_file` of every weight file into one dict -> `save_file`
         (the whole model in memory, one output file, side files copied).

Each run is a fresh subprocess, so the peak anonymous memory (RssAnon in /proc/PID/status,
which leaves out memory-mapped file pages and the page cache) of one route never mixes with
the other's. RssAnon is polled from this parent process every ~1 ms (independent of the
child's GIL) and sampled by the child after its imports and after its last tensor (with
`--self-sample`, also after each tensor of our route); the peak is the maximum of all.
Timing is measured inside the child, from after its imports to after the output folder is
complete (no fsync in either route); throughput = tensor bytes / seconds (MB = 10^6 bytes).

Fairness: the input files are read once before any timed run (page cache warm for both), the
routes alternate order in every repeat, and `os.sync()` runs before each timed run so dirty
pages of the previous run are not flushed during the next one. Reported figures are medians.

Goal (issue 2): ours >= 0.9x plain throughput, and ours' peak RssAnon <= 2 x largest tensor + 200 MB.

Usage:
    .venv/bin/python scripts/bench_io.py                       # checkpoints/base/smollm2-135m-instruct
    .venv/bin/python scripts/bench_io.py --random-shape        # a random model of SmolLM2's shape
    .venv/bin/python scripts/bench_io.py --profile             # cProfile of our route, top functions
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODEL = "checkpoints/base/smollm2-135m-instruct"
RANDOM_MODEL = "checkpoints/bench/smollm2-shape-random"
MB = 1e6
MATERIALISE = False  # --materialise: copy each tensor into anonymous memory after reading (as a merge would)
SELF_SAMPLE = False  # --self-sample: the ours worker also reads RssAnon after each tensor (~30 us each)


def rss_anon(pid: int | str = "self") -> int | None:
    """RssAnon of a process in bytes (None once it has exited)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def weight_files(model: Path) -> list[Path]:
    index = model / "model.safetensors.index.json"
    if index.exists():
        return [model / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    files = sorted(model.glob("*.safetensors"))
    if not files:
        sys.exit(f"bench_io: no *.safetensors in {model}")
    return files


def make_random_model(path: Path) -> None:
    """A randomly initialised Llama with SmolLM2-135M's shape (float32, tied embeddings)."""
    import torch

    torch.manual_seed(0)
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:  # a bare machine: write the same tensor names and shapes directly
        _write_llama_shaped(path)
        return
    cfg = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    )
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    print(f"wrote a random SmolLM2-shaped model to {path}", file=sys.stderr)


def _write_llama_shaped(path: Path, hidden=576, inter=1536, layers=30, heads=9, kv_heads=3, vocab=49152) -> None:
    import torch
    from safetensors.torch import save_file

    head_dim = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        })
    path.mkdir(parents=True)
    save_file({n: torch.randn(s) * 0.02 for n, s in shapes.items()}, path / "model.safetensors", metadata={"format": "pt"})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "vocab_size": vocab, "tie_word_embeddings": True}
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# -- the two routes (run inside a worker subprocess) ------------------------------------------


def route_ours(model: Path, out: Path, max_shard_size: str, samples: list[int]) -> None:
    from lsmerge.io import CheckpointWriter, open_checkpoint

    store = open_checkpoint(model)
    with CheckpointWriter(out, source=model, max_shard_size=max_shard_size) as w:
        for name, tensor in store.items():
            if MATERIALISE:
                tensor = tensor.clone()
            if SELF_SAMPLE:
                samples.append(rss_anon())  # the tensor in hand
            w.add(name, tensor)
            del tensor
    samples.append(rss_anon())


def route_plain(model: Path, out: Path, max_shard_size: str, samples: list[int]) -> None:
    from safetensors.torch import load_file, save_file

    from lsmerge.io.store import SIDE_FILES

    state: dict = {}
    for f in weight_files(model):
        part = load_file(f)
        if MATERIALISE:
            part = {name: t.clone() for name, t in part.items()}
        state.update(part)
        samples.append(rss_anon())
    out.mkdir(parents=True)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    samples.append(rss_anon())
    for name in SIDE_FILES:
        if (model / name).exists():
            shutil.copyfile(model / name, out / name)


ROUTES = {"ours": route_ours, "plain": route_plain}


def worker(route: str, model: Path, out: Path, max_shard_size: str, self_sample: bool = False,
           materialise: bool = False) -> None:
    global SELF_SAMPLE, MATERIALISE
    SELF_SAMPLE, MATERIALISE = self_sample, materialise
    import safetensors.torch  # noqa: F401 - imports outside the timed part, for both routes
    import torch  # noqa: F401

    import lsmerge.io  # noqa: F401

    baseline = rss_anon()
    samples: list[int] = [baseline]
    import resource

    f0 = resource.getrusage(resource.RUSAGE_SELF)
    c0, t0 = os.times(), time.perf_counter()
    ROUTES[route](model, out, max_shard_size, samples)
    seconds = time.perf_counter() - t0
    c1 = os.times()
    f1 = resource.getrusage(resource.RUSAGE_SELF)
    samples.append(rss_anon())
    print(json.dumps({"route": route, "seconds": seconds, "user_s": c1.user - c0.user, "sys_s": c1.system - c0.system,
                      "minor_faults": f1.ru_minflt - f0.ru_minflt, "major_faults": f1.ru_majflt - f0.ru_majflt,
                      "baseline_anon": baseline, "peak_anon_sampled": max(samples)}))


def run_worker(route: str, model: Path, out: Path, max_shard_size: str, self_sample: bool = False,
               materialise: bool = False, poll_s: float = 0.001) -> dict:
    """Run one route in a fresh process; poll its RssAnon from here until it exits."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", route, "--model", str(model), "--out", str(out),
           "--max-shard-size", max_shard_size] + (["--self-sample"] if self_sample else []) + (["--materialise"] if materialise else [])  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak_polled = 0
    while proc.poll() is None:
        anon = rss_anon(proc.pid)
        if anon is not None:
            peak_polled = max(peak_polled, anon)
        time.sleep(poll_s)
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"bench_io: the {route} worker failed (exit {proc.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_anon_polled"] = peak_polled
    result["peak_anon"] = max(peak_polled, result["peak_anon_sampled"])
    return result


# -- report ------------------------------------------------------------------------------------


def machine_facts() -> dict:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import safetensors
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": sh("nproc"),
        "lscpu": sh("lscpu | head -n 15"),
        "mem_total": sh("grep MemTotal /proc/meminfo"),
        "loadavg": sh("cat /proc/loadavg"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
    }


def summarise(runs: list[dict], total_bytes: int, largest: int) -> dict:
    out = {}
    for route in ROUTES:
        rs = [r for r in runs if r["route"] == route]
        secs = statistics.median(r["seconds"] for r in rs)
        out[route] = {
            "seconds_median": secs,
            "seconds_all": [round(r["seconds"], 3) for r in rs],
            "mb_per_s": total_bytes / MB / secs,
            "mb_per_s_best": total_bytes / MB / min(r["seconds"] for r in rs),
            "peak_anon_mb": statistics.median(r["peak_anon"] for r in rs) / MB,
            "peak_anon_mb_max": max(r["peak_anon"] for r in rs) / MB,
            "baseline_anon_mb": statistics.median(r["baseline_anon"] for r in rs) / MB,
        }
    ratio = out["ours"]["mb_per_s"] / out["plain"]["mb_per_s"]
    limit = (2 * largest + 200 * MB) / MB
    out["throughput_ratio"] = ratio
    out["anon_limit_mb"] = limit
    out["goal_throughput"] = ratio >= 0.9
    out["goal_memory"] = out["ours"]["peak_anon_mb_max"] <= limit
    return out


def profile_ours(model: Path, work: Path, max_shard_size: str, top: int = 25) -> None:
    import cProfile
    import pstats

    out = work / "profile-out"
    samples: list[int] = []
    prof = cProfile.Profile()
    prof.enable()
    route_ours(model, out, max_shard_size, samples)
    prof.disable()
    shutil.rmtree(out, ignore_errors=True)
    stats = pstats.Stats(prof).strip_dirs()
    print("\n== cProfile of the ours route (tottime) ==")
    stats.sort_stats("tottime").print_stats(top)
    print("== cumulative ==")
    stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help=f"checkpoint folder (default {DEFAULT_MODEL})")
    ap.add_argument("--random-shape", action="store_true",
                    help=f"bench a random model of SmolLM2's shape in {RANDOM_MODEL} (made on first use)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each route (alternating order)")
    ap.add_argument("--max-shard-size", default="200MB", help="our writer's shard limit")
    ap.add_argument("--work", default=None, help="folder for the outputs (default: a temp folder beside the model)")
    ap.add_argument("--json", default=None, help="also write all runs and the summary to this JSON file")
    ap.add_argument("--profile", action="store_true", help="after the runs, cProfile our route in this process")
    ap.add_argument("--self-sample", action="store_true",
                    help="our route also samples RssAnon after each tensor (checks the 1 ms poller; costs ~30 us a tensor)")
    ap.add_argument("--materialise", action="store_true",
                    help="both routes copy each tensor into anonymous memory after reading (as a merge produces "
                         "fresh tensors); without it safetensors' tensors stay memory-mapped file pages")
    ap.add_argument("--worker", choices=sorted(ROUTES), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        worker(args.worker, Path(args.model), Path(args.out), args.max_shard_size, args.self_sample, args.materialise)
        return

    model = Path(args.model or (RANDOM_MODEL if args.random_shape else DEFAULT_MODEL)).resolve()
    if not model.exists():
        if args.random_shape:
            make_random_model(model)
        else:
            sys.exit(f"bench_io: {model} does not exist; run `lsmerge fetch`, or pass --random-shape to bench a "
                     f"random model of SmolLM2's shape ({RANDOM_MODEL}).")
    from lsmerge.io import open_checkpoint

    store = open_checkpoint(model)
    total_bytes = store.total_bytes
    largest_name = max(store.names, key=lambda n: store.info(n).nbytes)
    largest = store.info(largest_name).nbytes
    files = weight_files(model)
    for f in files:  # warm the page cache once, for both routes alike
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_io-", dir=model.parent))
    work.mkdir(parents=True, exist_ok=True)
    print(f"model {model}: {len(store)} tensors, {total_bytes / MB:.1f} MB in {len(files)} file(s), "
          f"largest {largest_name} {largest / MB:.1f} MB", file=sys.stderr)
    runs = []
    try:
        for rep in range(args.repeats):
            order = ["ours", "plain"] if rep % 2 == 0 else ["plain", "ours"]
            for route in order:
                out = work / f"{route}-{rep}"
                os.sync()
                r = run_worker(route, model, out, args.max_shard_size, args.self_sample, args.materialise)
                r["repeat"] = rep
                runs.append(r)
                print(f"  repeat {rep} {route:5s}: {r['seconds']:.3f} s, {total_bytes / MB / r['seconds']:.0f} MB/s, "
                      f"cpu {r['user_s']:.2f} user + {r['sys_s']:.2f} sys, {r['minor_faults']} minor faults, "
                      f"peak RssAnon {r['peak_anon'] / MB:.0f} MB (baseline {r['baseline_anon'] / MB:.0f} MB)",
                      file=sys.stderr)
                shutil.rmtree(out, ignore_errors=True)
        if args.profile:
            profile_ours(model, work, args.max_shard_size)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    summary = summarise(runs, total_bytes, largest)
    facts = machine_facts()
    print(f"\ndate {facts['date']}, nproc {facts['nproc']}, load {facts['loadavg']}, "
          f"torch {facts['torch']}, safetensors {facts['safetensors']}")
    print(f"model {model} ({total_bytes / MB:.1f} MB, largest tensor {largest / MB:.1f} MB), "
          f"{args.repeats} repeats, our shards {args.max_shard_size}" + (", --materialise" if args.materialise else ""))
    print("| route | median s | MB/s (median) | MB/s (best) | peak RssAnon MB (median / max) | RssAnon after imports MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for route in ROUTES:
        s = summary[route]
        print(f"| {route} | {s['seconds_median']:.3f} | {s['mb_per_s']:.0f} | {s['mb_per_s_best']:.0f} | "
              f"{s['peak_anon_mb']:.0f} / {s['peak_anon_mb_max']:.0f} | {s['baseline_anon_mb']:.0f} |")
    print(f"throughput ours/plain = {summary['throughput_ratio']:.2f} (goal >= 0.9: "
          f"{'met' if summary['goal_throughput'] else 'NOT met'}); ours peak RssAnon "
          f"{summary['ours']['peak_anon_mb_max']:.0f} MB vs limit 2 x {largest / MB:.1f} + 200 = "
          f"{summary['anon_limit_mb']:.0f} MB ({'met' if summary['goal_memory'] else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": facts, "model": str(model), "total_bytes": total_bytes,
                                               "largest_tensor_bytes": largest, "runs": runs, "summary": summary},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()

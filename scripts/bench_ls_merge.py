#!/usr/bin/env python
"""LS-Merge benchmark: end-to-end `lsmerge merge` time and peak memory, and delta coding's effect.

1. End to end: LERP of SmolLM2-135M-Instruct and a perturbed copy (every MLP tensor through
   the codec, the rest by weight-space fallback), `lsmerge merge` in a fresh subprocess: wall
   time and peak RssAnon (anonymous memory, polled every ~2 ms; memory-mapped file pages left
   out). Goal (issue 5): at most 2 minutes on 2 cores.
2. Depth scaling: the same merge on random models of SmolLM2's width with 4 and 30 layers:
   peak RssAnon should not grow with depth.
3. Delta coding: on real SmolLM2 MLP tensors and a perturbed expert (W + N(0, (rel * std)^2)),
   the relative error of a lossy-codec LERP at 0.5 against the exact weight-space average,
   ||out - avg|| / ||avg - W_base||, for delta none / weight / latent.

The perturbed copy stands in for an expert until real ones exist (issue 7). The codec is the
PCA codec (the VAE codec plugs in through `--codec PATH`).

Usage:
    .venv/bin/python scripts/bench_ls_merge.py [--codec pca] [--rank 32] [--skip-depth]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "checkpoints/base/smollm2-135m-instruct"
BENCH = ROOT / "checkpoints/bench"


def rss_anon(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def perturbed_copy(src: Path, dst: Path, rel: float = 0.05, seed: int = 0) -> Path:
    """src with every floating tensor of a decoder layer plus N(0, (rel * std)^2) noise (cached)."""
    if (dst / "model.safetensors").exists() or (dst / "model.safetensors.index.json").exists():
        return dst
    import torch

    from lsmerge.io import CheckpointWriter, open_checkpoint

    store = open_checkpoint(src)
    g = torch.Generator().manual_seed(seed)
    with CheckpointWriter(dst, source=src, inputs=[src]) as w:
        for name, t in store.items():
            if ".layers." in name and t.is_floating_point() and t.dim() == 2:
                t = t + torch.randn(t.shape, generator=g, dtype=t.dtype) * rel * t.float().std()
            w.add(name, t)
    return dst


def random_smollm2(path: Path, layers: int) -> Path:
    if (path / "model.safetensors").exists():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(layers)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def run_merge(a: Path, b: Path, codec: str, rank: int) -> tuple[float, int]:
    """Wall seconds and peak RssAnon bytes of one `lsmerge merge` subprocess."""
    with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
        cmd = [sys.executable, "-m", "lsmerge.cli", "merge", "--method", "lerp", "--models", f"[{a},{b}]",
               "--codec", codec, "--chunk_size", "64", "--rank", str(rank), "--kinds", "[mlp]",
               "--out", str(Path(tmp) / "out"), "--progress", "false"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak = 0

        def poll():
            nonlocal peak
            while proc.poll() is None:
                peak = max(peak, rss_anon(proc.pid) or 0)
                time.sleep(0.002)

        th = threading.Thread(target=poll)
        th.start()
        out = proc.communicate()[0]
        th.join()
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"merge failed:\n{out}")
        return wall, peak


def delta_quality(expert: Path, rank: int, n_tensors: int = 6) -> dict[str, float]:

    from lsmerge.codecs.pca import PCACodec
    from lsmerge.io import open_checkpoint
    from lsmerge.merge import latent as L

    base, exp = open_checkpoint(BASE), open_checkpoint(expert)
    names = [n for n in base.names if ".mlp." in n][:n_tensors]
    errs = {"none": [], "weight": [], "latent": []}
    for n in names:
        wb, we = base.get(n).float(), exp.get(n).float()
        avg = (wb + we) / 2
        scale = (avg - wb).norm()
        full = PCACodec.fit([(n, [wb, we])], chunk_size=64, rank=rank)
        lat = [full.encode(n, wb), full.encode(n, we)]
        merged = L.apply("lerp", lat, lam=0.5)
        errs["none"].append(float((full.decode(n, merged) - avg).norm() / scale))
        errs["latent"].append(float((L.residual_decode(full, n, wb, lat[0], merged) - avg).norm() / scale))
        dcodec = PCACodec.fit([(n, [we - wb])], chunk_size=64, rank=rank)
        d = L.delta_encode(dcodec, n, wb, [we])
        out = L.delta_decode(dcodec, n, wb, L.apply("soup", d + [L.zero_latent(d[0])], weights=[0.5, 0.5]))
        errs["weight"].append(float((out - avg).norm() / scale))
    return {k: sum(v) / len(v) for k, v in errs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", default="pca")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--skip-depth", action="store_true")
    args = ap.parse_args()
    os.chdir(ROOT)
    BENCH.mkdir(parents=True, exist_ok=True)
    if not BASE.exists():
        sys.exit(f"{BASE} missing: run `lsmerge fetch` first")
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()}")
    expert = perturbed_copy(BASE, BENCH / "smollm2-135m-perturbed")
    wall, peak = run_merge(BASE, expert, args.codec, args.rank)
    print(f"end-to-end lerp SmolLM2 x perturbed, MLP through codec={args.codec} rank={args.rank}: "
          f"{wall:.1f} s, peak RssAnon {peak / 2**20:.0f} MiB")
    if not args.skip_depth:
        for layers in (4, 30):
            a = random_smollm2(BENCH / f"smollm2-shape-{layers}l", layers)
            b = perturbed_copy(a, BENCH / f"smollm2-shape-{layers}l-perturbed")
            wall, peak = run_merge(a, b, args.codec, args.rank)
            print(f"depth {layers:2d} layers: {wall:.1f} s, peak RssAnon {peak / 2**20:.0f} MiB")
    for rank in (16, 32):
        q = delta_quality(expert, rank)
        print(f"delta coding, PCA rank {rank}/64, error vs exact average (||out - avg|| / ||avg - base||): "
              + ", ".join(f"{k} {v:.3f}" for k, v in q.items()))


if __name__ == "__main__":
    main()

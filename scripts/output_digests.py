"""Digests of every command's outputs on tiny models: a behaviour fingerprint for refactors.

Builds tiny Llamas (with a word-level tokenizer) under ROOT, runs weight, latent (every
method, delta modes, saved codec, VAE codec), hetero merges, a short VAE fit and its export,
hidden-state generation, steering, a sweep, evaluate and the local judge, and prints one
sha256 per output file (paths relative to ROOT). Run it before and after a change that
should not alter behaviour and diff the two listings:

    .venv/bin/python scripts/output_digests.py /tmp/digests > before.txt
    ... change ...
    .venv/bin/python scripts/output_digests.py /tmp/digests > after.txt && diff before.txt after.txt

ROOT is emptied first; use the same ROOT both times (outputs record their input paths).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from lsmerge.io.tiny import TINY_WORDS, tiny_tokenizer

def tiny(path: Path, seed: int, layers: int = 2, hidden: int = 32) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, pad_token_id=1, bos_token_id=2, eos_token_id=2,
                      max_position_embeddings=256, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).eval().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def text(seed: int, n: int = 400) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(TINY_WORDS[i] for i in torch.randint(len(TINY_WORDS), (n,), generator=g).tolist()) + "\n"


def lsmerge(*argv: str) -> str:
    from lsmerge.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(list(argv))
    return buf.getvalue()


def main(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    m = root / "models"
    base, e1, e2 = tiny(m / "base", 0), tiny(m / "e1", 1), tiny(m / "e2", 2)
    deep = tiny(m / "deep", 3, layers=3, hidden=48)
    txt = root / "text.txt"
    txt.write_text(text(5))
    o = root / "out"
    mw = [
        ("linear", ["--models", f"[{e1},{e2}]", "--parameters", "{weight: [0.7, 0.3]}"]),
        ("slerp", ["--models", f"[{e1},{e2}]", "--method", "slerp", "--parameters", "{t: [0, 0.3, 1]}"]),
        ("ta", ["--models", f"[{e1},{e2}]", "--base_model", base, "--method", "task_arithmetic", "--parameters", "{lambda: 0.8}"]),
        ("ties", ["--models", f"[{e1},{e2}]", "--base_model", base, "--method", "ties", "--parameters", "{density: 0.4}"]),
        ("dare_ties", ["--models", f"[{e1},{e2}]", "--base_model", base, "--method", "dare_ties", "--parameters", "{density: 0.5}", "--seed", "3"]),
        ("dare_linear", ["--models", f"[{e1},{e2}]", "--base_model", base, "--method", "dare_linear", "--parameters", "{density: 0.5}"]),
        ("regmean", ["--models", f"[{e1},{e2}]", "--method", "regmean", "--calibration", json.dumps({"files": [str(txt)], "max_tokens": 64, "seq_len": 16})]),
        ("sel", ["--models", f"[{e1},{e2}]", "--base_model", base, "--layers", "[1]", "--kinds", "[qkv]", "--method", "linear"]),
        ("perkind", ["--models", f"[{e1},{e2}]", "--method", "slerp", "--per_kind", "{attn: {t: 0.2}, mlp: {t: 0.9}}", "--dtype", "bfloat16"]),
    ]
    for name, args in mw:
        lsmerge("merge-weights", *args, "--out", str(o / f"w_{name}"), "--progress", "false")
    recipe = root / "recipe.yml"
    recipe.write_text(f"slices:\n  - sources:\n      - model: {e1}\n        layer_range: [0, 2]\n      - model: {e2}\n"
                      f"        layer_range: [0, 2]\nmerge_method: slerp\nbase_model: {e1}\nparameters:\n  t:\n"
                      "    - filter: self_attn\n      value: [0, 1]\n    - value: 0.4\ndtype: float32\n")
    lsmerge("merge-weights", "--mergekit_config", str(recipe), "--out", str(o / "w_mergekit"), "--progress", "false")
    pca = ["--chunk_size", "16", "--rank", "8"]
    lm = [
        ("lerp", ["--models", f"[{e1},{e2}]", "--lam", "0.3", *pca, "--save_codec", str(root / "codec")]),
        ("lerp_sched", ["--models", f"[{e1},{e2}]", "--lam_schedule", "[0, 1]", *pca, "--pca_basis", "kind"]),
        ("soup", ["--method", "soup", "--models", f"[{base},{e1},{e2}]", "--weights", "[0.5, 0.25, 0.25]", *pca, "--layout", "rows"]),
        ("ta", ["--method", "task_arithmetic", "--models", f"[{e1},{e2}]", "--base", base, "--lam", "0.7", *pca]),
        ("ties", ["--method", "ties", "--models", f"[{e1},{e2}]", "--base", base, "--density", "0.4", *pca]),
        ("dare", ["--method", "dare", "--models", f"[{e1},{e2}]", "--base", base, "--density", "0.5", "--sign_election", "true", "--seed", "2", *pca]),
        ("self", ["--method", "self", "--models", f"[{e1}]", "--samples", "3", "--lam", "0.2", *pca]),
        ("self_latent", ["--method", "self", "--models", f"[{e1}]", "--delta", "latent", *pca]),
        ("delta_w", ["--method", "task_arithmetic", "--models", f"[{e1},{e2}]", "--base", base, "--delta", "weight", *pca]),
        ("delta_l", ["--method", "lerp", "--models", f"[{e1},{e2}]", "--base", base, "--delta", "latent", *pca]),
        ("fallback", ["--models", f"[{e1},{e2}]", "--kinds", "[mlp]", "--fallback_method", "slerp", *pca]),
        ("saved", ["--models", f"[{e1},{e2}]", "--codec", str(root / "codec"), "--dtype", "float16"]),
        ("hetero", ["--method", "hetero", "--models", f"[{base},{deep}]", "--lam", "0.4", *pca]),
        ("hetero_dl", ["--method", "hetero", "--models", f"[{base},{deep}]", "--delta", "latent", "--lam_schedule", "[0.1, 0.9]", *pca]),
        ("hetero_tr", ["--method", "hetero", "--models", f"[{base},{deep}]", "--ot", "false", "--dim_match", "truncate", *pca]),
    ]
    for name, args in lm:
        lsmerge("merge", *args, "--out", str(o / f"l_{name}"), "--progress", "false")
    # a short VAE fit (subprocess: Lightning owns the process), then the VAE codec
    vae_dir = root / "vae"
    subprocess.run([sys.executable, "-m", "lsmerge.cli", "fit", "--config", "configs/vae/tiny.yaml",
                    f"--data.checkpoints=[{e1},{e2}]", f"--data.cache_dir={root / 'cache'}", "--trainer.max_steps=30",
                    "--trainer.val_check_interval=10", "--model.ae_steps=20", "--trainer.logger=false",
                    f"--trainer.callbacks.init_args.dirpath={vae_dir}", f"--trainer.default_root_dir={vae_dir}"],
                   check=True, capture_output=True)
    ckpt = str(vae_dir / "last.ckpt")
    lsmerge("export", "--vae", ckpt, "--model", e1, "--out", str(o / "export"))
    lsmerge("merge", "--models", f"[{e1},{e2}]", "--codec", ckpt, "--kinds", "[mlp]", "--out", str(o / "l_vae"), "--progress", "false")
    lsmerge("merge", "--method", "self", "--models", f"[{e1}]", "--codec", ckpt, "--kinds", "[mlp]", "--out", str(o / "l_vae_self"), "--progress", "false")
    # hidden-state space
    prompts = ["to be or not", "the question whether", "a sea of troubles"]
    g = o / "gen"
    g.mkdir()
    common = ["--base", base, "--prompts", json.dumps(prompts), "--max_new_tokens", "6", "--chat_template", "false"]
    for name, args in [("plain", ["--operator", "null"]),
                       ("slerp", ["--fine_tuned", f"[{e1}]", "--mix_layer", "1"]),
                       ("lerp_all", ["--fine_tuned", f"[{e1}]", "--operator", "lerp", "--tokens", "all", "--beta", "0.7"]),
                       ("mean", ["--fine_tuned", f"[{e1},{e2}]", "--operator", "mean", "--mix_layer", "2", "--tokens", "generated"]),
                       ("sample", ["--fine_tuned", f"[{e1}]", "--temperature", "0.8", "--top_p", "0.9", "--seed", "4"])]:
        lsmerge("generate", *common, *args, "--output", str(g / f"{name}.jsonl"))
    lsmerge("steer", "--base", base, "--fine_tuned", e1, "--prompts", json.dumps(prompts), "--output", str(g / "deltas.safetensors"),
            "--chat_template", "false")
    lsmerge("generate", *common, "--operator", "steer", "--steering_deltas", str(g / "deltas.safetensors"),
            "--steer_layers", "[0, 2]", "--alpha", "2.0", "--output", str(g / "steer.jsonl"))
    lsmerge("sweep", "--base", base, "--fine_tuned", f"[{e1}]", "--text", str(txt), "--output_dir", str(o / "sweep"),
            "--layers", "[0, 1, 2]", "--ratios", "[0.5]", "--operators", "[lerp, slerp]", "--seq_len", "32")
    (o / "sweep" / "sweep_heatmap.png").unlink()  # matplotlib output is not part of the fingerprint
    lsmerge("evaluate", "--models", f"[{base},{str(o / 'w_linear')}]", "--texts", f"[{txt}]", "--max_length", "32",
            "--stride", "16", "--out", str(o / "eval.json"))
    lsmerge("judge", "--responses_a", str(g / "slerp.jsonl"), "--responses_b", str(g / "plain.jsonl"), "--model", base,
            "--chat_template", "false", "--out", str(o / "judge.json"))
    for f in sorted(p for p in o.rglob("*") if p.is_file()):
        print(digest(f), f.relative_to(root))


def digest(path: Path) -> str:
    """sha256 of the file's bytes, with two exceptions: steering deltas by content (safetensors'
    own writer orders the metadata of `save_file` differently from run to run), and the recorded
    sha256 of a `.ckpt` input masked in checkpoints (torch.save writes a random serialization id,
    so each fit's file differs in bytes even when its weights are the same)."""
    h = hashlib.sha256()
    if path.name.endswith(".safetensors") and not path.name.endswith("deltas.safetensors"):
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        meta = header.get("__metadata__", {})
        if "lsmerge_inputs" in meta:
            inputs = json.loads(meta["lsmerge_inputs"])
            for entry in inputs:
                for f in entry.get("files", []):
                    if f.get("file", "").endswith(".ckpt"):
                        f["sha256"] = "<ckpt>"
            meta["lsmerge_inputs"] = json.dumps(inputs)
        h.update(json.dumps(header).encode() + raw[8 + n :])
        return h.hexdigest()[:16]
    if not path.name.endswith("deltas.safetensors"):
        h.update(path.read_bytes())
        return h.hexdigest()[:16]
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        h.update(json.dumps(f.metadata(), sort_keys=True).encode())
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            h.update(f"{k}{t.dtype}{tuple(t.shape)}".encode() + t.numpy().tobytes())
    return h.hexdigest()[:16]


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/lsmerge-digests"))

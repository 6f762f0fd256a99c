"""LoRA experts of SmolLM2-135M-Instruct, one per text domain (Shakespeare, Python source,
JavaScript source, English technical docs), on CPU (resumable, cached by recipe).

Each expert is trained on its corpus's fixed train split (`lsmerge fetch` prepares
`checkpoints/corpora/<domain>/train.txt`; this script runs it for the corpora if they are
missing) and written as

    checkpoints/experts/smollm2-135m-expert-<domain>-lora/      PEFT adapter
    checkpoints/experts/smollm2-135m-expert-<domain>-state/     resumable training state
    checkpoints/base/<merged name>/                             full checkpoint, adapter merged in
    checkpoints/experts/smollm2-135m-expert-<domain>-perplexity.json

with the merged names the shipped configs use: `smollm2-135m-expert` is the Shakespeare expert,
`smollm2-135m-expert2` the Python one, `smollm2-135m-expert3` the JavaScript one and
`smollm2-135m-expert4` the docs one. Then base and experts are scored on each domain's
validation split (held out) and a table is printed.

A killed run continues from its last saved step when started again; a finished expert is
skipped (and its evaluation too, when its JSON exists) only when its outputs were written from
its own state: base, train text and hyperparameters are the expert's cache key
(`lsmerge.experts.recipe_key`), and outputs of a shorter or longer run are rewritten. Budgets are per expert; `--minutes`
counts training time over all runs of that expert. Defaults: see `lsmerge.experts.ExpertConfig`.

    python scripts/make_experts.py [--minutes 30] [--max-steps N] [--domains shakespeare python javascript docs]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lsmerge.data.corpora import corpus_path, corpus_ready  # noqa: E402
from lsmerge.experts import DEFAULT_TARGET_MODULES, ExpertConfig, evaluate_expert, format_table, perplexity_on_texts, train_expert  # noqa: E402

MERGED_NAMES = {"shakespeare": "smollm2-135m-expert", "python": "smollm2-135m-expert2",
                "javascript": "smollm2-135m-expert3", "docs": "smollm2-135m-expert4"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="checkpoints", help="checkpoints root (corpora/, base/, experts/)")
    ap.add_argument("--base", default="checkpoints/base/smollm2-135m-instruct", help="base checkpoint folder")
    ap.add_argument("--domains", nargs="+", default=list(MERGED_NAMES), choices=list(MERGED_NAMES))
    ap.add_argument("--minutes", type=float, default=30.0, help="training-time budget per expert (0: none)")
    ap.add_argument("--max-steps", type=int, default=None, help="step budget per expert")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--target-modules", nargs="+", default=list(DEFAULT_TARGET_MODULES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=25, help="steps between resumable checkpoints")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--eval-split", default="validation", choices=["validation", "test"])
    ap.add_argument("--eval-max-tokens", type=int, default=8192, help="tokens scored per model and domain")
    ap.add_argument("--eval-max-length", type=int, default=512, help="evaluation window (non-overlapping)")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(args.threads)

    root = Path(args.root)
    if not all(corpus_ready(root, d) for d in MERGED_NAMES):
        subprocess.run([sys.executable, "-m", "lsmerge.cli", "fetch", "--root", str(root), "--models", "[]"], cwd=ROOT, check=True)

    experts_dir = root / "experts"
    trained = []
    for domain in args.domains:
        stem = f"smollm2-135m-expert-{domain}"
        cfg = ExpertConfig(
            base=args.base, train_text=str(corpus_path(root, domain, "train")),
            adapter_dir=str(experts_dir / f"{stem}-lora"), merged_dir=str(root / "base" / MERGED_NAMES[domain]),
            state_dir=str(experts_dir / f"{stem}-state"), seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
            r=args.r, alpha=args.alpha, dropout=args.dropout, target_modules=args.target_modules, seed=args.seed,
            minutes=args.minutes or None, max_steps=args.max_steps, save_every=args.save_every, threads=args.threads,
        )
        summary = train_expert(cfg)
        trained.append((domain, stem, cfg, summary))

    texts = {d: str(corpus_path(root, d, args.eval_split)) for d in MERGED_NAMES}
    ppl_kwargs = {"max_length": args.eval_max_length, "max_tokens": args.eval_max_tokens}
    base_ppl = None
    records = []
    for domain, stem, cfg, summary in trained:
        out_json = experts_dir / f"{stem}-perplexity.json"
        if out_json.is_file() and summary["skipped"]:
            record = json.loads(out_json.read_text())
            if record["texts"] == texts and record["settings"] == ppl_kwargs:
                records.append(record)
                continue
        if base_ppl is None:
            base_ppl = perplexity_on_texts(args.base, texts, **ppl_kwargs)
        training = {k: summary[k] for k in ("step", "tokens_seen", "train_seconds", "last_loss")}
        record = evaluate_expert(MERGED_NAMES[domain], domain, cfg.merged_dir, args.base, texts, out_json,
                                 base_ppl=base_ppl, training=training, **ppl_kwargs)
        records.append(record)
    print(f"\nheld-out perplexity ({args.eval_split} split, first {args.eval_max_tokens} tokens, windows of {args.eval_max_length}):")
    print(format_table(records))


if __name__ == "__main__":
    main()

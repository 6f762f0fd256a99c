"""Benchmark: tokens/s of hidden-state-mixed generation against single-model generation.

Both run in the same process through the same generator (`DualModelGenerator`; single = no
source model), greedy, fixed length (no EOS), alternating runs, best of `--repeats`. The limit
for mixing at residual layer L of an N-layer model is 1 / (1 + L/N) of the single-model speed
(the fine-tuned model runs embeddings + L layers); `efficiency` = measured ratio / limit.

Models: SmolLM2-135M-Instruct from `checkpoints/base/smollm2-135m-instruct` when present, else a
random model of the same config; the "expert" is the base with every weight perturbed by 1%
Gaussian noise (same cost as a real expert).

    .venv/bin/python scripts/bench_hidden.py --layers 0 8 15 23 30 --new-tokens 32 --batch 1
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lsmerge.merge.hidden import MixSpec, num_layers
from lsmerge.merge.hidden.generation import DualModelGenerator

SMOLLM2 = "checkpoints/base/smollm2-135m-instruct"


def smollm2_like() -> LlamaForCausalLM:
    cfg = LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192, rope_theta=100000.0,
        rms_norm_eps=1e-5,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 8, 15, 23, 30])
    ap.add_argument("--operator", default="slerp")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 + --clock cpu on a shared machine)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall: perf_counter; cpu: this process's CPU time (robust to other load, CPU + 1 thread only)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    dtype = getattr(torch, args.dtype)
    if os.path.isfile(os.path.join(SMOLLM2, "config.json")):
        base, source = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=dtype), "SmolLM2-135M-Instruct"
    else:
        base, source = smollm2_like().to(dtype), "random model with the SmolLM2-135M config"
    base = base.to(args.device).eval()
    expert = copy.deepcopy(base)
    with torch.no_grad():
        g = torch.Generator(device=args.device).manual_seed(1)
        for p in expert.parameters():
            p.add_(0.01 * p.float().std() * torch.randn(p.shape, generator=g, device=args.device, dtype=p.dtype))
    n = num_layers(base)
    prompts = torch.randint(10, base.config.vocab_size, (args.batch, args.prompt_tokens), generator=torch.Generator().manual_seed(0)).tolist()
    kw = dict(max_new_tokens=args.new_tokens, eos_token_ids=[], batch_size=args.batch)

    def timed(gen) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = clock()
        gen.generate_ids(prompts, **kw)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return args.batch * args.new_tokens / (clock() - t0)

    single = DualModelGenerator(base)
    timed(single)  # warm-up
    print(f"# {source}, {n} layers, device {args.device} ({torch.get_num_threads()} threads, {args.clock} clock), {args.dtype}, "
          f"batch {args.batch}, prompt {args.prompt_tokens} + {args.new_tokens} new tokens, operator {args.operator}, "
          f"best of {args.repeats}")  # fmt: skip
    print("| mix layer L | single tok/s | mixed tok/s | ratio | limit 1/(1+L/N) | efficiency |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for layer in args.layers:
        mixed = DualModelGenerator(base, [expert], MixSpec(args.operator, layer, 0.5, "last"))
        timed(mixed)
        s_runs, m_runs = [], []
        for _ in range(args.repeats):
            s_runs.append(timed(single))
            m_runs.append(timed(mixed))
        s, m = max(s_runs), max(m_runs)
        limit = 1.0 / (1.0 + layer / n)
        print(f"| {layer} | {s:.1f} | {m:.1f} | {m / s:.3f} | {limit:.3f} | {m / s / limit:.2f} |", flush=True)


if __name__ == "__main__":
    main()

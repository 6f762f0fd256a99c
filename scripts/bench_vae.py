"""Benchmark the weight VAE: Lightning vs a plain PyTorch loop, and codec encode+decode time.

    .venv/bin/python scripts/bench_vae.py --layers 0 --steps 40 --warmup 5 --rounds 4 --codec_all_layers
    .venv/bin/python scripts/bench_vae.py --model tiny:checkpoints/base/tiny-llama --accelerator cuda --precision bf16-mixed

Training: the data and model settings of the default recipe (`--recipe`, configs/vae/smollm2_mlp.yaml;
`--layers` narrows the selection). Lightning trains through `L.Trainer` with the recipe's
TensorBoard logger and `log_every_n_steps` (no checkpointing, no validation, progress bar only
with --progress_bar); the plain loop does the same work by hand: `WeightVAE.objective`, backward,
the optimizer and scheduler of `configure_optimizers`, the curriculum's plateau update, on the
same DataLoader. The two run alternately (`--rounds`, order swapped each round) so machine
noise hits both; each run's throughput is the median over its steps after `--warmup` of
(chunk tokens / step time), step time measured from one batch start to the next. The overhead
is the median over rounds of plain / Lightning - 1.

Codec: every selected tensor (all layers of the recipe's kinds with --codec_all_layers) is
encoded and decoded with `VAECodec`; wall time and mean relative Frobenius error are reported.

Prints JSON, with the load average before and after. On a shared machine set
OMP_WAIT_POLICY=passive: with both cores busy, spinning OpenMP threads wait for a descheduled
peer at every parallel region (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import lightning as L
import torch
import yaml


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


class _StepTimer(L.Callback):
    """Batch start times and chunk tokens per step."""

    def __init__(self, dev: torch.device):
        self.dev, self.starts, self.tokens = dev, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        _sync(self.dev)
        self.starts.append(time.perf_counter())
        self.tokens.append(int((batch["lengths"] > 0).sum()))

    def on_train_end(self, trainer, pl_module):
        _sync(self.dev)
        self.starts.append(time.perf_counter())


def _throughput(starts: list[float], tokens: list[int], warmup: int) -> float:
    """Median over steps after `warmup` of tokens / step time (chunk tokens per second)."""
    rates = [tokens[i] / (starts[i + 1] - starts[i]) for i in range(warmup, len(tokens))]
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", default="configs/vae/smollm2_mlp.yaml")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the recipe's)")
    p.add_argument("--layers", nargs="*", type=int, default=None, help="layers to train on (default: the recipe's)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--progress_bar", action="store_true")
    p.add_argument("--skip_train", action="store_true")
    p.add_argument("--skip_codec", action="store_true")
    p.add_argument("--codec_all_layers", action="store_true")
    p.add_argument("--batch_windows", type=int, default=None, help="codec windows per forward (default: VAECodec's)")
    p.add_argument("--cache_dir", default="checkpoints/vae/cache")
    a = p.parse_args()

    from lsmerge.codecs.vae import VAECodec
    from lsmerge.data.weight_datamodule import WeightChunkDataModule, select_tensors
    from lsmerge.models.weight_vae import WeightVAE

    recipe = yaml.safe_load(open(a.recipe))
    data = dict(recipe["data"], val_fraction=0.0, num_workers=0, cache_dir=a.cache_dir)
    if a.model:
        data["checkpoints"] = [a.model]
    if a.layers is not None:
        data["layers"] = a.layers
    dm = WeightChunkDataModule(**data)
    dm.prepare_data()
    dm.setup("fit")

    def build() -> WeightVAE:
        torch.manual_seed(0)
        return WeightVAE(chunk_size=dm.chunk_size, tokens_per_sample=dm.tokens_per_sample, num_layers=dm.num_layers,
                         num_sources=dm.num_sources, tensors=dm.tensors, family=dm.family, layout=dm.layout,
                         normalization=dm.normalization, slog_kappa=dm.slog_kappa, **recipe["model"])

    dev = torch.device("cuda" if a.accelerator in ("cuda", "gpu") else "cpu")
    total = a.steps + a.warmup
    res = {"args": vars(a), "n_windows": len(dm._train), "load_before": os.getloadavg(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "threads": torch.get_num_threads()}

    def lightning_run() -> float:
        timer = _StepTimer(dev)
        logger = L.pytorch.loggers.TensorBoardLogger(tempfile.mkdtemp(prefix="bench_vae_tb_"), name="tb")
        trainer = L.Trainer(accelerator=a.accelerator, devices=1, precision=a.precision, max_steps=total, logger=logger,
                            log_every_n_steps=recipe["trainer"].get("log_every_n_steps", 50), enable_checkpointing=False,
                            enable_progress_bar=a.progress_bar, enable_model_summary=False, limit_val_batches=0,
                            callbacks=[timer])
        trainer.fit(build(), dm)
        return _throughput(timer.starts, timer.tokens, a.warmup)

    def plain_run() -> float:
        model = build().to(dev).train()
        cfg = model.configure_optimizers()
        opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
        amp = a.precision == "bf16-mixed"
        starts, tokens, step = [], [], 0
        while step < total:
            for batch in dm.train_dataloader():
                if step >= total:
                    break
                _sync(dev)
                starts.append(time.perf_counter())
                tokens.append(int((batch["lengths"] > 0).sum()))
                batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    loss = model.objective(batch, step)["loss"]
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
                if model.curriculum.plateau_patience and model.curriculum.stage(step) == 1:
                    model.curriculum.update(step, float(loss.detach()))
                step += 1
        _sync(dev)
        starts.append(time.perf_counter())
        return _throughput(starts, tokens, a.warmup)

    if not a.skip_train:
        runs = {"lightning": [], "plain": []}
        for r in range(a.rounds):
            order = ("lightning", "plain") if r % 2 == 0 else ("plain", "lightning")
            for name in order:
                runs[name].append(lightning_run() if name == "lightning" else plain_run())
        overheads = [100 * (pl / li - 1) for li, pl in zip(runs["lightning"], runs["plain"])]
        res["lightning_tokens_per_s"] = [round(x) for x in runs["lightning"]]
        res["plain_tokens_per_s"] = [round(x) for x in runs["plain"]]
        res["lightning_overhead_pct_per_round"] = [round(x, 1) for x in overheads]
        res["lightning_overhead_pct_median"] = round(statistics.median(overheads), 1)
        res["load_after_train"] = os.getloadavg()

    if a.skip_codec:
        print(json.dumps(res, indent=1))
        return

    # codec: encode + decode every selected tensor (or all layers of the kinds)
    model = build()
    codec = VAECodec(model, device=dev) if a.batch_windows is None else VAECodec(model, a.batch_windows, device=dev)
    store = dm.stores[0]
    names = [t["name"] for t in dm.tensors]
    if a.codec_all_layers:  # same tensors of every layer; position embeddings cover unseen layers
        names = select_tensors(store, dm.arch, recipe["data"]["kinds"])
        for n in names:
            if n not in codec.specs:
                r = dm.arch.role(n)
                codec.specs[n] = {"name": n, "shape": list(store.shape(n)), "layer": r.layer, "kind": r.kind}
    weights = {n: store.get(n).float() for n in names}  # read before timing: the codec, not the disk
    _sync(dev)
    t0 = time.perf_counter()
    errs = []
    for n, w in weights.items():
        rec = codec.decode(n, codec.encode(n, w))
        errs.append(float((rec - w).norm() / w.norm()))
    _sync(dev)
    res["codec_tensors"] = len(names)
    res["codec_values"] = sum(w.numel() for w in weights.values())
    res["codec_seconds"] = round(time.perf_counter() - t0, 2)
    res["codec_batch_windows"] = codec.batch_windows
    res["codec_mean_rel_frob"] = sum(errs) / len(errs)
    res["load_after"] = os.getloadavg()
    res["device"] = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

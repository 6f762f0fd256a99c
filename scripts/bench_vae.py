"""Benchmark the weight VAE: Lightning vs a plain PyTorch loop, and codec encode+decode time.

    .venv/bin/python scripts/bench_vae.py --model checkpoints/base/smollm2-135m-instruct --layers 0 --steps 60
    .venv/bin/python scripts/bench_vae.py --model tiny:checkpoints/base/tiny-llama --accelerator cuda --precision bf16-mixed

Both trainings use the same model initialisation, data, batch size, optimizer and step count;
throughput is chunk tokens per second over the steps after `--warmup` steps. Then every
selected tensor is encoded and decoded with `VAECodec` (all layers' tensors of the selected
kinds when --codec_all_layers) and the wall time and mean relative error are reported. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import lightning as L
import torch


class _Timer(L.Callback):
    def __init__(self, warmup):
        self.warmup, self.t0, self.tokens = warmup, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()
        if trainer.global_step >= self.warmup:
            self.tokens += int((batch["lengths"] > 0).sum())

    def on_train_end(self, trainer, pl_module):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny:checkpoints/base/tiny-llama")
    p.add_argument("--kinds", nargs="+", default=["mlp"])
    p.add_argument("--layers", nargs="*", type=int, default=None)
    p.add_argument("--chunk_size", type=int, default=64)
    p.add_argument("--latent_dim", type=int, default=32)
    p.add_argument("--tokens_per_sample", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--codec_all_layers", action="store_true")
    p.add_argument("--cache_dir", default="checkpoints/vae/cache")
    a = p.parse_args()

    from lsmerge.codecs.vae import VAECodec
    from lsmerge.data.weight_datamodule import WeightChunkDataModule
    from lsmerge.models.weight_vae import WeightVAE

    dm = WeightChunkDataModule([a.model], kinds=a.kinds, layers=a.layers, chunk_size=a.chunk_size,
                               tokens_per_sample=a.tokens_per_sample, batch_size=a.batch_size, val_fraction=0.0,
                               cache_dir=a.cache_dir)
    dm.prepare_data()
    dm.setup("fit")

    def build():
        torch.manual_seed(0)
        return WeightVAE(chunk_size=dm.chunk_size, tokens_per_sample=dm.tokens_per_sample, num_layers=dm.num_layers,
                         num_sources=dm.num_sources, tensors=dm.tensors, family=dm.family, latent_dim=a.latent_dim,
                         d_model=a.d_model, ae_steps=10**9, beta_max=0.0, lr_warmup_steps=0, min_lr_ratio=1.0)

    total = a.steps + a.warmup
    res = {"args": vars(a), "n_windows": len(dm._train)}
    timer = _Timer(a.warmup)
    trainer = L.Trainer(accelerator=a.accelerator, devices=1, precision=a.precision, max_steps=total, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[timer])
    model = build()
    trainer.fit(model, dm)
    res["lightning_tokens_per_s"] = timer.tokens / timer.seconds
    res["lightning_final_loss"] = float(trainer.callback_metrics.get("train/loss", float("nan")))

    # plain PyTorch loop: same init, data, optimizer (AdamW, constant lr), precision
    dev = torch.device("cuda" if a.accelerator in ("cuda", "gpu") else "cpu")
    plain = build().to(dev)
    opt = torch.optim.AdamW(plain.parameters(), lr=plain.hparams.lr, weight_decay=plain.hparams.weight_decay)
    amp = a.precision == "bf16-mixed"
    step, tokens, t0 = 0, 0, None
    while step < total:
        for batch in dm.train_dataloader():
            if step >= total:
                break
            batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            if step == a.warmup:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            if step >= a.warmup:
                tokens += int((batch["lengths"] > 0).sum())
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                out = plain(batch)
            recon, _ = plain.losses(batch, out)
            opt.zero_grad(set_to_none=True)
            recon.backward()
            opt.step()
            step += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    res["plain_tokens_per_s"] = tokens / (time.perf_counter() - t0)
    res["lightning_overhead_pct"] = 100 * (res["plain_tokens_per_s"] / res["lightning_tokens_per_s"] - 1)

    # codec: encode + decode every selected tensor (or all layers of the kinds)
    model.tensors = dm.tensors
    codec = VAECodec(model.float(), device=dev)
    store = dm.stores[0]
    names = [t["name"] for t in dm.tensors]
    if a.codec_all_layers:  # same tensors of every layer; position embeddings cover unseen layers
        from lsmerge.data.weight_datamodule import select_tensors

        names = select_tensors(store, dm.arch, a.kinds)
        for n in names:
            if n not in codec.specs:
                r = dm.arch.role(n)
                codec.specs[n] = {"name": n, "shape": list(store.shape(n)), "layer": r.layer, "kind": r.kind}
    t0 = time.perf_counter()
    numel, errs = 0, []
    for n in names:
        w = store.get(n).float()
        rec = codec.decode(n, codec.encode(n, w))
        numel += w.numel()
        errs.append(float((rec - w).norm() / w.norm()))
    res["codec_values"] = numel
    res["codec_seconds"] = time.perf_counter() - t0
    res["codec_mean_rel_frob"] = sum(errs) / len(errs)
    res["device"] = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark the weight VAE: Lightning vs a plain PyTorch loop, and codec encode+decode time.

    .venv/bin/python scripts/bench_vae.py --layers 0 --steps 40 --warmup 5 --rounds 3 --codec_all_layers
    .venv/bin/python scripts/bench_vae.py --model tiny:checkpoints/base/tiny-llama --accelerator cuda --precision bf16-mixed

Training: the data and model settings of the default recipe (`--recipe`, configs/vae/smollm2_mlp.yaml;
`--layers` narrows the selection). Lightning trains through `L.Trainer` with the recipe's
TensorBoard logger and `log_every_n_steps` (no checkpointing, no validation, progress bar only
with --progress_bar). The plain loop does the same work by hand (`WeightVAE.objective`,
backward, the optimizer and scheduler of `configure_optimizers`, the curriculum's plateau
update) on its own copy of the model and DataLoader, one step at the start of every Lightning
step, so each Lightning step is paired with an adjacent plain step and machine noise hits both.
Throughput is chunk tokens per second per step, after `--warmup` steps; the overhead is the
median over step pairs of plain / Lightning - 1 (`--rounds` fresh runs pooled; per-round
medians are reported as well).

Codec: every selected tensor (all layers of the recipe's kinds with --codec_all_layers) is
encoded and decoded with `VAECodec`; wall time and mean relative Frobenius error are reported.

Linear bound (--pca_bound): the share of variance of the recipe's normalised chunks that the
best single linear basis of rank r keeps (eigenvalues of the chunk covariance), for the ranks
of compression ratios 1, 1.6, 2 and 4: what a PCA codec reaches, and near what a VAE's R² can
reach on near-isotropic chunks.

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


class _PlainLoop:
    """The same training done by hand: `WeightVAE.objective`, backward, the optimizer and scheduler
    of `configure_optimizers`, the curriculum's plateau update, batches from its own DataLoader."""

    def __init__(self, model, loader, dev: torch.device, amp: bool):
        self.model, self.loader, self.dev, self.amp = model.to(dev).train(), loader, dev, amp
        cfg = self.model.configure_optimizers()
        self.opt, self.sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
        self.batches, self.step_count = iter(loader), 0

    def step(self) -> int:
        """One training step; returns its chunk tokens."""
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            batch = next(self.batches)
        tokens = int((batch["lengths"] > 0).sum())
        batch = {k: v.to(self.dev, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.model.objective(batch, self.step_count)["loss"]
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        curriculum = self.model.curriculum
        if curriculum.plateau_patience and curriculum.stage(self.step_count) == 1:
            curriculum.update(self.step_count, float(loss.detach()))
        self.step_count += 1
        return tokens


class _Interleave(L.Callback):
    """Runs one plain-loop step at the start of every Lightning step, so the two alternate step by
    step and share the machine's load. Lightning's step time is the time from one batch start to
    the next minus the plain step run in between."""

    def __init__(self, plain: _PlainLoop):
        self.plain = plain
        self.marks = []  # (Lightning batch start, its tokens, plain step seconds, plain tokens)

    def _mark(self) -> float:
        _sync(self.plain.dev)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        t = self._mark()
        tokens = self.plain.step()
        self.marks.append((t, int((batch["lengths"] > 0).sum()), self._mark() - t, tokens))

    def on_train_end(self, trainer, pl_module):
        self.marks.append((self._mark(), 0, 0.0, 0))

    def rates(self, warmup: int) -> tuple[list[float], list[float]]:
        """Per step after `warmup`: (Lightning, plain) chunk tokens per second."""
        lightning, plain = [], []
        for (t, tok, dp, ptok), (t_next, _, _, _) in list(zip(self.marks, self.marks[1:]))[warmup:]:
            lightning.append(tok / (t_next - t - dp))
            plain.append(ptok / dp)
        return lightning, plain


def pca_bound(recipe: dict, model: str | None = None, ratios=(1, 1.6, 2, 4)) -> dict:
    """Variance kept by the top-r eigenvectors of the (chunk_size x chunk_size) second-moment
    matrix of all normalised chunks of the recipe's kinds, every layer (flat layout)."""
    from lsmerge.data.chunking import normalize, tensor_stats
    from lsmerge.data.weight_datamodule import select_tensors
    from lsmerge.io.archmap import ArchitectureMap
    from lsmerge.io.store import open_checkpoint

    data = recipe["data"]
    store = open_checkpoint(model or data["checkpoints"][0].split(":", 1)[-1])
    arch = ArchitectureMap.from_config(store.config)
    c = int(data["chunk_size"])
    moment, n = torch.zeros(c, c, dtype=torch.float64), 0
    names = select_tensors(store, arch, data.get("kinds"), None, data.get("pattern"))
    for name in names:
        w = store.get(name).float().flatten()
        x = normalize(w, tensor_stats(w), data.get("normalization", "zscore"))
        x = torch.nn.functional.pad(x, (0, -x.numel() % c)).view(-1, c).double()
        moment += x.T @ x
        n += x.shape[0]
    ev = torch.linalg.eigvalsh(moment / n).flip(0)
    kept = {f"ratio {r:g} (rank {round(c / r)})": round(float(ev[: round(c / r)].sum() / ev.sum()), 4) for r in ratios}
    return {"tensors": len(names), "chunks": n, "chunk_size": c, "variance_kept": kept}


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
    p.add_argument("--pca_bound", action="store_true", help="only the linear bound of the recipe's selection (all layers)")
    a = p.parse_args()
    if a.pca_bound:
        print(json.dumps(pca_bound(yaml.safe_load(open(a.recipe)), a.model), indent=2))
        return

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

    def paired_run() -> tuple[list[float], list[float]]:
        plain = _PlainLoop(build(), dm.train_dataloader(), dev, a.precision == "bf16-mixed")
        interleave = _Interleave(plain)
        logger = L.pytorch.loggers.TensorBoardLogger(tempfile.mkdtemp(prefix="bench_vae_tb_"), name="tb")
        trainer = L.Trainer(accelerator=a.accelerator, devices=1, precision=a.precision, max_steps=total, logger=logger,
                            log_every_n_steps=recipe["trainer"].get("log_every_n_steps", 50), enable_checkpointing=False,
                            enable_progress_bar=a.progress_bar, enable_model_summary=False, limit_val_batches=0,
                            callbacks=[interleave])
        trainer.fit(build(), dm)
        return interleave.rates(a.warmup)

    if not a.skip_train:
        lightning, plain, per_round = [], [], []
        for _ in range(a.rounds):
            li, pl = paired_run()
            lightning += li
            plain += pl
            per_round.append(100 * (statistics.median(pl) / statistics.median(li) - 1))
        overhead = [100 * (p_ / l_ - 1) for l_, p_ in zip(lightning, plain)]
        res["steps_paired"] = len(overhead)
        res["lightning_tokens_per_s_median"] = round(statistics.median(lightning))
        res["plain_tokens_per_s_median"] = round(statistics.median(plain))
        res["lightning_overhead_pct_median"] = round(statistics.median(overhead), 1)  # over step pairs
        res["lightning_overhead_pct_quartiles"] = [round(q, 1) for q in statistics.quantiles(overhead, n=4)]
        res["lightning_overhead_pct_per_round"] = [round(x, 1) for x in per_round]
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

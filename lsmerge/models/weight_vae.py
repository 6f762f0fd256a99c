"""`WeightVAE`: a transformer beta-VAE over chunk tokens of weight tensors (LS-Merge).

Per window of T chunk tokens of one tensor, x (B, T, c) in normalised space:

    h   = Encoder(W_in x + cond_enc)                      (B, T, D)   pre-norm blocks, SDPA
    mu, logvar = split(W_lat h)                           (B, T, d)   d = latent_dim
    z   = mu                      while beta = 0 (stage 1, deterministic autoencoder)
    z   = mu + exp(logvar / 2) * eps                      otherwise
    x^  = W_out Decoder(W_z z + cond_dec)                 (B, T, c)

    L = sum_m rho(x^ - x) / sum_m 1  +  beta * sum_tokens KL(q(z|x) || N(0, I)) / (n_tokens * c)

rho is the square (MSE) or Huber; the sums run over real values only (padding masked); with
`output_weighting` each value's rho is multiplied by its column's weight h_j / mean(h) (the
batch's `col_weight`, `lsmerge.data.importance`), so the loss approximates the layer's output
error ||(W - W^) diag(sqrt h)||^2 (the diagonal of X^T X) rather than the weights' error;
the KL is scaled per weight value so `beta` weighs the same units as the reconstruction.
`cond` adds learned layer, kind and window-slot embeddings and a sinusoidal embedding of the
chunk's index in its tensor (`TokenConditioning`). Compression ratio = chunk_size / latent_dim.

The beta schedule is a `BetaCurriculum` (lsmerge.models.curriculum) held here and saved
in every checkpoint, with the random-number states (`lsmerge.data.resume`; restored when a fit
resumes, so it continues bit for bit). Validation metrics (torchmetrics): MSE and R^2 in normalised space,
recall of the 0.1% largest-magnitude weights, and per tensor in the original scale the
relative Frobenius error ||W^ - W||_F / ||W||_F and the kurtosis of W^ against W.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanSquaredError, Metric, R2Score

from lsmerge.models.curriculum import BetaCurriculum
from lsmerge.data import chunking
from lsmerge.data.resume import restore_rng_states, rng_states
from lsmerge.io.archmap import KINDS
from lsmerge.models.components import TokenConditioning, Transformer, gaussian_kl

Loss = Literal["mse", "huber"]
LOSSES = get_args(Loss)


class OutlierRecall(Metric):
    """Recall of the largest weights: among real values with |w| >= t (t = the tensor's
    0.1%-largest magnitude), the fraction whose reconstruction has the same sign and |w^| >= t."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("hits", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, recon: torch.Tensor, orig: torch.Tensor, threshold: torch.Tensor, mask: torch.Tensor) -> None:
        top = (orig.abs() >= threshold) & mask
        hit = top & (recon.abs() >= threshold) & (torch.sign(recon) == torch.sign(orig))
        self.hits += hit.sum()
        self.total += top.sum()

    def compute(self) -> torch.Tensor:
        return (self.hits / self.total.clamp_min(1)).float()


class TensorwiseStats(Metric):
    """Per-tensor sums in the original scale: ||W^-W||^2, ||W||^2 and raw moments 0..4 of W and W^.

    `compute()` -> dict of (num_tensors,) float64: `rel_frob`, `kurtosis_orig`, `kurtosis_recon`
    (NaN for tensors not seen). Kurtosis = m4 / m2^2 of the values seen (3 for a Gaussian).
    """

    full_state_update = False

    def __init__(self, num_tensors: int):
        super().__init__()
        self.num_tensors = num_tensors
        self.add_state("err2", torch.zeros(num_tensors, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("moments_orig", torch.zeros(num_tensors, 5, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("moments_recon", torch.zeros(num_tensors, 5, dtype=torch.float64), dist_reduce_fx="sum")

    @staticmethod
    def _moments(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        v = v.to(torch.float64) * mask
        m = mask.to(torch.float64)
        dims = tuple(range(1, v.dim()))
        return torch.stack([m.sum(dims), v.sum(dims), v.pow(2).sum(dims), v.pow(3).sum(dims), v.pow(4).sum(dims)], -1)

    def update(self, recon: torch.Tensor, orig: torch.Tensor, tensor_id: torch.Tensor, mask: torch.Tensor) -> None:
        err = ((recon.to(torch.float64) - orig.to(torch.float64)) * mask).pow(2).sum(tuple(range(1, recon.dim())))
        self.err2.index_add_(0, tensor_id, err)
        self.moments_orig.index_add_(0, tensor_id, self._moments(orig, mask))
        self.moments_recon.index_add_(0, tensor_id, self._moments(recon, mask))

    @staticmethod
    def _kurtosis(s: torch.Tensor) -> torch.Tensor:
        n = s[:, 0].clamp_min(1)
        m1, r2, r3, r4 = s[:, 1] / n, s[:, 2] / n, s[:, 3] / n, s[:, 4] / n
        c2 = r2 - m1**2
        c4 = r4 - 4 * m1 * r3 + 6 * m1**2 * r2 - 3 * m1**4
        return c4 / c2.clamp_min(1e-300) ** 2

    def compute(self) -> dict[str, torch.Tensor]:
        seen = self.moments_orig[:, 0] > 0
        nan = torch.full_like(self.err2, float("nan"))
        rel = torch.sqrt(self.err2 / self.moments_orig[:, 2].clamp_min(1e-300))
        return {
            "rel_frob": torch.where(seen, rel, nan),
            "kurtosis_orig": torch.where(seen, self._kurtosis(self.moments_orig), nan),
            "kurtosis_recon": torch.where(seen, self._kurtosis(self.moments_recon), nan),
        }


class WeightVAE(L.LightningModule):
    """Transformer beta-VAE over windows of chunk tokens (see the module docstring).

    Args:
        chunk_size: values per chunk token c (linked from the DataModule).
        tokens_per_sample: tokens per window T (linked).
        num_layers: decoder blocks of the model family (linked; sizes the layer embedding).
        num_sources: number of source checkpoints (linked).
        tensors: the trained tensors, [{name, shape, layer, kind}] (linked; used by the codec).
        family: model_type of the source checkpoints (linked).
        layout: chunk layout, `flat` or `rows` (linked).
        normalization: `zscore` or `slog` (linked).
        slog_kappa: companding scale of `slog` (linked).
        latent_dim: latent size d per chunk token; compression ratio = chunk_size / latent_dim.
        d_model: transformer width D.
        n_heads: attention heads.
        encoder_layers: encoder blocks.
        decoder_layers: decoder blocks.
        ff_mult: MLP width multiplier of each block.
        dropout: dropout in the blocks.
        use_source_embedding: add a learned source-model embedding to the encoder tokens.
        loss: reconstruction loss, `mse` or `huber` (in normalised space).
        huber_delta: Huber threshold.
        ae_steps: stage-1 (beta = 0) steps at most.
        beta_max: final KL weight of stage 2.
        beta_warmup_steps: linear beta warm-up of stage 2.
        plateau_patience: end stage 1 early after this many steps without improvement (0 = off).
        plateau_min_delta: relative improvement that counts for the plateau test.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_warmup_steps: linear learning-rate warm-up steps.
        min_lr_ratio: cosine decay floor as a fraction of `lr` (over the run's estimated steps).
        output_weighting: weight each value's reconstruction error by its column's input second
            moment (needs `data.importance`, the file of `lsmerge importance`).
        importance_digest: calibration digest of the importance statistics (linked; checked when
            the codec is used with its statistics).
    """

    def __init__(
        self,
        chunk_size: int = 64,
        tokens_per_sample: int = 32,
        num_layers: int = 32,
        num_sources: int = 1,
        tensors: list[dict] | None = None,
        family: str | None = None,
        layout: chunking.Layout = "flat",
        normalization: chunking.Normalization = "zscore",
        slog_kappa: float = 2.0,
        latent_dim: int = 32,
        d_model: int = 128,
        n_heads: int = 4,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        ff_mult: int = 4,
        dropout: float = 0.0,
        use_source_embedding: bool = False,
        loss: Loss = "mse",
        huber_delta: float = 1.0,
        ae_steps: int = 500,
        beta_max: float = 1e-3,
        beta_warmup_steps: int = 500,
        plateau_patience: int = 0,
        plateau_min_delta: float = 0.01,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        lr_warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
        output_weighting: bool = False,
        importance_digest: str | None = None,
    ):
        super().__init__()
        chunking.check_positive(
            chunk_size=chunk_size, latent_dim=latent_dim, tokens_per_sample=tokens_per_sample, d_model=d_model, n_heads=n_heads
        )
        chunking.check_layout(layout)
        chunking.check_normalization(normalization)
        if loss not in LOSSES:
            from lsmerge.errors import LsMergeError

            raise LsMergeError(f"unknown loss {loss!r}; use one of {LOSSES}.")
        if d_model % n_heads:
            from lsmerge.errors import LsMergeError

            raise LsMergeError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}).")
        if output_weighting and not importance_digest:
            from lsmerge.errors import LsMergeError

            raise LsMergeError("model.output_weighting needs importance statistics: set data.importance to the file of "
                               "`lsmerge importance` (or model.output_weighting: false).")
        self.save_hyperparameters()
        self.tensors = list(tensors or [])
        self.tensor_index = {t["name"]: i for i, t in enumerate(self.tensors)}
        self.curriculum = BetaCurriculum(ae_steps, beta_max, beta_warmup_steps, plateau_patience, plateau_min_delta)

        n_src = num_sources if use_source_embedding else 0
        self.enc_in = nn.Linear(chunk_size, d_model)
        self.enc_cond = TokenConditioning(d_model, num_layers, len(KINDS), tokens_per_sample, n_src)
        self.encoder = Transformer(d_model, n_heads, encoder_layers, ff_mult, dropout)
        self.to_latent = nn.Linear(d_model, 2 * latent_dim)
        self.dec_in = nn.Linear(latent_dim, d_model)
        self.dec_cond = TokenConditioning(d_model, num_layers, len(KINDS), tokens_per_sample, 0)
        self.decoder = Transformer(d_model, n_heads, decoder_layers, ff_mult, dropout)
        self.dec_out = nn.Linear(d_model, chunk_size)

        n_ids = max(1, num_sources * max(1, len(self.tensors)))
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {"mse": MeanSquaredError(), "r2": R2Score(), "outlier_recall": OutlierRecall(), "tensorwise": TensorwiseStats(n_ids)}
                )
                for stage in ("val", "test")
            }
        )
        self.val_tensor_stats: dict[str, torch.Tensor] | None = None  # per table id, for the figures callback
        self.val_sample: tuple[torch.Tensor, torch.Tensor] | None = None  # (orig, recon) values for histograms

    # -- model -----------------------------------------------------------------------------------
    def encode(self, x, lengths, layer, kind, chunk_index, source=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, c), lengths (B, T), layer/kind/source (B,), chunk_index (B, T) -> mu, logvar (B, T, d)."""
        c = self.hparams.chunk_size
        x = x * chunking.value_mask(lengths, c).to(x.dtype)
        return self.encode_tokens(x, self.enc_cond(layer, kind, chunk_index, source), lengths > 0)

    def encode_tokens(self, x, cond, key_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, c) with padding values already zero, cond (B or 1, T, D) from `enc_cond`,
        key_mask (B, T) bool (True = real token; None = all real) -> mu, logvar (B, T, d)."""
        h = self.encoder(self.enc_in(x) + cond, key_mask)
        mu, logvar = self.to_latent(h).chunk(2, dim=-1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z, lengths, layer, kind, chunk_index) -> torch.Tensor:
        """z (B, T, d) -> x^ (B, T, c) in normalised space."""
        return self.decode_tokens(z, self.dec_cond(layer, kind, chunk_index), lengths > 0)

    def decode_tokens(self, z, cond, key_mask=None) -> torch.Tensor:
        """z (B, T, d), cond (B or 1, T, D) from `dec_cond`, key_mask as in `encode_tokens` -> x^ (B, T, c)."""
        return self.dec_out(self.decoder(self.dec_in(z) + cond, key_mask))

    def forward(self, batch: dict, sample: bool = False) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(batch["x"], batch["lengths"], batch["layer"], batch["kind"], batch["chunk_index"], batch.get("source"))
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        xhat = self.decode(z, batch["lengths"], batch["layer"], batch["kind"], batch["chunk_index"])
        return {"xhat": xhat, "mu": mu, "logvar": logvar}

    def losses(self, batch: dict, out: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction per real value, KL per real value) as float32 scalars."""
        c = self.hparams.chunk_size
        mask = chunking.value_mask(batch["lengths"], c).float()
        xhat, x = out["xhat"].float(), batch["x"].float()
        if self.hparams.loss == "huber":
            rho = F.huber_loss(xhat, x, reduction="none", delta=self.hparams.huber_delta)
        else:
            rho = (xhat - x).pow(2)
        if self.hparams.get("output_weighting"):
            rho = rho * batch["col_weight"].float()
        recon = (rho * mask).sum() / mask.sum().clamp_min(1)
        tok = (batch["lengths"] > 0).float()
        kl = (gaussian_kl(out["mu"].float(), out["logvar"].float()) * tok).sum() / (tok.sum().clamp_min(1) * c)
        return recon, kl

    # -- training --------------------------------------------------------------------------------
    def objective(self, batch: dict, step: int) -> dict:
        """The training loss of global step `step` (0-based): {loss, recon, kl} scalars and beta.

        The one definition of a training step's work, shared by `training_step` and the plain
        PyTorch loop of `scripts/bench_vae.py`."""
        beta = self.curriculum.beta(step)
        out = self(batch, sample=beta > 0)
        recon, kl = self.losses(batch, out)
        return {"loss": recon + beta * kl, "recon": recon, "kl": kl, "beta": beta}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        step = self.global_step
        o = self.objective(batch, step)
        loss, recon, kl, beta = o["loss"], o["recon"], o["kl"], o["beta"]
        bs = batch["x"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        if self._writes_logs(step):  # the rest only on the steps the logger writes (each self.log costs ~0.3 ms)
            self.log_dict(
                {"train/recon": recon, "train/kl": kl, "train/beta": beta, "train/stage": float(self.curriculum.stage(step))},
                batch_size=bs,
            )
            if self.trainer.optimizers:
                self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return loss

    def _writes_logs(self, step: int) -> bool:
        """True when Lightning writes the metrics of training step `step` to the logger
        (every `log_every_n_steps`-th step, counted from 1, one optimizer step per batch)."""
        if self._trainer is None:
            return False
        n = self.trainer.log_every_n_steps
        return n > 0 and ((step + 1) % n == 0 or self.trainer.fast_dev_run)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.curriculum.plateau_patience and self.curriculum.stage(self.global_step - 1) == 1:
            loss = outputs["loss"].detach().float()
            loss = self.trainer.strategy.reduce(loss, reduce_op="mean")  # same decision on every rank
            self.curriculum.update(self.global_step - 1, float(loss))

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2 and "cond" not in n]
        no_decay = [p for n, p in self.named_parameters() if not (p.dim() >= 2 and "cond" not in n)]
        fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay) or None  # one kernel, not a Python loop
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr,
            fused=fused,
        )
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        warm = max(0, hp.lr_warmup_steps)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if not math.isfinite(total) or total <= warm:
                return 1.0
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["beta_curriculum"] = self.curriculum.state_dict()
        checkpoint["rng_states"] = rng_states()  # a resumed fit draws what this one would have drawn next

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "beta_curriculum" in checkpoint:
            self.curriculum.load_state_dict(checkpoint["beta_curriculum"])
        if "rng_states" in checkpoint and self._trainer is not None and self.trainer.state.fn == "fit":
            restore_rng_states(checkpoint["rng_states"])  # before the training loader's first draw

    # -- evaluation ------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, stage: str) -> None:
        hp = self.hparams
        out = self(batch, sample=False)
        recon, kl = self.losses(batch, out)
        bs = batch["x"].shape[0]
        mask = chunking.value_mask(batch["lengths"], hp.chunk_size)
        xhat, x = out["xhat"].float(), batch["x"].float()
        m = self.metrics[stage]
        m["mse"].update(xhat[mask], x[mask])
        m["r2"].update(xhat[mask], x[mask])
        norm = batch["norm"][:, None, None, :]
        w = chunking.denormalize(x, norm, hp.normalization, hp.slog_kappa)
        what = chunking.denormalize(xhat, norm, hp.normalization, hp.slog_kappa)
        m["outlier_recall"].update(what, w, batch["threshold"][:, None, None], mask)
        m["tensorwise"].update(what, w, batch["tensor_id"], mask)
        self.log(f"{stage}/recon", recon, batch_size=bs, sync_dist=True)
        self.log(f"{stage}/kl", kl, batch_size=bs, sync_dist=True)
        self.log(f"{stage}/loss", recon + self.curriculum.beta(self.global_step) * kl, prog_bar=stage == "val", batch_size=bs, sync_dist=True)
        for name in ("mse", "r2", "outlier_recall"):
            self.log(f"{stage}/{name}", m[name], batch_size=bs)
        if stage == "val" and self.val_sample is None:
            keep = mask.reshape(-1)
            self.val_sample = (w.reshape(-1)[keep][:200_000].cpu(), what.reshape(-1)[keep][:200_000].cpu())

    def _eval_epoch_end(self, stage: str) -> None:
        tw = self.metrics[stage]["tensorwise"]
        stats = {k: v.detach().cpu() for k, v in tw.compute().items()}
        tw.reset()
        seen = ~torch.isnan(stats["rel_frob"])
        if seen.any():
            self.log(f"{stage}/rel_frob", stats["rel_frob"][seen].mean().float())
            self.log(f"{stage}/kurtosis_orig", stats["kurtosis_orig"][seen].mean().float())
            self.log(f"{stage}/kurtosis_recon", stats["kurtosis_recon"][seen].mean().float())
        if stage == "val":
            self.val_tensor_stats = stats

    def on_validation_epoch_start(self) -> None:
        self.val_sample = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

"""`lsmerge.models.weight_vae.WeightVAE`: overfits a tiny tensor set, bf16-mixed on CPU, metrics to the logger, bad settings."""

from __future__ import annotations

import pytest
import torch

from lsmerge.errors import LsMergeError
from tests.vae_helpers import cpu_trainer, tiny_datamodule, tiny_weight_vae


def test_tiny_vae_overfits(vae_llama, tmp_path):
    dm = tiny_datamodule(vae_llama, tmp_path)
    model = tiny_weight_vae(dm)
    trainer = cpu_trainer(tmp_path, max_steps=250, limit_val_batches=1.0, check_val_every_n_epoch=1000)
    trainer.fit(model, dm)
    out = trainer.validate(model, dm, verbose=False)[0]
    assert out["val/mse"] < 0.02, out
    assert out["val/r2"] > 0.98
    assert out["val/rel_frob"] < 0.15


def test_bf16_mixed_runs_on_cpu(vae_llama, tmp_path):
    dm = tiny_datamodule(vae_llama, tmp_path)
    model = tiny_weight_vae(dm, ae_steps=2, beta_max=0.01, beta_warmup_steps=1)
    trainer = cpu_trainer(tmp_path, max_steps=4, limit_val_batches=1, precision="bf16-mixed")
    trainer.fit(model, dm)
    out = trainer.validate(model, dm, verbose=False)[0]
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values()), out


def test_train_metrics_reach_the_logger(vae_llama, tmp_path):
    """recon / kl / beta / stage / lr are logged only on the steps the logger writes, and do get written."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    dm = tiny_datamodule(vae_llama, tmp_path)
    trainer = cpu_trainer(tmp_path, max_steps=6, limit_val_batches=0, log_every_n_steps=3,
                       logger=CSVLogger(str(tmp_path), name="csv"))
    trainer.fit(tiny_weight_vae(dm), dm)
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    written = {int(r["step"]) for r in rows if r.get("train/recon")}
    assert written == {2, 5}, rows
    assert all(r["train/lr"] and r["train/stage"] and r["train/beta"] for r in rows if r.get("train/recon"))


def test_bad_settings(vae_llama, tmp_path):
    dm = tiny_datamodule(vae_llama, tmp_path)
    with pytest.raises(LsMergeError, match="latent_dim"):
        tiny_weight_vae(dm, latent_dim=0)

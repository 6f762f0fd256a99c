"""Shared pieces of the weight-VAE tests: a datamodule over one tiny checkpoint, a small WeightVAE
sized to it, a quiet CPU trainer."""

from __future__ import annotations

import lightning as L
import torch

from lsmerge.data.weight_datamodule import WeightChunkDataModule
from lsmerge.models.weight_vae import WeightVAE

torch.set_num_threads(1)


def tiny_datamodule(tiny_dir, tmp_path, **kw):
    args = dict(checkpoints=[tiny_dir], kinds=["mlp_gate"], layers=[0], chunk_size=16, tokens_per_sample=8,
                batch_size=16, val_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    args.update(kw)
    return WeightChunkDataModule(**args)


def tiny_weight_vae(dm, **kw):
    args = dict(chunk_size=dm.chunk_size, tokens_per_sample=dm.tokens_per_sample, num_layers=dm.num_layers,
                num_sources=dm.num_sources, tensors=dm.tensors, family=dm.family, layout=dm.layout,
                normalization=dm.normalization, latent_dim=32, d_model=64, n_heads=4, encoder_layers=1,
                decoder_layers=1, ae_steps=1000, beta_max=0.0, lr=3e-3, lr_warmup_steps=5, weight_decay=0.0)
    args.update(kw)
    return WeightVAE(**args)


def cpu_trainer(tmp_path, **kw):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    args.update(kw)
    return L.Trainer(**args)

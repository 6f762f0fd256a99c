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


# -- output weighting (issue 13) ----------------------------------------------------------------
def test_output_weighted_loss_is_the_weighted_output_error():
    """recon = ||(W - W^) diag(sqrt h)||_F^2 / numel with h normalised to mean 1 (rows layout, padded chunks)."""
    from lsmerge.data import chunking
    from lsmerge.data.importance import chunk_column_weights, column_weights
    from lsmerge.models.weight_vae import WeightVAE

    g = torch.Generator().manual_seed(0)
    w, w_hat = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    h = torch.tensor([0.5, 4.0, 1.0, 0.0, 2.0, 9.0])
    c, n = 4, chunking.num_chunks((3, 6), 4, "rows")  # 2 chunks per row, the second half padding
    idx = torch.arange(8)  # one window of T = 8 tokens: 6 real chunks, 2 padding tokens
    x, xhat = torch.zeros(1, 8, c), torch.zeros(1, 8, c)
    x[0, :n], xhat[0, :n] = chunking.chunk(w, c, "rows"), chunking.chunk(w_hat, c, "rows")
    lengths = torch.zeros(1, 8, dtype=torch.int64)
    lengths[0, :n] = chunking.chunk_lengths((3, 6), c, "rows")
    hn = column_weights(h)
    batch = {"x": x, "lengths": lengths, "col_weight": chunk_column_weights(hn, (3, 6), c, "rows", idx)[None]}
    out = {"xhat": xhat, "mu": torch.zeros(1, 8, 2), "logvar": torch.zeros(1, 8, 2)}
    tensors = [{"name": "w", "shape": [3, 6], "layer": 0, "kind": "mlp_down"}]
    model = WeightVAE(chunk_size=c, tokens_per_sample=8, num_layers=1, tensors=tensors, layout="rows", latent_dim=2,
                      d_model=8, n_heads=2, output_weighting=True, importance_digest="d")
    want = float(((w - w_hat).double() @ torch.diag(hn.sqrt())).pow(2).sum() / w.numel())
    assert float(model.losses(batch, out)[0]) == pytest.approx(want, rel=1e-5)
    plain = WeightVAE(chunk_size=c, tokens_per_sample=8, num_layers=1, tensors=tensors, layout="rows", latent_dim=2,
                      d_model=8, n_heads=2)
    assert float(plain.losses(batch, out)[0]) == pytest.approx(float((w - w_hat).pow(2).mean()), rel=1e-5)
    assert float(plain.losses(batch, out)[0]) != pytest.approx(want, rel=1e-2)
    with pytest.raises(LsMergeError, match="data.importance"):
        WeightVAE(chunk_size=c, tokens_per_sample=8, num_layers=1, tensors=tensors, latent_dim=2, d_model=8, n_heads=2,
                  output_weighting=True)


def test_output_weighting_round_trips_through_lsmerge_fit(vae_llama, tmp_path, monkeypatch):
    """`lsmerge fit` with data.importance and model.output_weighting (rows layout): the batches carry the
    column weights and the checkpoint records the option and the calibration digest."""
    from pathlib import Path

    from lsmerge.cli import main
    from lsmerge.codecs.vae import read_vae_checkpoint
    from lsmerge.data.importance import ImportanceStats
    from lsmerge.io.store import open_checkpoint

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    store = open_checkpoint(vae_llama)
    g = torch.Generator().manual_seed(1)
    stats = ImportanceStats({n: torch.rand(store.shape(n)[1], generator=g) + 0.1 for n in store.names if ".mlp." in n},
                            "ab" * 32, 10, "tiny")
    stats.save(tmp_path / "importance.safetensors")
    main(["fit", "--config", "configs/vae/tiny.yaml", f"--data.checkpoints=[{vae_llama}]", f"--data.cache_dir={tmp_path}/c",
          "--data.layout=rows", f"--data.importance={tmp_path / 'importance.safetensors'}", "--model.output_weighting=true",
          "--trainer.max_steps=3", "--trainer.val_check_interval=3", f"--trainer.logger.init_args.save_dir={tmp_path}/tb",
          f"--trainer.callbacks.init_args.dirpath={tmp_path}/run"])
    hp = read_vae_checkpoint(tmp_path / "run" / "last.ckpt")["hyper_parameters"]
    assert hp["output_weighting"] is True and hp["importance_digest"] == stats.digest and hp["layout"] == "rows"
    from lsmerge.codecs.load import load_codec
    from lsmerge.codecs.side_channel import SideChannelCodec

    with pytest.raises(LsMergeError, match="trained with importance weighting.*does not exist"):
        load_codec(str(tmp_path / "run" / "last.ckpt"))  # its statistics are not beside it
    codec = load_codec(str(tmp_path / "run" / "last.ckpt"), importance=str(tmp_path / "importance.safetensors"), side_channel=0.01)
    assert isinstance(codec, SideChannelCodec) and codec.importance.digest == stats.digest
    name = "model.layers.0.mlp.down_proj.weight"
    w = store.get(name).float()
    out = codec.decode(name, codec.encode(name, w))
    idx = codec.encode(name, w).side[0]
    assert torch.equal(out.view(-1)[idx], w.view(-1)[idx])
    from lsmerge.data.weight_datamodule import WeightChunkDataModule

    dm = WeightChunkDataModule(checkpoints=[vae_llama], kinds=["mlp"], chunk_size=32, layout="rows", tokens_per_sample=16,
                               val_fraction=0.0, cache_dir=str(tmp_path / "c"), importance=str(tmp_path / "importance.safetensors"))
    dm.prepare_data()
    dm.setup("fit")
    item = dm._train[0]
    assert item["col_weight"].shape == item["x"].shape and float(item["col_weight"].max()) > 1.0

"""WeightChunkDataModule, WeightVAE, curriculum, resume, CLI fit (and DDP), export, errors."""

import json
import os
import shutil
import subprocess
import sys

import lightning as L
import pytest
import torch

from conftest import make_tiny_llama
from lsmerge.models.curriculum import BetaCurriculum
from lsmerge.codecs.vae import VAECodec, load_weight_vae
from lsmerge.data.weight_datamodule import WeightChunkDataModule
from lsmerge.errors import LsMergeError
from lsmerge.models.weight_vae import WeightVAE

torch.set_num_threads(1)


@pytest.fixture
def tiny_dir(vae_llama):
    return vae_llama


def _dm(tiny_dir, tmp_path, **kw):
    args = dict(checkpoints=[tiny_dir], kinds=["mlp_gate"], layers=[0], chunk_size=16, tokens_per_sample=8,
                batch_size=16, val_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    args.update(kw)
    return WeightChunkDataModule(**args)


def _model(dm, **kw):
    args = dict(chunk_size=dm.chunk_size, tokens_per_sample=dm.tokens_per_sample, num_layers=dm.num_layers,
                num_sources=dm.num_sources, tensors=dm.tensors, family=dm.family, layout=dm.layout,
                normalization=dm.normalization, latent_dim=32, d_model=64, n_heads=4, encoder_layers=1,
                decoder_layers=1, ae_steps=1000, beta_max=0.0, lr=3e-3, lr_warmup_steps=5, weight_decay=0.0)
    args.update(kw)
    return WeightVAE(**args)


def _trainer(tmp_path, **kw):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    args.update(kw)
    return L.Trainer(**args)


def test_datamodule_samples_and_split(tiny_dir, tmp_path):
    dm = _dm(tiny_dir, tmp_path, kinds=["mlp"], layers=None, val_fraction=0.25, tokens_per_sample=10, num_workers=1)
    assert dm.num_layers == 2 and dm.chunk_size == 16 and len(dm.tensors) == 6  # sizes exist before setup()
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["x"].shape == (16, 10, 16) and b["lengths"].shape == (16, 10)
    assert set(b) >= {"layer", "kind", "source", "chunk_index", "norm", "threshold", "tensor_id"}
    train = {tuple(r) for r in dm._train.windows.tolist()}
    val = {tuple(r) for r in dm._val.windows.tolist()}
    assert train and val and not train & val
    again = _dm(tiny_dir, tmp_path, kinds=["mlp"], layers=None, val_fraction=0.25, tokens_per_sample=10)
    again.setup("fit")
    assert {tuple(r) for r in again._val.windows.tolist()} == val  # deterministic split, cache reused
    # the cached chunks are the normalised tensor, exactly recoverable
    from lsmerge.data import chunking
    from lsmerge.io.store import open_checkpoint

    rec = dm.table[0]
    import numpy as np

    arr = np.load(dm.cache_paths[0], mmap_mode="r")
    chunks = torch.from_numpy(np.array(arr[rec["offset"] : rec["offset"] + rec["n_chunks"]]))
    w = open_checkpoint(tiny_dir).get(rec["name"])
    back = chunking.tokens_to_tensor(chunks, rec["shape"], torch.tensor(rec["norm"], dtype=torch.float64))
    torch.testing.assert_close(back, w, rtol=1e-5, atol=1e-7)


def test_tiny_vae_overfits(tiny_dir, tmp_path):
    dm = _dm(tiny_dir, tmp_path)
    model = _model(dm)
    trainer = _trainer(tmp_path, max_steps=250, limit_val_batches=1.0, check_val_every_n_epoch=1000)
    trainer.fit(model, dm)
    out = trainer.validate(model, dm, verbose=False)[0]
    assert out["val/mse"] < 0.02, out
    assert out["val/r2"] > 0.98
    assert out["val/rel_frob"] < 0.15


def test_curriculum_schedule_and_plateau():
    c = BetaCurriculum(ae_steps=10, beta_max=0.5, beta_warmup_steps=4)
    assert [c.beta(s) for s in (0, 9)] == [0.0, 0.0] and c.stage(9) == 1 and c.stage(10) == 2
    assert [c.beta(s) for s in (10, 11, 13, 20)] == [0.125, 0.25, 0.5, 0.5]
    p = BetaCurriculum(ae_steps=100, beta_max=1.0, beta_warmup_steps=0, plateau_patience=3, plateau_min_delta=0.01, ema=0.0)
    for step, loss in enumerate([1.0, 0.5, 0.5, 0.5, 0.5]):
        p.update(step, loss)
    assert p.switch_step == 5 and p.stage(4) == 1 and p.beta(5) == 1.0
    q = BetaCurriculum(ae_steps=100, beta_max=1.0, beta_warmup_steps=0, plateau_patience=3)
    q.load_state_dict(p.state_dict())
    assert q.switch_step == 5 and q.beta(5) == p.beta(5)


def test_training_switches_and_resume_continues(tiny_dir, tmp_path):
    dm = _dm(tiny_dir, tmp_path)
    model = _model(dm, ae_steps=6, beta_max=0.1, beta_warmup_steps=10, plateau_patience=2, plateau_min_delta=0.5)
    trainer = _trainer(tmp_path, max_steps=8, limit_val_batches=1)
    trainer.fit(model, dm)
    ckpt = str(tmp_path / "a.ckpt")
    trainer.save_checkpoint(ckpt)
    switch = model.curriculum.switch_step
    assert switch is not None and switch <= 6  # a plateau can end stage 1 before ae_steps
    assert model.curriculum.stage(7) == 2
    resumed = _model(dm, ae_steps=6, beta_max=0.1, beta_warmup_steps=10, plateau_patience=2, plateau_min_delta=0.5)
    t2 = _trainer(tmp_path, max_steps=12, limit_val_batches=1)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.global_step, pl_module.curriculum.beta(trainer.global_step)))

    t2.callbacks.append(Spy())
    t2.fit(resumed, dm, ckpt_path=ckpt)
    assert seen[0][0] == 8 and t2.global_step == 12
    assert resumed.curriculum.switch_step == switch
    assert seen[0][1] == pytest.approx(0.1 * min(1, (8 - switch + 1) / 10))


def test_cli_fit_export_and_codec(tiny_dir, tmp_path):
    from lsmerge.cli import main
    from lsmerge.export import export

    out = tmp_path / "run"
    main(["fit", "--config", "configs/vae/tiny.yaml", f"--data.checkpoints=[{tiny_dir}]", f"--data.cache_dir={tmp_path}/c",
          "--trainer.max_steps=4", "--trainer.val_check_interval=4", f"--trainer.logger.init_args.save_dir={out}",
          f"--trainer.callbacks.init_args.dirpath={out}"])
    ckpt = out / "last.ckpt"
    assert ckpt.exists() and (out / "tb" / "version_0" / "config.yaml").exists()
    codec = VAECodec.from_checkpoint(ckpt)  # torch.load(weights_only=True) inside
    assert codec.covers("model.layers.1.mlp.down_proj.weight") and not codec.covers("model.embed_tokens.weight")
    from lsmerge.io.store import open_checkpoint

    w = open_checkpoint(tiny_dir).get("model.layers.0.mlp.up_proj.weight")
    lat = codec.encode("model.layers.0.mlp.up_proj.weight", w)
    assert lat.z.shape == (w.numel() // 32, 32) and lat.logvar.shape == lat.z.shape and lat.norm.shape == (2,)
    assert codec.decode("model.layers.0.mlp.up_proj.weight", lat).shape == w.shape
    assert len(codec.sample("model.layers.0.mlp.up_proj.weight", w, 2, 0.5)) == 2

    dst = tmp_path / "exported"
    export(vae=str(ckpt), model=tiny_dir, out=str(dst))
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(dst)
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert torch.equal(m.model.embed_tokens.weight, ref.model.embed_tokens.weight)
    assert not torch.equal(m.model.layers[0].mlp.up_proj.weight, ref.model.layers[0].mlp.up_proj.weight)

    # a model with other shapes is refused, naming the mismatch
    other = tmp_path / "other"
    make_tiny_llama(other, seed=None, hidden=48, intermediate_size=128)
    with pytest.raises(LsMergeError, match="mlp.*shape"):
        export(vae=str(ckpt), model=str(other), out=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_bad_input(tiny_dir, tmp_path):
    with pytest.raises(LsMergeError, match="matches no tensor"):
        _dm(tiny_dir, tmp_path, pattern="no_such_tensor")
    with pytest.raises(LsMergeError, match="chunk_size"):
        _dm(tiny_dir, tmp_path, chunk_size=0)
    with pytest.raises(LsMergeError, match="out of range"):
        _dm(tiny_dir, tmp_path, layers=[5])
    mixed = tmp_path / "mistral"
    shutil.copytree(tiny_dir, mixed)
    cfg = json.loads((mixed / "config.json").read_text())
    cfg["model_type"] = "mistral"
    (mixed / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LsMergeError, match="mix families"):
        _dm(tiny_dir, tmp_path, checkpoints=[tiny_dir, str(mixed)])
    dm = _dm(tiny_dir, tmp_path)
    with pytest.raises(LsMergeError, match="latent_dim"):
        _model(dm, latent_dim=0)


def test_ddp_two_cpu_processes(tiny_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "lsmerge.cli", "fit", "--config", "configs/vae/tiny.yaml",
           f"--data.checkpoints=[{tiny_dir}]", f"--data.cache_dir={tmp_path}/c", "--trainer.max_steps=2",
           "--trainer.val_check_interval=2", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu",
           f"--trainer.logger.init_args.save_dir={out}", f"--trainer.callbacks.init_args.dirpath={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(out / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2


def test_bf16_mixed_runs_on_cpu(tiny_dir, tmp_path):
    dm = _dm(tiny_dir, tmp_path)
    model = _model(dm, ae_steps=2, beta_max=0.01, beta_warmup_steps=1)
    trainer = _trainer(tmp_path, max_steps=4, limit_val_batches=1, precision="bf16-mixed")
    trainer.fit(model, dm)
    out = trainer.validate(model, dm, verbose=False)[0]
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values()), out


def _straightforward_codec(model, spec, w):
    """Reference path: all windows of the tensor through `model.encode` / `model.decode` at once."""
    from lsmerge.data import chunking
    from lsmerge.io.archmap import KINDS

    hp = model.hparams
    t = hp.tokens_per_sample
    chunks, lengths, norm = chunking.tensor_to_tokens(w, hp.chunk_size, hp.layout, hp.normalization, hp.slog_kappa)
    n = chunks.shape[0]
    x, _ = chunking.to_windows(chunks, t)
    lw = chunking.to_windows(lengths[:, None].float(), t)[0][..., 0].long()
    n_win = x.shape[0]
    ci = torch.arange(n_win * t).view(n_win, t)
    layer = torch.full((n_win,), spec["layer"])
    kind = torch.full((n_win,), KINDS.index(spec["kind"]))
    with torch.no_grad():
        mu, logvar = model.encode(x, lw, layer, kind, ci)
        xhat = model.decode(mu, lw, layer, kind, ci)
    rec = chunking.tokens_to_tensor(chunking.from_windows(xhat, n), w.shape, norm, hp.layout, hp.normalization, hp.slog_kappa)
    return chunking.from_windows(mu, n), chunking.from_windows(logvar, n), rec


@pytest.mark.parametrize("layout", ["flat", "rows"])
def test_codec_matches_straightforward_path(tiny_dir, tmp_path, layout):
    """The batched codec (inference mode, cached conditioning, unmasked full batches) gives the
    outputs of running every window through the model's own encode / decode."""
    dm = _dm(tiny_dir, tmp_path, kinds=["mlp"], layers=None, layout=layout, chunk_size=24, tokens_per_sample=5,
             normalization="slog")
    torch.manual_seed(1)
    model = _model(dm, latent_dim=8, n_heads=2).eval()
    from lsmerge.io.store import open_checkpoint

    store = open_checkpoint(tiny_dir)
    for batch_windows in (3, 1000):  # several batches with a masked last window; one batch
        codec = VAECodec(model, batch_windows=batch_windows)
        for spec in model.tensors:
            w = store.get(spec["name"])
            z, logvar, rec = _straightforward_codec(model, spec, w)
            lat = codec.encode(spec["name"], w)
            torch.testing.assert_close(lat.z, z, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(lat.logvar, logvar, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(codec.decode(spec["name"], lat), rec, rtol=1e-5, atol=1e-6)
            lat.z.add_(0.0)  # latents are ordinary tensors that callers may edit in place


def test_train_metrics_reach_the_logger(tiny_dir, tmp_path):
    """recon / kl / beta / stage / lr are logged only on the steps the logger writes, and do get written."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    dm = _dm(tiny_dir, tmp_path)
    trainer = _trainer(tmp_path, max_steps=6, limit_val_batches=0, log_every_n_steps=3,
                       logger=CSVLogger(str(tmp_path), name="csv"))
    trainer.fit(_model(dm), dm)
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    written = {int(r["step"]) for r in rows if r.get("train/recon")}
    assert written == {2, 5}, rows
    assert all(r["train/lr"] and r["train/stage"] and r["train/beta"] for r in rows if r.get("train/recon"))

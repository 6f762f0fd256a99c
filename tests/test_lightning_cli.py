"""`lsmerge fit` (`lsmerge.lightning_cli`): the shipped tiny config trains and writes its checkpoint and config; DDP on two CPU processes."""

from __future__ import annotations

import os
import subprocess
import sys

import torch


def test_ddp_two_cpu_processes(vae_llama, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "lsmerge.cli", "fit", "--config", "configs/vae/tiny.yaml",
           f"--data.checkpoints=[{vae_llama}]", f"--data.cache_dir={tmp_path}/c", "--trainer.max_steps=2",
           "--trainer.val_check_interval=2", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu",
           f"--trainer.logger.init_args.save_dir={out}", f"--trainer.callbacks.init_args.dirpath={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(out / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2


def test_cli_fit_writes_checkpoint_and_config(vae_fit_run):
    ckpt = vae_fit_run / "last.ckpt"
    assert ckpt.exists() and (vae_fit_run / "tb" / "version_0" / "config.yaml").exists()

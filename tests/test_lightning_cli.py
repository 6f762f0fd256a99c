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
           f"--trainer.logger.init_args.save_dir={tmp_path}/tb", f"--trainer.callbacks.init_args.dirpath={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(out / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2


def test_cli_fit_writes_checkpoint_and_config(vae_fit_run):
    ckpt = vae_fit_run / "last.ckpt"
    assert ckpt.exists() and (vae_fit_run.parent / "tb" / "tiny" / "version_0" / "config.yaml").exists()


# -- --ckpt_path, checkpoint folders -------------------------------------------------------------
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.ckpt_helpers import EXPECTED, bad_checkpoint, sentinel_path  # noqa: E402

CONFIG = str(Path("configs/vae/tiny.yaml").resolve())


def _fit_args(vae_llama, root: Path, *extra: str, command: str = "fit") -> list[str]:
    return [command, "--config", CONFIG, f"--data.checkpoints=[{vae_llama}]", f"--data.cache_dir={root}/cache",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", f"--trainer.logger.init_args.save_dir={root}/tb",
            f"--trainer.callbacks.init_args.dirpath={root}/run", *extra]


def _refused(args, capsys, monkeypatch, cwd: Path) -> str:
    from lsmerge.cli import main

    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 1
    return capsys.readouterr().err


@pytest.mark.parametrize("command", ["fit", "validate"])
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_bad_ckpt_path_is_one_error_before_anything_is_made(kind, command, vae_llama, vae_fit_run, tmp_path, capsys,
                                                            monkeypatch):
    ckpt = bad_checkpoint(kind, tmp_path, good=vae_fit_run / "last.ckpt")
    root = tmp_path / "out"
    err = _refused(_fit_args(vae_llama, root, f"--ckpt_path={ckpt}", command=command), capsys, monkeypatch, tmp_path / "cwd")
    assert EXPECTED[kind] in err and "Traceback" not in err
    assert not root.exists() and not any((tmp_path / "cwd").iterdir())  # no cache, log or checkpoint folder
    assert not sentinel_path(tmp_path).exists()


def test_weights_only_false_is_refused(vae_llama, vae_fit_run, tmp_path, capsys, monkeypatch):
    root = tmp_path / "out"
    err = _refused(_fit_args(vae_llama, root, f"--ckpt_path={vae_fit_run / 'last.ckpt'}", "--weights_only=false"),
                   capsys, monkeypatch, tmp_path / "cwd")
    assert "weights_only=True only" in err and not root.exists()


def test_fit_into_a_folder_with_checkpoints_is_refused_then_overwritten(vae_llama, vae_fit_run, tmp_path, capsys,
                                                                        monkeypatch):
    from lsmerge.cli import main

    root = tmp_path / "out"
    (root / "run").mkdir(parents=True)
    old = root / "run" / "last.ckpt"
    shutil.copy(vae_fit_run / "last.ckpt", old)
    before = old.read_bytes()
    err = _refused(_fit_args(vae_llama, root), capsys, monkeypatch, tmp_path / "cwd")
    assert "already holds another run's checkpoints (last.ckpt)" in err and "--overwrite true" in err
    assert sorted(p.name for p in root.rglob("*")) == ["last.ckpt", "run"] and old.read_bytes() == before
    main(_fit_args(vae_llama, root, "--overwrite=true", "--trainer.logger=false"))
    assert sorted(p.name for p in (root / "run").glob("*.ckpt")) == ["last.ckpt", "step2.ckpt"]  # no last-v1.ckpt
    assert torch.load(old, weights_only=True)["global_step"] == 2


def test_fit_resumes_from_a_checkpoint(vae_llama, vae_fit_run, tmp_path, monkeypatch):
    """`--ckpt_path` resumes (weights-only load) into the folder that holds it, and continues the step count."""
    from lsmerge.cli import main

    root = tmp_path / "out"
    shutil.copytree(vae_fit_run, root / "run")
    monkeypatch.chdir(tmp_path)
    main(_fit_args(vae_llama, root, "--trainer.max_steps=6", f"--ckpt_path={root / 'run' / 'last.ckpt'}"))
    ckpt = torch.load(root / "run" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6 and "rng_states" in ckpt and "beta_curriculum" in ckpt
    assert not list((root / "run").glob("last-v*.ckpt"))


def test_overwrite_is_in_fit_help(capsys):
    from lsmerge.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "--overwrite" in capsys.readouterr().out

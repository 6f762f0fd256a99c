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

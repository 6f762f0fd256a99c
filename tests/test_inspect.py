"""`lsmerge inspect` (`lsmerge.inspect`): tensor statistics, the command's table / plot / JSON, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from lsmerge.cli import main
from lsmerge.inspect import collect_stats, tensor_stats


def test_tensor_stats_against_scipy():
    from scipy.stats import kurtosis

    x = torch.distributions.StudentT(3.0).sample((20000,))
    s = tensor_stats(x)
    assert s["kurtosis"] == pytest.approx(kurtosis(x.numpy().astype("float64"), fisher=False), rel=1e-9)
    assert s["absmax"] == pytest.approx(x.abs().max().item())
    g = tensor_stats(torch.randn(200000, generator=torch.Generator().manual_seed(0)))
    assert g["kurtosis"] == pytest.approx(3.0, abs=0.05)
    assert g["frac_beyond_3std"] == pytest.approx(0.0027, abs=0.001)


def test_inspect_command_table_plot_and_json(tiny_llama, tmp_path, capsys):
    plot, out = tmp_path / "k.png", tmp_path / "stats.json"
    main(["inspect", "--model", str(tiny_llama), "--plot", str(plot), "--out", str(out)])
    text = capsys.readouterr().out
    assert "mlp_down" in text and "kurtosis by kind" in text
    assert plot.stat().st_size > 1000
    rows = json.loads(out.read_text())
    assert {r["kind"] for r in rows} >= {"attn_q", "mlp_up", "norm", "embed", "lm_head"}
    assert all(r["layer"] in (None, 0, 1) for r in rows)


def test_inspect_kinds_filter(tiny_llama):
    rows = collect_stats(str(tiny_llama), kinds=["qkv"])
    assert {r.kind for r in rows} == {"attn_q", "attn_k", "attn_v"}


def test_inspect_bad_input_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["inspect", "--model", str(tmp_path / "missing")])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "unknown model" in err and "Traceback" not in err

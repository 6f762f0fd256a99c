"""The noise reference (issue 13): known perturbations of weight tensors (pure functions) and
`lsmerge perturb`, which writes them as a checkpoint for the results plan's reference rows."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_llama
from lsmerge.errors import LsMergeError
from lsmerge.evaluate.noise_reference import int4_groups, int8_rows, perturbation, relative_errors
from lsmerge.perturb import perturb


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("kind", ["iid", "prop"])
@pytest.mark.parametrize("level", [0.01, 0.1])
def test_noise_has_exactly_the_asked_relative_error_per_tensor(kind, level):
    w = torch.randn(48, 40, generator=torch.Generator().manual_seed(0))
    fn = perturbation(kind, level, seed=3)
    out = fn("layers.0.mlp.up_proj.weight", w)
    assert _rel(out, w) == pytest.approx(level, rel=1e-5)
    assert torch.equal(out, fn("layers.0.mlp.up_proj.weight", w))  # seeded by (seed, name)
    assert not torch.equal(out, fn("layers.1.mlp.up_proj.weight", w))  # another name, other noise
    assert not torch.equal(out, perturbation(kind, level, seed=4)("layers.0.mlp.up_proj.weight", w))


def test_proportional_noise_leaves_zeros_and_keep_top_leaves_the_largest_exact():
    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    w[0, :5] = 0
    assert torch.equal(perturbation("prop", 0.05)("x", w)[0, :5], torch.zeros(5))
    out = perturbation("iid", 0.05, keep_top=0.01)("x", w)
    top = w.abs().flatten().topk(math.ceil(0.01 * w.numel())).indices
    assert torch.equal(out.flatten()[top], w.flatten()[top]) and not torch.equal(out, w)


def test_roundings_are_symmetric_round_to_nearest():
    w = torch.tensor([[1.0, -0.5, 0.26, 0.0], [2.0, 1.0, -2.0, 0.01]])
    q8 = int8_rows(w)
    assert torch.equal(q8[0], torch.round(w[0] * 127) / 127) and q8[1, 0] == 2.0
    q4 = int4_groups(w, group=2)  # groups [1, -0.5], [0.26, 0], [2, 1], [-2, 0.01]
    s = torch.tensor([[1 / 7, 0.26 / 7], [2 / 7, 2 / 7]]).repeat_interleave(2, dim=1)
    assert torch.allclose(q4, torch.round(w / s) * s)
    r = torch.randn(3, 70, generator=torch.Generator().manual_seed(2))
    q = int4_groups(r, 64)  # a ragged last group of 6
    assert q.shape == (3, 70)
    assert all(len(torch.unique(q[i, :64])) <= 15 and len(torch.unique(q[i, 64:])) <= 6 for i in range(3))


def test_relative_errors_global_and_output_weighted():
    w = torch.ones(2, 3)
    new = w.clone()
    new[:, 0] += 1.0  # error only in column 0
    h = torch.tensor([0.0, 1.0, 1.0])
    out = relative_errors([("a", w, new, h)])
    assert out["relative_error"] == pytest.approx(math.sqrt(2 / 6))
    assert out["output_weighted_error"] == 0.0  # the changed column sees no input
    assert relative_errors([("a", w, new, None)])["output_weighted_error"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (("gauss", 0.1), "unknown perturbation 'gauss'"),
        (("iid", None), "needs a relative error level"),
        (("iid", -0.1), "needs a relative error level"),
        (("prop", float("nan")), "needs a relative error level"),
        (("int8", 0.1), "takes no --level"),
    ],
)
def test_bad_perturbations_are_one_clear_error(args, message):
    with pytest.raises(LsMergeError, match=message):
        perturbation(*args)


def test_perturb_command_writes_a_checkpoint_with_only_the_selected_tensors_changed(tmp_path):
    src = tmp_path / "base"
    make_tiny_llama(src, tokenizer=True)
    before = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    out = perturb(model=str(src), out=str(tmp_path / "noisy"), perturbation="iid", level=0.05, seed=1)
    a, b = load_file(src / "model.safetensors"), load_file(f"{out}/model.safetensors")
    assert set(a) == set(b)
    changed = {n for n in a if not torch.equal(a[n], b[n])}
    assert changed == {n for n in a if ".mlp." in n} and changed
    for n in changed:
        assert _rel(b[n], a[n]) == pytest.approx(0.05, rel=1e-3) and b[n].dtype == a[n].dtype
    assert (tmp_path / "noisy" / "config.json").is_file() and (tmp_path / "noisy" / "tokenizer.json").is_file()
    # attention only, int4: the MLP is copied
    out2 = perturb(model=str(src), out=str(tmp_path / "q4"), perturbation="int4", kinds=["attn"])
    c = load_file(f"{out2}/model.safetensors")
    assert all(torch.equal(a[n], c[n]) == (".self_attn." not in n) for n in a)
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before  # the input is never modified


def test_perturb_refuses_bad_input_before_writing(tmp_path):
    src = tmp_path / "base"
    make_tiny_llama(src)  # Llama tiny: untied, no pos_embed
    for kw, message in [({"perturbation": "iid"}, "needs a relative error level"),
                        ({"perturbation": "int8", "kinds": ["pos_embed"]}, "no floating-point tensors of kinds"),
                        ({"perturbation": "int8", "kinds": ["mlps"]}, "unknown module kind 'mlps'"),
                        ({"perturbation": "int4", "group": 0}, "group size")]:
        with pytest.raises(LsMergeError, match=message):
            perturb(model=str(src), out=str(tmp_path / "o"), **kw)
        assert not (tmp_path / "o").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(LsMergeError, match="overwrite"):
        perturb(model=str(src), out=str(tmp_path / "full"), perturbation="int8")
    assert (tmp_path / "full" / "x").read_text() == "keep"

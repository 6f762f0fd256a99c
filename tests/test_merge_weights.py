"""Weight-space merges: formulas on hand-made tensors, and the command on tiny Llamas."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lsmerge.errors import LsMergeError
from lsmerge.io.store import open_checkpoint
from lsmerge.merge.weight import dare_drop, elect_sign, linear_merge, regmean_solve, slerp_merge, task_arithmetic_merge, ties_merge, trim_to_density
from lsmerge.merge.weight.command import merge_weights
from lsmerge.merge.weight.gram import Calibration
from lsmerge.merge.weight.ties import disjoint_mean

# -- formulas -------------------------------------------------------------------------------


def test_linear_weighted_and_normalised():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    assert torch.allclose(linear_merge([a, b], [0.75, 0.25]), torch.tensor([1.5, 3.0]))
    assert torch.allclose(linear_merge([a, b], [3.0, 1.0]), torch.tensor([1.5, 3.0]))
    assert torch.allclose(linear_merge([a, b], [1.0, 1.0], normalize=False), torch.tensor([4.0, 8.0]))


def test_slerp_orthogonal_and_endpoints():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp_merge(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5)] * 2), atol=1e-7)
    assert torch.allclose(slerp_merge(a, b, 0.0), a) and torch.allclose(slerp_merge(a, b, 1.0), b, atol=1e-7)
    # angle 90 deg: at t = 1/3 the result is at 30 deg, norm preserved
    third = slerp_merge(a, b, 1 / 3)
    assert torch.allclose(third, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]), atol=1e-6)


def test_slerp_falls_back_to_lerp_when_colinear_and_computes_in_float32():
    a = torch.tensor([1.0, 2.0, 3.0])
    b = 2 * a + 1e-6
    assert torch.allclose(slerp_merge(a, b, 0.25), 0.75 * a + 0.25 * b)
    assert torch.allclose(slerp_merge(a, -a, 0.5), torch.zeros(3))  # antipodal -> lerp
    assert torch.allclose(slerp_merge(torch.zeros(3), a, 0.5), 0.5 * a)  # no direction -> lerp
    x = torch.randn(64, dtype=torch.bfloat16)
    y = torch.randn(64, dtype=torch.bfloat16)
    out = slerp_merge(x, y, 0.3)
    assert out.dtype == torch.float32
    assert torch.allclose(out, slerp_merge(x.float(), y.float(), 0.3))


def test_task_arithmetic():
    base = torch.tensor([1.0, 1.0])
    x1, x2 = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])
    out = task_arithmetic_merge(base, [x1, x2], [1.0, 0.5], lam=2.0)
    assert torch.allclose(out, base + 2.0 * (1.0 * (x1 - base) + 0.5 * (x2 - base)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_trim_keeps_what_an_argsort_keeps_ties_and_signs_included(dtype):
    """The trim equals mergekit's magnitude sparsification bit for bit: |x| ranked in float32
    by `argsort(descending=True)[:k]` (an unstable sort: among entries that tie at the cut it
    keeps the kernel's choice, not the lowest indices), then `x * mask` (dropped -> +-0)."""
    g = torch.Generator().manual_seed(0)
    x = ((torch.randn(200_000, generator=g) * 50).round() / 1000).to(dtype)  # many ties
    k = int(0.37 * x.numel())
    v = x.abs().float().kthvalue(x.numel() - k + 1).values
    assert int((x.abs().float() == v).sum()) > 1 and int((x.abs().float() > v).sum()) < k  # a tie at the cut
    mask = torch.zeros_like(x)
    mask[torch.argsort(x.abs().float(), descending=True)[:k]] = 1
    want = x * mask
    got = trim_to_density(x, 0.37, tie_break="mergekit")
    assert torch.equal(got, want) and torch.equal(torch.signbit(got), torch.signbit(want))
    assert torch.equal(x, ((torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 50).round() / 1000).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trim_index_tie_break_keeps_the_lowest_indices_among_ties(dtype):
    """Default tie_break "index": everything above the cut value, then the tied entries of
    lowest flat index until exactly k are kept; dropped entries are x * 0 (signs kept)."""
    g = torch.Generator().manual_seed(3)
    x = ((torch.randn(3, 70_001, generator=g) * 50).round() / 1000).to(dtype)
    for density in (0.01, 0.37, 0.8):
        k = int(density * x.numel())
        m = x.abs().float().flatten()
        want_mask = torch.zeros(x.numel(), dtype=torch.bool)
        order = sorted(range(x.numel()), key=lambda i: (-float(m[i]), i))  # stable: value, then index
        want_mask[torch.tensor(order[:k])] = True
        want = x * want_mask.view_as(x).to(dtype)
        got = trim_to_density(x, density)
        assert int((got != 0).sum()) <= k and torch.equal(got, want), density
        assert torch.equal(torch.signbit(got), torch.signbit(want))
        assert torch.equal(got, trim_to_density(x, density, tie_break="index"))
    with pytest.raises(ValueError, match="tie_break"):
        trim_to_density(x, 0.37, tie_break="random")


def test_kth_largest_is_exact_without_a_sort():
    from lsmerge.merge.weight.ties import SAMPLE, kth_largest

    n = 5 * SAMPLE + 123
    g = torch.Generator().manual_seed(1)
    cases = {
        "normal": torch.randn(n, generator=g).abs(),
        "ascending": torch.arange(n, dtype=torch.float32),
        "periodic": (torch.arange(n) % 97).float(),  # strided sample sees a biased subset
        "constant": torch.full((n,), 0.25),
        "mostly zero": torch.randn(n, generator=g).abs() * (torch.rand(n, generator=g) < 0.01),
    }
    for name, values in cases.items():
        for k in (1, 7, n // 3, n // 2, n - 1, n):
            assert kth_largest(values, k) == float(values.kthvalue(n - k + 1).values), (name, k)


@pytest.mark.parametrize("kind", ["continuous", "sparse"])
def test_trim_without_ties_at_the_cut_keeps_what_an_argsort_keeps(kind):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300_000, generator=g)
    if kind == "sparse":
        x = x * (torch.rand(x.shape, generator=g) < 0.2)  # the cut falls among zeros
    for density in (0.05, 0.5, 0.9):
        k = int(density * x.numel())
        mask = torch.zeros_like(x)
        mask[torch.argsort(x.abs(), descending=True)[:k]] = 1
        for tie_break in ("index", "mergekit"):
            got = trim_to_density(x, density, tie_break=tie_break)
            assert torch.equal(got, x * mask) and torch.equal(torch.signbit(got), torch.signbit(x * mask))


def test_ties_trim_elect_disjoint_mean_by_hand():
    base = torch.zeros(4)
    # task vectors:  model 0: [ 3, -1, 0.1,  2 ]   model 1: [ -1, -2, 0.2, -5 ]   model 2: [ -1, 4, -0.3, 1 ]
    xs = [torch.tensor([3.0, -1.0, 0.1, 2.0]), torch.tensor([-1.0, -2.0, 0.2, -5.0]), torch.tensor([-1.0, 4.0, -0.3, 1.0])]
    assert torch.equal(trim_to_density(xs[0], 0.5), torch.tensor([3.0, 0.0, 0.0, 2.0]))
    stacked = torch.stack(xs)
    assert torch.equal(elect_sign(stacked), torch.tensor([1.0, 1.0, 1.0, -1.0]))  # by mass, not by count
    masked, div = disjoint_mean(stacked, torch.ones(3, 1), elect_sign(stacked))
    assert torch.equal(div, torch.tensor([1.0, 1.0, 2.0, 1.0]))
    assert torch.allclose(masked.sum(0) / div, torch.tensor([3.0, 4.0, 0.15, -5.0]))
    out = ties_merge(base, xs, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], lam=0.5)
    assert torch.allclose(out, 0.5 * torch.tensor([3.0, 4.0, 0.15, -5.0]))
    # trimming to half: model 1 keeps (-2, -5), model 0 (3, 2), model 2 (-1? no: 4, 1)
    out = ties_merge(base, xs, [1.0] * 3, [0.5] * 3)
    # elected: [3, -2+4=2, 0, 2-5+1=-2] -> [+, +, +(tie), -]; agreeing means: [3, 4, 0, -5]
    assert torch.allclose(out, torch.tensor([3.0, 4.0, 0.0, -5.0]))


def test_dare_expected_value_and_determinism():
    delta = torch.linspace(-1, 1, 50)
    mean = torch.stack([dare_drop(delta, 0.3, seed) for seed in range(3000)]).mean(0)
    assert (mean - delta).abs().max() < 0.12  # E[keep * delta / density] = delta
    assert torch.equal(dare_drop(delta, 0.3, 7), dare_drop(delta, 0.3, 7))
    assert not torch.equal(dare_drop(delta, 0.3, 7), dare_drop(delta, 0.3, 8))
    kept = dare_drop(delta, 0.3, 7) != 0
    assert torch.allclose(dare_drop(delta, 0.3, 7)[kept], delta[kept] / 0.3)


def test_regmean_closed_form_equals_least_squares():
    torch.manual_seed(0)
    n, d_in, d_out = 40, 6, 3
    xs = [torch.randn(n, d_in, dtype=torch.float64) for _ in range(3)]
    ws = [torch.randn(d_out, d_in, dtype=torch.float64) for _ in range(3)]
    grams = [x.T @ x / n for x in xs]
    ours = regmean_solve(ws, grams, alpha=1.0, ridge=0.0)
    X = torch.cat(xs)
    Y = torch.cat([x @ w.T for x, w in zip(xs, ws)])
    direct = torch.linalg.lstsq(X, Y).solution.T
    assert torch.allclose(ours, direct, atol=1e-10)
    # alpha = 0 keeps only the diagonals: a per-input-feature weighted mean
    diag = regmean_solve(ws, grams, alpha=0.0, ridge=0.0)
    g = torch.stack([torch.diagonal(gm) for gm in grams])  # (3, d_in)
    expected = sum(w * gi for w, gi in zip(ws, g)) / g.sum(0)
    assert torch.allclose(diag, expected)


# -- command on tiny Llamas -----------------------------------------------------------------


@pytest.fixture
def llamas(tiny_llamas_3layer):
    return tiny_llamas_3layer


def _sd(path):
    return dict(open_checkpoint(path).items())


def test_selection_leaves_other_tensors_bit_identical(llamas, tmp_path):
    out = merge_weights(models=[str(llamas["A"]), str(llamas["B"])], parameters={"weight": [0.7, 0.3]}, layers=[1],
                        kinds=["qkv"], out=str(tmp_path / "m"), progress=False)
    a, b, m = _sd(llamas["A"]), _sd(llamas["B"]), _sd(out)
    merged = [n for n in m if not torch.equal(m[n], a[n])]
    assert sorted(merged) == sorted(f"model.layers.1.self_attn.{p}_proj.weight" for p in "qkv")
    for n in merged:
        assert torch.allclose(m[n], 0.7 * a[n] + 0.3 * b[n], atol=1e-6)


def test_auto_name_loads_with_transformers_and_same_bytes_twice(llamas, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(tmp_path)
    kw = dict(models=[str(llamas["B"]), str(llamas["C"])], base_model=str(llamas["A"]), method="dare_ties",
              parameters={"density": 0.5, "weight": [1.0, 0.5]}, seed=3, progress=False)
    out1 = merge_weights(**kw)
    assert out1.endswith("checkpoints/merged/A_B_C_dare_ties0.50")
    out2 = merge_weights(**kw, out=str(tmp_path / "again"))
    f1 = sorted(p.name for p in Path(out1).iterdir())
    for name in f1:
        if name.endswith(".safetensors"):
            assert (tmp_path / "again" / name).read_bytes() == (Path(out1) / name).read_bytes()
    model = AutoModelForCausalLM.from_pretrained(out1)
    logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


def test_slerp_schedule_per_kind(llamas, tmp_path):
    out = merge_weights(models=[str(llamas["A"]), str(llamas["B"])], method="slerp", parameters={"t": [0.0, 1.0]},
                        per_kind={"mlp": {"t": 0.25}}, out=str(tmp_path / "s"), progress=False)
    a, b, m = _sd(llamas["A"]), _sd(llamas["B"]), _sd(out)
    n0, n2 = "model.layers.0.self_attn.q_proj.weight", "model.layers.2.self_attn.q_proj.weight"
    assert torch.allclose(m[n0], a[n0]) and torch.allclose(m[n2], b[n2], atol=1e-6)
    n = "model.layers.2.mlp.up_proj.weight"
    assert torch.allclose(m[n], slerp_merge(a[n], b[n], 0.25))


def test_regmean_runs_with_grams(llamas, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(100)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok_dir = tmp_path / "tok"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(tok_dir)
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[int(i)] for i in torch.randint(0, 100, (int(n),), generator=g)) for n in torch.randint(5, 30, (12,), generator=g)]
    calib = Calibration(texts=texts, tokenizer=str(tok_dir), batch_size=4, max_tokens=400)
    out = merge_weights(models=[str(llamas["A"]), str(llamas["B"])], method="regmean", parameters={"alpha": 0.9},
                        calibration=calib, out=str(tmp_path / "r"), progress=False)
    a, b, m = _sd(llamas["A"]), _sd(llamas["B"]), _sd(out)
    n = "model.layers.0.mlp.down_proj.weight"
    assert not torch.allclose(m[n], (a[n] + b[n]) / 2, atol=1e-4)  # solved, not averaged
    norm = "model.layers.0.input_layernorm.weight"
    assert torch.allclose(m[norm], (a[norm] + b[norm]) / 2)  # no Gram -> mean


# -- bad input: one clear error, nothing written --------------------------------------------


def _bad(tmp_path, match, **kw):
    out = tmp_path / "never"
    kw.setdefault("out", str(out))
    with pytest.raises(LsMergeError, match=match):
        merge_weights(progress=False, **kw)
    assert not out.exists()


def test_bad_inputs(llamas, tmp_path):
    A, B, C = (str(llamas[k]) for k in "ABC")
    _bad(tmp_path, "out of range: the model has 3 layers", models=[A, B], layers=[5])
    _bad(tmp_path, r"t=1.5 must be a number in \[0, 1\]", models=[A, B], method="slerp", parameters={"t": 1.5})
    _bad(tmp_path, "weight=-1.0 must be a finite number >= 0", models=[A, B], parameters={"weight": [1.0, -1.0]})
    _bad(tmp_path, r"density=0.0 must be a number in \(0, 1\]", models=[B], base_model=A, method="ties", parameters={"density": 0.0})
    _bad(tmp_path, "also listed in models", models=[A, B], base_model=A, method="ties")
    _bad(tmp_path, "unknown model", models=[A, str(tmp_path / "nope")])
    _bad(tmp_path, "unknown merge method", models=[A, B], method="frobnicate")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    _bad(tmp_path, "exists and is not empty", models=[A, B], out=str(tmp_path / "full"))


def _copy_with(src, dst, edit):
    import shutil

    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    edit(sd)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return str(dst)


def test_bad_tensors(llamas, tmp_path):
    A = str(llamas["A"])
    name = "model.layers.1.mlp.up_proj.weight"
    nan = _copy_with(llamas["B"], tmp_path / "nan", lambda sd: sd[name].view(-1).__setitem__(0, float("nan")))
    _bad(tmp_path, f"{name}.*NaN or Inf", models=[A, nan])
    short = _copy_with(llamas["B"], tmp_path / "short", lambda sd: sd.__setitem__(name, sd[name][:-1]))
    _bad(tmp_path, rf"{name}' has shape \[63, 32\]", models=[A, short])
    missing = _copy_with(llamas["B"], tmp_path / "missing", lambda sd: sd.pop(name))
    _bad(tmp_path, f"{name}' is missing", models=[A, missing])


def test_vocab_mismatch_is_padded_with_a_report(llamas, tmp_path, capsys):
    A = str(llamas["A"])
    big = _copy_with(llamas["B"], tmp_path / "big", lambda sd: sd.__setitem__("model.embed_tokens.weight", torch.cat([sd["model.embed_tokens.weight"], torch.ones(4, 32)])))
    out = merge_weights(models=[A, big], out=str(tmp_path / "v"), progress=False)
    assert "vocabulary: model.embed_tokens.weight has 132 rows" in capsys.readouterr().out
    assert open_checkpoint(out).shape("model.embed_tokens.weight") == (128, 32)


def test_different_architectures_refused(llamas, tmp_path):
    import json
    import shutil

    other = tmp_path / "mistral"
    shutil.copytree(llamas["B"], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (other / "config.json").write_text(json.dumps(cfg))
    _bad(tmp_path, "different architectures", models=[str(llamas["A"]), str(other)])


@pytest.mark.parametrize(
    "recipe, reason",
    [
        ("merge_method: passthrough\nslices:\n  - sources:\n      - model: {A}\n        layer_range: [0, 2]\n", "passthrough"),
        ("merge_method: slerp\nbase_model: {A}\nparameters: {{t: 0.5}}\nslices:\n  - sources:\n      - model: {A}\n        layer_range: [0, 2]\n      - model: {B}\n        layer_range: [1, 3]\n", "layer remapping"),
        ("merge_method: ties\nbase_model: {A}\nmodels:\n  - model: {B}\n    parameters: {{weight: 1, gamma: 0.1}}\n", "gamma"),
        ("merge_method: linear\nmodels:\n  - model: {A}\n  - model: {B}\ntokenizer_source: union\nparameters: {{weight: 1}}\n", "tokenizer"),
        ("merge_method: slerp\nbase_model: {A}\nmodels:\n  - model: {A}\n  - model: {B}\n", "'t' is required"),
    ],
)
def test_mergekit_recipes_we_cannot_honour_are_refused(llamas, tmp_path, recipe, reason):
    yml = tmp_path / "r.yml"
    yml.write_text(recipe.format(A=llamas["A"], B=llamas["B"]))
    _bad(tmp_path, reason, mergekit_config=str(yml))


def test_mergekit_gradient_matches_native_schedule(llamas, tmp_path):
    A, B = str(llamas["A"]), str(llamas["B"])
    yml = tmp_path / "g.yml"
    yml.write_text(f"merge_method: slerp\nbase_model: {A}\nmodels:\n  - model: {A}\n  - model: {B}\nparameters:\n  t: [0.1, 0.9]\n")
    mk = merge_weights(mergekit_config=str(yml), out=str(tmp_path / "mk"), progress=False)
    native = merge_weights(models=[A, B], method="slerp", parameters={"t": [0.1, 0.9]}, out=str(tmp_path / "nat"), progress=False)
    a, b = _sd(mk), _sd(native)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_mergekit_ties_recipe_uses_mergekit_tie_break_and_refuses_ours(tmp_path):
    from lsmerge.io.archmap import TensorRole
    from lsmerge.merge.weight.mergekit_config import MergekitParameters, read_mergekit_config

    yml = tmp_path / "t.yml"
    yml.write_text("merge_method: ties\nbase_model: /m/A\nmodels:\n  - model: /m/B\n    parameters: {weight: 1, density: 0.5}\n")
    params = MergekitParameters(read_mergekit_config(yml), num_layers=2)
    resolved = params.resolve("model.layers.0.mlp.up_proj.weight", TensorRole(0, "mlp_up", "mlp.up_proj"))
    assert resolved["tie_break"] == "mergekit" and resolved["density"] == [0.5]
    yml.write_text("merge_method: ties\nbase_model: /m/A\nmodels:\n  - model: /m/B\n    parameters: {weight: 1, tie_break: index}\n")
    with pytest.raises(LsMergeError, match="tie_break"):
        read_mergekit_config(yml)

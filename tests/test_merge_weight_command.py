"""`lsmerge merge-weights` (`lsmerge.merge.weight.command`) on tiny Llamas: selection, naming, schedules, RegMean with Grams, mergekit recipes, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import word_tokenizer
from lsmerge.errors import LsMergeError
from lsmerge.io.store import open_checkpoint
from lsmerge.merge.weight import slerp_merge
from lsmerge.merge.weight.command import merge_weights
from lsmerge.merge.weight.gram import Calibration


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
    words = [f"w{i}" for i in range(100)]
    tok_dir = tmp_path / "tok"
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}
    word_tokenizer(vocab=vocab, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(tok_dir)
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
        ("merge_method: passthrough\nslices:\n  - sources:\n      - model: {A}\n        layer_range: [0, 2]\n    residual_weight: 0.5\n", "residual_weight"),
        ("merge_method: linear\nmodules:\n  text: {{}}\n", "modules"),
        ("merge_method: passthrough\nmodels:\n  - model: {A}\nchat_template: chatml\n", "chatml"),
        ("merge_method: ties\nbase_model: {A}\nmodels:\n  - model: {B}\n    parameters: {{weight: 1, gamma: 0.1}}\n", "gamma"),
        ("merge_method: linear\nmodels:\n  - model: {A}\n  - model: {B}\ntokenizer:\n  tokens: {{x: {{source: {A}}}}}\nparameters: {{weight: 1}}\n",
         "tokenizer.tokens"),
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

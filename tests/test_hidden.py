"""Hidden-state mixing: operators, hooks, early exit, steering deltas, representation metrics, sweep."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.representation import LinearCKA, Midness, linear_cka_tt
from lsmerge.merge.hidden import (
    HiddenStateMixer,
    MixSpec,
    ResidualHooks,
    Steerer,
    decoder_layers,
    lerp,
    mean,
    residual_stream,
    slerp,
    steer,
)

N_LAYERS = 4


def tiny(seed: int, layers: int = N_LAYERS) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, initializer_range=0.2,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def models():
    return tiny(0), tiny(1)


def all_residuals(model, ids):
    captured = {}

    def rec(layer):
        def edit(h):
            captured[layer] = h.clone()
            return h

        return edit

    with ResidualHooks(model, {i: rec(i) for i in range(N_LAYERS + 1)}):
        out = model(input_ids=ids, use_cache=False)
    return out.logits, captured


IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 3, 4], [7, 7, 2, 90, 100, 3, 11, 12]])


# -- operators ---------------------------------------------------------------------------------


def test_slerp_identical_states_returns_them():
    h = torch.randn(3, 5, 32)
    assert torch.allclose(slerp(h, h.clone(), 0.3), h, atol=1e-5)
    assert torch.allclose(slerp(h, 2 * h, 0.5), 1.5 * h, atol=1e-5)  # same direction, interpolated norm


def test_slerp_geometry_and_float32():
    b = torch.tensor([[1.0, 0.0]])
    f = torch.tensor([[0.0, 3.0]])
    m = slerp(b, f, 0.5)
    assert torch.allclose(m.norm(), torch.tensor(2.0), atol=1e-5)  # (1-0.5)*1 + 0.5*3
    assert torch.allclose(torch.atan2(m[0, 1], m[0, 0]), torch.tensor(math.pi / 4), atol=1e-5)
    hb = torch.randn(4, 64).bfloat16()
    out = slerp(hb, torch.randn(4, 64).bfloat16(), 0.5)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert slerp(hb, hb, 0.0) is hb
    assert torch.allclose(slerp(b, f, 1.0), f, atol=1e-5)


def test_operators_formulas():
    b, f1, f2 = torch.randn(3, 2, 8).unbind(0)
    assert torch.allclose(lerp(b, f1, 0.25), 0.75 * b + 0.25 * f1, atol=1e-6)
    assert torch.allclose(mean(b, [f1, f2], 0.5, [1.0, 3.0]), 0.5 * b + 0.5 * (0.25 * f1 + 0.75 * f2), atol=1e-6)
    assert torch.allclose(mean(b, [f1], 0.4), lerp(b, f1, 0.4), atol=1e-6)
    delta = torch.randn(8)
    assert torch.allclose(steer(b, delta, 0.5), b + 0.5 * delta, atol=1e-6)
    with pytest.raises(LsMergeError, match="beta"):
        lerp(b, f1, 1.5)
    with pytest.raises(LsMergeError, match="weights"):
        mean(b, [f1, f2], 0.5, [1.0])


# -- hooks -------------------------------------------------------------------------------------


def test_mixing_at_layer_leaves_lower_layers_unchanged(models):
    base, ft = models
    _, ref = all_residuals(base, IDS)
    for mix_layer in (1, 2, 4):
        h_ft = residual_stream(ft, mix_layer, IDS)
        _, ref_ft = all_residuals(ft, IDS)
        assert torch.equal(h_ft, ref_ft[mix_layer])  # early exit gives the same state as a full run
        with HiddenStateMixer(base, MixSpec("lerp", mix_layer, 0.5, "all")) as mixer:
            mixer.set_sources([h_ft])
            _, mixed = all_residuals(base, IDS)
        for layer in range(mix_layer):
            assert torch.equal(mixed[layer], ref[layer])
        assert torch.allclose(mixed[mix_layer], 0.5 * ref[mix_layer] + 0.5 * h_ft, atol=1e-5)
        if mix_layer < N_LAYERS:
            assert not torch.allclose(mixed[mix_layer + 1], ref[mix_layer + 1])


def test_last_token_mode_mixes_only_last_position(models):
    base, ft = models
    h_ft = residual_stream(ft, 2, IDS)
    _, ref = all_residuals(base, IDS)
    with HiddenStateMixer(base, MixSpec("slerp", 2, 0.7, "last")) as mixer:
        mixer.set_sources([h_ft])
        _, mixed = all_residuals(base, IDS)
    assert torch.equal(mixed[2][:, :-1], ref[2][:, :-1])
    assert torch.allclose(mixed[2][:, -1], slerp(ref[2][:, -1], h_ft[:, -1], 0.7), atol=1e-5)


def test_identical_models_every_operator_returns_base(models):
    base, _ = models
    twin = tiny(0)
    ref_logits = base(input_ids=IDS, use_cache=False).logits
    for op in ("lerp", "slerp", "mean"):
        with HiddenStateMixer(base, MixSpec(op, 2, 0.6, "all")) as mixer:
            mixer.set_sources([residual_stream(twin, 2, IDS)])
            logits = base(input_ids=IDS, use_cache=False).logits
        assert torch.allclose(logits, ref_logits, atol=1e-4), op
    # steering with the delta of identical models (zero) is the base too
    delta = residual_stream(twin, 2, IDS).mean((0, 1)) - residual_stream(base, 2, IDS).mean((0, 1))
    with Steerer(base, {2: delta}, alpha=1.0):
        assert torch.allclose(base(input_ids=IDS, use_cache=False).logits, ref_logits, atol=1e-5)


def test_hooks_removed_after_exception(models):
    base, ft = models
    layers = decoder_layers(base)
    with pytest.raises(ValueError, match="boom"):
        with HiddenStateMixer(base, MixSpec("lerp", 1, 0.5)) as mixer:
            mixer.set_sources([residual_stream(ft, 1, IDS)])
            assert layers[1]._forward_pre_hooks
            raise ValueError("boom")
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in layers)
    # an exception inside the hook itself (no sources set) also leaves no hook behind
    with pytest.raises(RuntimeError, match="no source"):
        with HiddenStateMixer(base, MixSpec("lerp", 4, 0.5)):
            base(input_ids=IDS, use_cache=False)
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in layers)
    # the early-exit exception is contained too
    residual_stream(ft, 2, IDS)
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in decoder_layers(ft))


class KeywordLayer(torch.nn.Module):
    def forward(self, hidden_states, scale=1.0):
        return hidden_states * scale


class KeywordModel(torch.nn.Module):
    """A model whose layers receive hidden states by keyword."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([KeywordLayer(), KeywordLayer()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(hidden_states=x, scale=2.0)
        return x


def test_hook_works_with_keyword_hidden_states():
    model = KeywordModel()
    x = torch.ones(1, 2, 4)
    with ResidualHooks(model, {1: lambda h: h + 1.0}):
        out = model(x)
    assert torch.equal(out, ((x * 2) + 1) * 2)
    with ResidualHooks(model, {2: lambda h: h - 1.0}):  # the last layer's output
        assert torch.equal(model(x), x * 4 - 1)
    assert torch.equal(model(x), x * 4)


def test_out_of_range_layer_is_an_error_naming_layer_count(models):
    base, ft = models
    for bad in (-1, N_LAYERS + 1, 100):
        with pytest.raises(LsMergeError, match=f"has {N_LAYERS} decoder layers"):
            HiddenStateMixer(base, MixSpec("lerp", bad, 0.5))
        with pytest.raises(LsMergeError, match=f"has {N_LAYERS} decoder layers"):
            residual_stream(ft, bad, IDS)
    with pytest.raises(LsMergeError, match="operator"):
        MixSpec("regmean", 1, 0.5)


# -- steering deltas ---------------------------------------------------------------------------


def test_steering_deltas_roundtrip(models, tmp_path):
    from lsmerge.steering import compute_deltas, load_deltas, save_deltas

    base, ft = models
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    deltas, count = compute_deltas(base, ft, prompts, [0, 2, 4], batch_size=2)
    assert count == 8
    # reference: plain token-weighted mean over unpadded single-prompt runs
    diffs = [residual_stream(ft, 2, torch.tensor([p])) - residual_stream(base, 2, torch.tensor([p])) for p in prompts]
    expected = torch.cat([d[0] for d in diffs]).mean(0)
    assert torch.allclose(deltas[2], expected, atol=1e-5)
    save_deltas(deltas, str(tmp_path / "d.safetensors"), {"base": "b"})
    loaded = load_deltas(str(tmp_path / "d.safetensors"))
    assert sorted(loaded) == [0, 2, 4] and torch.equal(loaded[4], deltas[4])


# -- metrics -----------------------------------------------------------------------------------


def test_linear_cka_tt_matches_feature_form_and_invariances():
    x, y = torch.randn(10, 6), torch.randn(10, 9)
    xc, yc = x - x.mean(0), y - y.mean(0)
    feature_form = (xc.T @ yc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    assert torch.allclose(linear_cka_tt(x, y), feature_form, atol=1e-5)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    assert torch.allclose(linear_cka_tt(x, 3 * x @ q + 1), torch.tensor(1.0), atol=1e-5)
    metric = LinearCKA()
    metric.update(torch.stack([x, x]), torch.stack([x, y @ torch.randn(9, 6)]), mask=torch.ones(2, 10))
    assert 0.0 < float(metric.compute()) < 1.0


def test_midness_on_and_off_geodesic():
    b, f = torch.randn(50, 16), torch.randn(50, 16)
    m = Midness()
    m.update(b, f, slerp(b, f, 0.5))
    r = m.compute()
    assert abs(float(r["midpoint_cos"]) - 1) < 1e-4 and abs(float(r["arc_ratio"]) - 0.5) < 1e-3
    assert float(r["arc_deviation"]) < 1e-3 and float(r["geodesic_excess"]) < 1e-3
    off = Midness()
    off.update(b, f, torch.randn(50, 16))
    assert float(off.compute()["geodesic_excess"]) > 0.1


# -- sweep -------------------------------------------------------------------------------------


def test_sweep_rows_csv_and_heatmap(models, tmp_path):
    from lsmerge.sweep import plot_heatmap, run_sweep, write_csv

    base, ft = models
    chunks = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(0))
    rows = run_sweep(base, [ft], chunks, layers=[0, 2], ratios=[0.0, 1.0], operators=["lerp", "slerp"], batch_size=2)
    by_key = {(r["operator"], r["mix_layer"], r["beta"]): r for r in rows}
    base_ppl = by_key[("base", None, 0.0)]["perplexity"]
    for op in ("lerp", "slerp"):
        assert by_key[(op, 2, 0.0)]["perplexity"] == pytest.approx(base_ppl, rel=1e-6)
        assert by_key[(op, 2, 0.0)]["cka_base"] == pytest.approx(1.0, abs=1e-5)
    # beta = 1 at layer 0: embeddings replaced by the fine-tuned model's
    assert by_key[("lerp", 0, 1.0)]["perplexity"] != pytest.approx(base_ppl, rel=1e-3)
    write_csv(rows, str(tmp_path / "s.csv"))
    plot_heatmap(rows, str(tmp_path / "s.png"))
    with open(tmp_path / "s.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 + 2 * 2 * 2
    assert (tmp_path / "s.png").stat().st_size > 1000

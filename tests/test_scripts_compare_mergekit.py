"""lsmerge vs mergekit 0.1.5 on the same recipes, where mergekit is installed.

mergekit pins dependencies that clash with lsmerge's, so it lives in its own environment;
point `LSMERGE_MERGEKIT` at its `mergekit-yaml` (or put `mergekit-yaml` on PATH). See
scripts/compare_mergekit.py for how to install it.
"""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _compare_module():
    spec = importlib.util.spec_from_file_location("compare_mergekit", ROOT / "scripts" / "compare_mergekit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _compare(workdir: Path, *recipes: str) -> int:
    """Run scripts/compare_mergekit.py on `recipes` (its exit status); skips without mergekit."""
    mod = _compare_module()
    mk = mod.find_mergekit()
    if mk is None:
        pytest.skip("mergekit not found: set LSMERGE_MERGEKIT to its mergekit-yaml, or put mergekit-yaml on PATH "
                    "(install: see scripts/compare_mergekit.py)")
    return mod.main(["--mergekit-bin", str(mk), "--workdir", str(workdir), "--recipes", *recipes])


def test_matches_mergekit_linear_slerp_ties(tmp_path):
    assert _compare(tmp_path, "linear", "slerp_gradient", "ties") == 0


def test_matches_mergekit_passthrough_slices_and_tokenizers(tmp_path):
    """Depth up-scaling, a frankenmerge of two models, a tokenizer source that is a model, the base
    tokenizer padded with a chat template: tensors, config fields and tokenizers equal mergekit's."""
    assert _compare(tmp_path, "passthrough_upscale", "passthrough_frankenmerge", "tokenizer_source_model",
                    "tokenizer_base_chat_template") == 0


def test_matches_mergekit_breadcrumbs_sce_ram(tmp_path):
    """The deterministic sparse / consensus methods: every tensor within 1e-6 relative of mergekit's."""
    assert _compare(tmp_path, "breadcrumbs", "breadcrumbs_ties", "sce", "sce_all", "ram", "ramplus_tl") == 0


def test_della_matches_mergekit_in_distribution(tmp_path):
    """DELLA draws random masks: kept fractions, their growth with magnitude rank and the L1 rescale
    agree with mergekit's (`compare_distribution`), not the bits."""
    assert _compare(tmp_path, "della", "della_linear") == 0


def test_distribution_comparison_can_fail():
    """compare_distribution rejects a pruning without the rank tilt or with another rescale."""
    mod = _compare_module()
    good = {f"t{i}": {"n": 4096, "kept": 0.4, "kept_small": 0.3, "kept_large": 0.5, "rescale": 2.0} for i in range(5)}
    assert mod.compare_distribution(good, good, 0.4, 0.2)[1] == []
    flat = {k: {**v, "kept_small": 0.4, "kept_large": 0.4} for k, v in good.items()}
    assert any("epsilon" in p for p in mod.compare_distribution(flat, good, 0.4, 0.2)[1])
    unscaled = {k: {**v, "rescale": 1.0} for k, v in good.items()}
    assert any("rescale" in p for p in mod.compare_distribution(unscaled, good, 0.4, 0.2)[1])


def test_matches_mergekit_model_stock_karcher_nuslerp_multislerp_nearswap_arcee_fusion(tmp_path):
    """The spherical and swap methods: every tensor within 1e-6 relative of mergekit's."""
    # one recipe per method (the script has more: model_stock_filter_wise, karcher, nuslerp_row_wise, multislerp)
    assert _compare(tmp_path, "model_stock", "karcher_base", "nuslerp", "multislerp_three", "nearswap", "arcee_fusion") == 0


def test_matches_mergekit_tokenizer_union(tmp_path):
    """`tokenizer_source: union` and a `tokenizer:` block without a source (mergekit's default is
    union, padded): the same tokens and added tokens, the base's ids, config vocab_size, tokenizer
    files, and every token's embedding and lm_head row within 1e-6 of mergekit's."""
    assert _compare(tmp_path, "tokenizer_union", "tokenizer_union_default") == 0

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


def test_matches_mergekit_linear_slerp_ties(tmp_path):
    mod = _compare_module()
    mk = mod.find_mergekit()
    if mk is None:
        pytest.skip("mergekit not found: set LSMERGE_MERGEKIT to its mergekit-yaml, or put mergekit-yaml on PATH "
                    "(install: see scripts/compare_mergekit.py)")
    rc = mod.main(["--mergekit-bin", str(mk), "--workdir", str(tmp_path), "--recipes", "linear", "slerp_gradient", "ties"])
    assert rc == 0


def test_matches_mergekit_model_stock_karcher_nuslerp_multislerp_nearswap_arcee_fusion(tmp_path):
    mod = _compare_module()
    mk = mod.find_mergekit()
    if mk is None:
        pytest.skip("mergekit not found: set LSMERGE_MERGEKIT to its mergekit-yaml, or put mergekit-yaml on PATH "
                    "(install: see scripts/compare_mergekit.py)")
    # one recipe per method (the script has more: model_stock_filter_wise, karcher, nuslerp_row_wise, multislerp)
    rc = mod.main(["--mergekit-bin", str(mk), "--workdir", str(tmp_path), "--recipes", "model_stock", "karcher_base",
                   "nuslerp", "multislerp_three", "nearswap", "arcee_fusion"])
    assert rc == 0

"""lsmerge vs mergekit on the same recipes (runs only where /work/mk-venv holds mergekit)."""

from pathlib import Path

import pytest

MK = Path("/work/mk-venv/bin/mergekit-yaml")


@pytest.mark.skipif(not MK.exists(), reason="mergekit venv not installed (see scripts/compare_mergekit.py)")
def test_matches_mergekit_linear_slerp_ties(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_mergekit", Path(__file__).parents[1] / "scripts" / "compare_mergekit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--mergekit-bin", str(MK), "--workdir", str(tmp_path), "--recipes", "linear", "slerp_gradient", "ties"])
    assert rc == 0

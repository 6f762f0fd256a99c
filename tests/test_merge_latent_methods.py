"""Every registered LS-Merge method, run by `lsmerge merge` on tiny models: merging copies of one
model gives that model back; and a method added with one decorator is a working command method."""

from __future__ import annotations

import pytest
import torch

from lsmerge.io import open_checkpoint
from lsmerge.merge import latent as L
from lsmerge.merge.latent.command import merge


def identity_run(method: L.LatentMethod, w) -> dict:
    """Arguments under which `method` must return model e1: its inputs are copies of e1 (as many as
    it takes; one for N), task vectors are taken against another model with lam = 1, nothing is
    trimmed or dropped (density 1), posterior samples are the mean (temperature 0)."""
    n = {"1": 1, "2": 2, "N": 1}[method.models]
    kw = dict(method=method.name, models=[str(w.e1), str(w.e1_copy)][:n], density=1.0, temperature=0.0)
    if method.needs_base:
        kw.update(base=str(w.base), lam=1.0)
    return kw


@pytest.mark.parametrize("name", list(L.METHODS))
def test_merging_copies_of_a_model_returns_it(name, tiny_world, tmp_path):
    method = L.get_method(name)
    out = merge(**identity_run(method, tiny_world), out=str(tmp_path / "out"), chunk_size=16, progress=False)
    merged, e1, base = open_checkpoint(out), open_checkpoint(tiny_world.e1), open_checkpoint(tiny_world.base)
    assert merged.names == e1.names
    for t in e1.names:
        torch.testing.assert_close(merged.get(t), e1.get(t), rtol=1e-4, atol=1e-5, msg=f"{name}: {t}")
    far = [t for t in e1.names if not torch.allclose(e1.get(t), base.get(t), rtol=1e-2, atol=1e-3)]
    assert len(far) > len(e1.names) // 2  # the check can fail: the other model differs


def test_a_new_method_is_one_decorated_function(tiny_world, tmp_path):
    @L.register("first_of_two_test", models="2")
    def first_of_two(tensors, base, p):
        """z = z_1."""
        return L.linear_tensors(tensors, [1.0, 0.0])

    try:
        assert "first_of_two_test" in L.METHODS
        out = merge(method="first_of_two_test", models=[str(tiny_world.e1), str(tiny_world.e2)], chunk_size=16,
                    out=str(tmp_path / "out"), progress=False)
        merged, e1 = open_checkpoint(out), open_checkpoint(tiny_world.e1)
        for t in e1.names:
            torch.testing.assert_close(merged.get(t), e1.get(t), rtol=1e-4, atol=1e-5)
    finally:
        del L.METHODS["first_of_two_test"]

"""`lsmerge.merge.weight.passthrough`: a copy, or a scaled copy."""

import torch

from lsmerge.merge.weight.command import merge_weights
from lsmerge.merge.weight.passthrough import passthrough


def test_passthrough_copies_or_scales_in_the_input_dtype():
    x = torch.randn(4, 3).to(torch.bfloat16)
    assert passthrough(x) is x
    y = passthrough(x, 0.3)
    assert y.dtype == torch.bfloat16 and torch.equal(y, x * 0.3)


def test_native_passthrough_is_a_bit_identical_copy(tiny_llamas_3layer, tmp_path):
    from lsmerge.io.store import open_checkpoint

    A = tiny_llamas_3layer["A"]
    out = merge_weights(models=[str(A)], method="passthrough", out=str(tmp_path / "p"), progress=False)
    a, m = dict(open_checkpoint(A).items()), dict(open_checkpoint(out).items())
    assert a.keys() == m.keys() and all(torch.equal(a[n], m[n]) for n in a)

"""`lsmerge.merge.weight.task_arithmetic`: base + lam * sum of weighted task vectors."""

from __future__ import annotations

import torch

from lsmerge.merge.weight import task_arithmetic_merge


def test_task_arithmetic():
    base = torch.tensor([1.0, 1.0])
    x1, x2 = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])
    out = task_arithmetic_merge(base, [x1, x2], [1.0, 0.5], lam=2.0)
    assert torch.allclose(out, base + 2.0 * (1.0 * (x1 - base) + 0.5 * (x2 - base)))

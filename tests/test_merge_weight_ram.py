"""`lsmerge.merge.weight.ram`: RAM and RAM+ (tensor-local), by hand on entries changed by 0..3 models."""

from __future__ import annotations

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight import get_method
from lsmerge.merge.weight.ram import ram

BASE = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
# deltas: entry 0 changed by nobody (below epsilon), 1 by model 0 only, 2 by model 1 only, 3 by 0 and 1,
# 4 by all three, 5 by model 2 only, 6 by 1 and 2
DELTAS = [[1e-7, 0.5, 0.0, 0.2, 0.3, 0.0, 0.0],
          [0.0, 0.0, -0.4, 0.6, -0.3, 0.0, 0.8],
          [-1e-7, 0.0, 0.0, 0.0, 0.9, 0.25, -0.2]]
EPS = 1e-5


def hand_ram(r=None, alpha=0.2) -> list[float]:
    n = len(BASE)
    changed = [[abs(d[j]) > EPS for j in range(n)] for d in DELTAS]
    counts = [sum(c[j] for c in changed) for j in range(n)]
    lam = []
    for c in changed:
        shared = sum(1 for j in range(n) if c[j] and counts[j] > 1)
        unique = sum(1 for j in range(n) if c[j] and counts[j] == 1)
        lam.append(1 + (r or 0) * min(max(shared / max(unique, EPS), 0), alpha))
    out = []
    for j in range(n):
        total = 0.0
        for i, d in enumerate(DELTAS):
            if changed[i][j]:
                total += d[j] * (lam[i] if counts[j] == 1 else 1 / counts[j])
        out.append(BASE[j] + total)
    return out


def _inputs():
    base = torch.tensor(BASE)
    return base, [base + torch.tensor(d) for d in DELTAS]


def test_ram_by_hand():
    base, xs = _inputs()
    expected = hand_ram()
    assert expected[3] == pytest.approx(4.0 + 0.4) and expected[4] == pytest.approx(5.0 + 0.3)
    got = ram(base, list(xs), EPS)  # a list the method may clear (release_inputs)
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    assert got[0] == 1.0  # changes below epsilon are dropped


@pytest.mark.parametrize("r, alpha", [(0.1, 0.2), (0.5, 5.0), (0.0, 0.2)])
def test_ramplus_by_hand(r, alpha):
    base, xs = _inputs()
    # model 0: 1 unique, 2 shared -> rho 2; model 1: 1 unique, 3 shared -> 3; model 2: 1 unique, 2 shared -> 2
    assert ram(base, xs, EPS, r, alpha).tolist() == pytest.approx(hand_ram(r, alpha), abs=1e-6)


def test_ramplus_with_no_unique_entries_stays_finite():
    base = torch.zeros(4)
    xs = [torch.tensor([1.0, 2.0, 0.0, 0.0]), torch.tensor([1.0, 2.0, 0.0, 0.0])]  # all shared
    assert ram(base, xs, 0.0, 0.1, 0.2).tolist() == [1.0, 2.0, 0.0, 0.0]


@pytest.mark.parametrize("method, bad", [("ram", {"epsilon": -1.0}), ("ramplus_tl", {"r": float("inf")}),
                                         ("ramplus_tl", {"alpha": -0.5})])
def test_out_of_range_parameters_are_refused(method, bad):
    m = get_method(method)
    values = {p.name: p.default for p in m.params} | bad
    with pytest.raises(LsMergeError, match=next(iter(bad))):
        m.check_params(values, "tensor t")

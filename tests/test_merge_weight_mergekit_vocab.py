"""`lsmerge.merge.weight.mergekit_vocab`: rows remapped to a tokenizer source's vocabulary, as mergekit does."""

import pytest
import torch

from lsmerge.merge.weight.mergekit_vocab import Vocabulary, remap_rows


def test_remap_rows_defaults_single_donor_base_average_zero_and_padding():
    # output tokens 0..4; P has tokens 0, 1, 2, 4 (at rows 3, 2, 1, 0); Q has 0, 1, 3 (rows 0, 1, 2);
    # R has 1, 2 (rows 1, 0). Token 4 only in P, token 3 only in Q; token 2 in P and R (base P):
    # base row; token 0 in P and Q, not R, base P: base row. Without a base: averages.
    perms = {"P": torch.tensor([3, 2, 1, -1, 0]), "Q": torch.tensor([0, 1, -1, 2, -1]), "R": torch.tensor([-1, 1, 0, -1, -1])}
    x = {"P": torch.tensor([[40.0], [20.0], [10.0], [0.0]]), "Q": torch.tensor([[1.0], [11.0], [31.0]]),
         "R": torch.tensor([[22.0], [12.0]])}
    out = remap_rows(x, Vocabulary(5, 6, perms, None, "P"))
    assert out["P"].flatten().tolist() == pytest.approx([0.0, 10.0, 20.0, 31.0, 40.0, 20.2])  # own rows, Q's token 3, pad = mean
    assert out["Q"].flatten().tolist()[:5] == [1.0, 11.0, 20.0, 31.0, 40.0]  # token 2 from the base P
    assert out["R"].flatten().tolist()[:5] == [0.0, 12.0, 22.0, 31.0, 40.0]  # token 0 from the base P
    no_base = remap_rows(x, Vocabulary(5, 5, perms, None, None))
    assert no_base["R"].flatten().tolist() == [0.5, 12.0, 22.0, 31.0, 40.0]  # token 0: mean of P and Q
    assert no_base["Q"].flatten().tolist()[2] == 21.0  # token 2: mean of P and R

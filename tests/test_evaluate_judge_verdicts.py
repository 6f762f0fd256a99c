"""`lsmerge.evaluate.judge.verdicts`: the swap combination table and reading a judge's reply."""

from __future__ import annotations

import pytest

from lsmerge.evaluate.judge.verdicts import combine, parse_verdict


@pytest.mark.parametrize(
    "a_first, b_first, winner",
    [
        ("first", "second", "A"), ("second", "first", "B"),  # consistent across the swap
        ("first", "first", "tie"), ("second", "second", "tie"),  # position bias
        ("first", "tie", "tie"), ("tie", "second", "tie"), ("second", "tie", "tie"), ("tie", "first", "tie"),
        ("tie", "tie", "tie"),
    ],
)  # fmt: skip
def test_swap_combination_table(a_first, b_first, winner):
    assert combine(a_first, b_first) == winner


def test_combine_rejects_unknown_verdict():
    with pytest.raises(ValueError):
        combine("first", "A")


@pytest.mark.parametrize(
    "reply, choice",
    [
        ("A", "first"), ("B", "second"), ("tie", "tie"), (" **B**\n", "second"), ("[[A]]", "first"), ("[[C]]", "tie"),
        ("Response A", "first"), ("B. It is correct.", "second"), ("Verdict: A", "first"), ("A is better", "first"),
        ("I prefer Response B here.", "second"), ("Tie.", "tie"),
        ("A good answer would need more", None), ("Response A and Response B are equally bad", None), ("", None),
    ],
)  # fmt: skip
def test_parse_verdict(reply, choice):
    assert parse_verdict(reply) == choice

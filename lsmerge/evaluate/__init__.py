"""Evaluation: perplexity (`lsmerge evaluate`); representation and weight metrics sit beside it."""

from lsmerge.evaluate.perplexity import (
    PerplexityResult,
    collate_windows,
    evaluate,
    perplexity_of_ids,
    sliding_windows,
)

__all__ = ["PerplexityResult", "collate_windows", "evaluate", "perplexity_of_ids", "sliding_windows"]

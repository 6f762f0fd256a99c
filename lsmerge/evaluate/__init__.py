"""Evaluation: perplexity (`perplexity`, the one definition; `lsmerge evaluate` in
`perplexity_command`), the pairwise judge (`judge`, `lsmerge judge`); representation and weight
metrics sit beside them."""

from lsmerge.evaluate.perplexity import (
    PerplexityResult,
    collate_windows,
    encode_text,
    perplexity_of_ids,
    sliding_windows,
)
from lsmerge.evaluate.perplexity_command import evaluate

__all__ = ["PerplexityResult", "collate_windows", "encode_text", "evaluate", "perplexity_of_ids", "sliding_windows"]

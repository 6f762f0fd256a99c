"""Paired bootstrap intervals over scoring windows: is a row better, level or worse than a reference?

Every row of a table is scored on the same windows (one tokenisation, one set of windows:
`perplexity.sliding_windows`), so row r gives per-window sums of negative log-likelihood
s_r[w] (nats) over t[w] scored tokens, w = 0 .. W-1 (t is the same for every row). Its mean
log-perplexity on a set of windows I is the ratio estimator

    L_r(I) = sum_{w in I} s_r[w] / sum_{w in I} t[w]        (nats per token; PPL = exp(L))

Paired bootstrap (Efron & Tibshirani 1993, ch. 13; Koehn 2004 for paired resampling in NLP):
draw B resamples I_1 .. I_B of W window indices with replacement (seeded), the SAME
resamples for the row and the reference, and take

    d_b = L_row(I_b) - L_ref(I_b)         (the log of the perplexity ratio row / reference)

The interval is the (1-c)/2 and (1+c)/2 percentiles of d_1 .. d_B (linear interpolation, as
numpy's default); the point estimate is d on all windows. A row is "better" when the whole
interval is below 0, "worse" when it is above 0, and "level" otherwise: an identical pair gives
d_b = 0 for every b, a zero-width interval at 0, "level".

The summary over domains d = 1 .. D (each with its own windows) is the mean perplexity relative
to each domain's own expert,

    R = 1/D sum_d exp(L_row,d - L_expert,d)        (1.0 = as good as the specialist on its domain)

bootstrapped by resampling windows within each domain (independent resamples per domain,
paired between the row and the expert, and shared by every row so that two rows' replicates of
R are paired too). Pure tensor functions; no model is touched.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import torch

from lsmerge.errors import LsMergeError

Verdict = Literal["better", "level", "worse"]


@dataclass(frozen=True)
class WindowScores:
    """Per-window scores of one model on one text: `nll_sum` (W,) nats, `tokens` (W,) scored tokens."""

    nll_sum: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    def of(cls, nll_sum, tokens) -> "WindowScores":
        return cls(torch.as_tensor(nll_sum, dtype=torch.float64), torch.as_tensor(tokens, dtype=torch.float64))

    @property
    def windows(self) -> int:
        return int(self.nll_sum.numel())

    def mean_nll(self) -> float:
        """L on all windows: nats per scored token."""
        return float(self.nll_sum.sum() / self.tokens.sum())


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval [low, high] at `confidence`."""

    estimate: float
    low: float
    high: float
    confidence: float

    def verdict(self, centre: float = 0.0) -> Verdict:
        """better / worse when the whole interval lies below / above `centre` (lower is better), else level."""
        if self.high < centre:
            return "better"
        if self.low > centre:
            return "worse"
        return "level"


def domain_seed(seed: int, name: str) -> int:
    """A resampling seed per (seed, domain name): every row of a table gets the same resamples."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{name}".encode()).digest()[:7], "big")


def check_bootstrap(windows: int, resamples: int, confidence: float) -> None:
    """Raise LsMergeError for a bootstrap on no windows, fewer than one resample or a confidence outside (0, 1)."""
    if windows < 1:
        raise LsMergeError("a bootstrap over windows needs at least one scored window, got 0; score a longer text "
                           "(or raise max_tokens) before asking for intervals.")  # fmt: skip
    if resamples < 1:
        raise LsMergeError(f"resamples={resamples} must be at least 1 (e.g. 2000).")
    if not 0 < confidence < 1:
        raise LsMergeError(f"confidence={confidence} must be between 0 and 1, e.g. 0.95.")


def resample_indices(windows: int, resamples: int = 2000, seed: int = 0) -> torch.Tensor:
    """(B, W) window indices drawn uniformly with replacement from a seeded generator."""
    check_bootstrap(windows, resamples, 0.5)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(windows, (resamples, windows), generator=g)


def resampled_mean_nll(scores: WindowScores, idx: torch.Tensor) -> torch.Tensor:
    """(B,) L(I_b) = sum s[I_b] / sum t[I_b] for each row of `idx` (B, W)."""
    return scores.nll_sum[idx].sum(-1) / scores.tokens[idx].sum(-1)


def percentile_interval(estimate: float, replicates: torch.Tensor, confidence: float = 0.95) -> Interval:
    """The percentile interval of bootstrap `replicates` (B,) around `estimate`."""
    q = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
    low, high = torch.quantile(replicates.to(torch.float64), q).tolist()
    return Interval(float(estimate), low, high, confidence)


def check_paired(row: WindowScores, ref: WindowScores, what: str = "") -> None:
    """Raise LsMergeError unless both were scored on the same windows (count and tokens per window)."""
    if row.windows != ref.windows or not torch.equal(row.tokens, ref.tokens):
        raise LsMergeError(
            f"paired intervals need the same windows for both models{what}: got {row.windows} and {ref.windows} windows "
            "(or different tokens per window). Score both with the same tokenizer, text, max_tokens, max_length and stride."
        )


@dataclass(frozen=True)
class Replicates:
    """L on all windows (`estimate`) and L(I_b) on each resample (`values`, (B,)), for one model and text."""

    estimate: float
    values: torch.Tensor
    tokens: torch.Tensor  # (W,) the windows' token counts, to check pairing

    @classmethod
    def of(cls, scores: WindowScores, idx: torch.Tensor) -> "Replicates":
        return cls(scores.mean_nll(), resampled_mean_nll(scores, idx), scores.tokens)


def _check_replicates(a: Replicates, b: Replicates, what: str = "") -> None:
    if a.values.shape != b.values.shape or not torch.equal(a.tokens, b.tokens):
        raise LsMergeError(f"paired intervals need the same windows and resamples for both models{what}; score both with the "
                           "same tokenizer, text, max_tokens, max_length and stride.")  # fmt: skip


def difference(row: Replicates, ref: Replicates, confidence: float = 0.95) -> Interval:
    """Interval of L_row - L_ref from replicates on shared resamples."""
    _check_replicates(row, ref)
    return percentile_interval(row.estimate - ref.estimate, row.values - ref.values, confidence)


def paired_difference(row: WindowScores, ref: WindowScores, *, resamples: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> Interval:  # fmt: skip
    """Interval of L_row - L_ref (nats per token; exp of it is the perplexity ratio row / reference).

    Raises LsMergeError on zero windows or when the two were not scored on the same windows.
    """
    check_bootstrap(row.windows, resamples, confidence)
    check_paired(row, ref)
    idx = resample_indices(row.windows, resamples, seed)
    return difference(Replicates.of(row, idx), Replicates.of(ref, idx), confidence)


def domain_replicates(scores: dict[str, WindowScores], *, resamples: int = 2000, seed: int = 0) -> dict[str, Replicates]:
    """Replicates per domain on the resamples `resample_indices(W_d, resamples, domain_seed(seed, d))`:
    the same for every model scored on the same windows, so any two are paired."""
    out = {}
    for domain, s in scores.items():
        check_bootstrap(s.windows, resamples, 0.5)
        out[domain] = Replicates.of(s, resample_indices(s.windows, resamples, domain_seed(seed, domain)))
    return out


def relative(row: dict[str, Replicates], experts: dict[str, Replicates]) -> tuple[float, torch.Tensor]:
    """R = mean over domains of exp(L_row,d - L_expert,d) and its (B,) replicates."""
    if not experts:
        raise LsMergeError("the summary over domains needs at least one domain with its own expert.")
    missing = sorted(set(experts) - set(row))
    if missing:
        raise LsMergeError(f"the row has no scores on domain(s) {missing}; score every domain of the summary.")
    estimate, values = 0.0, 0.0
    for domain, expert in experts.items():
        _check_replicates(row[domain], expert, f" on {domain}")
        estimate += math.exp(row[domain].estimate - expert.estimate)
        values = values + torch.exp(row[domain].values - expert.values)
    return estimate / len(experts), values / len(experts)


def relative_to_experts(row: dict[str, WindowScores], experts: dict[str, WindowScores], *, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, torch.Tensor]:  # fmt: skip
    """R = mean over domains of PPL_row,d / PPL_expert,d, and its (B,) bootstrap replicates.

    `row` and `experts` map each domain to its window scores (the row's, and its own expert's);
    windows are resampled within each domain with `domain_seed(seed, domain)`, so the replicates
    of two rows are paired. Needs at least one domain.
    """
    if not experts:
        raise LsMergeError("the summary over domains needs at least one domain with its own expert.")
    missing = sorted(set(experts) - set(row))
    if missing:
        raise LsMergeError(f"the row has no scores on domain(s) {missing}; score every domain of the summary.")
    for domain, expert in experts.items():
        check_paired(row[domain], expert, f" on {domain}")
    kw = {"resamples": resamples, "seed": seed}
    return relative(domain_replicates({d: row[d] for d in experts}, **kw), domain_replicates(experts, **kw))


def summary_interval(row: dict[str, WindowScores], experts: dict[str, WindowScores], *, resamples: int = 2000,
                     seed: int = 0, confidence: float = 0.95) -> Interval:  # fmt: skip
    """R (see `relative_to_experts`) with its percentile interval."""
    check_bootstrap(1, resamples, confidence)
    estimate, replicates = relative_to_experts(row, experts, resamples=resamples, seed=seed)
    return percentile_interval(estimate, replicates, confidence)


def summary_difference(row: dict[str, WindowScores], ref: dict[str, WindowScores], experts: dict[str, WindowScores], *,
                       resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> Interval:  # fmt: skip
    """Interval of R_row - R_ref on shared resamples (below 0: the row is closer to the specialists)."""
    check_bootstrap(1, resamples, confidence)
    r_row, rep_row = relative_to_experts(row, experts, resamples=resamples, seed=seed)
    r_ref, rep_ref = relative_to_experts(ref, experts, resamples=resamples, seed=seed)
    return percentile_interval(r_row - r_ref, rep_row - rep_ref, confidence)

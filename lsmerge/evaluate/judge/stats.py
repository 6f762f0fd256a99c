"""Statistics of a judged comparison: counts, rates, the half-tie score of A and its interval.

The score counts ties as half a win, s = (wins + ties / 2) / n, and the Wilson score interval at
confidence level c uses z = Phi^-1(1/2 + c/2), the normal quantile:

    centre = (s + z^2 / 2n) / (1 + z^2 / n)
    half   = z / (1 + z^2 / n) * sqrt(s (1 - s) / n + z^2 / 4n^2)

A judge whose winner changed with the answer order on more than half of the pairs (position flips
> n / 2) says more about positions than about answers: the summary marks it `position_biased`, and
it is reported as "position-biased judge: no verdict" instead of its ties.
"""

from __future__ import annotations

import math
import statistics

POSITION_BIASED = "position-biased judge: no verdict"


def judge_position_biased(summary: dict) -> bool:
    """True when the judge's winner changed with the answer order on more than half of the pairs:
    its ties then say nothing about the responses, and it gives no verdict."""
    return summary.get("position_flips", 0) * 2 > summary["pairs"]


def wilson_interval(score: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion `score` observed over n trials."""
    if n <= 0:
        raise ValueError("n must be positive")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    denom = 1 + z * z / n
    centre = (score + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(score * (1 - score) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(winners: list[str], confidence: float = 0.95, flips: int = 0) -> dict:
    """Counts, rates, the half-tie score of A and its Wilson interval from per-pair winners."""
    n = len(winners)
    wins, losses = winners.count("A"), winners.count("B")
    ties = n - wins - losses
    score = (wins + ties / 2) / n
    low, high = wilson_interval(score, n, confidence)
    return {
        "pairs": n,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_rate": wins / n,
        "tie_rate": ties / n,
        "loss_rate": losses / n,
        "score": score,
        "ci_low": low,
        "ci_high": high,
        "confidence": confidence,
        "ci_method": "wilson interval on (wins + ties/2) / pairs",
        "position_flips": flips,
        "position_biased": flips * 2 > n,
    }


def format_summary(summary: dict, name_a: str, name_b: str, judge_name: str) -> str:
    """The win / tie / loss table printed by the command."""
    n = summary["pairs"]
    rows = [(f"A wins ({name_a})", "wins", "win_rate"), ("ties", "ties", "tie_rate"), (f"B wins ({name_b})", "losses", "loss_rate")]
    width = max(len(label) for label, _, _ in rows)
    lines = [
        f"A = {name_a}   B = {name_b}   judge = {judge_name}   pairs = {n} (each asked in both orders)",
        "",
        f"{'':<{width}}  {'count':>5}  {'rate':>6}",
        *(f"{label:<{width}}  {summary[count]:>5}  {summary[rate]:>6.3f}" for label, count, rate in rows),
        "",
        f"score of A (ties count 1/2): {summary['score']:.3f}, "
        f"{summary['confidence']:.0%} Wilson interval [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}]",
        f"position flips (the winner changed with the order): {summary['position_flips']} of {n}",
    ]
    if judge_position_biased(summary):
        lines.append(f"{POSITION_BIASED} (the winner changed with the order on more than half of the pairs; "
                     "the ties above are the judge's position bias, not a draw)")
    if summary.get("unparsed"):
        lines.append(f"unparseable replies counted as ties: {summary['unparsed']}")
    return "\n".join(lines)

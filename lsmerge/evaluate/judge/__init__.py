"""Pairwise judging of two response sets (`lsmerge judge`), one module per job.

Two JSONL files written by `lsmerge generate` are paired (`responses`), each pair is shown to a
judge twice, A first and then B first, and the two verdicts are combined by position-swap
debiasing (`verdicts`): a win must survive the swap, anything else is a tie. The summary scores
A with ties as half a win and gives a Wilson interval (`stats`). A judge whose winner changes with the
order on more than half of the pairs is position-biased: it gives no verdict (`stats.POSITION_BIASED`).

Judges sit behind one interface, `verdicts.Judge`: `judge(asks) -> verdicts`.
- `local.LocalJudge`: a transformers causal LM, scored by verdict-token log-probabilities.
- `endpoint.EndpointJudge`: an OpenAI-compatible chat-completions endpoint (standard library).

The command (`command.judge`) checks everything before any work, runs, prints and writes JSON.
Submodules are imported on use.
"""

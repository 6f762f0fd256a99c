"""The bridge to lm-evaluation-harness (the optional extra `pip install 'lsmerge[eval]'`).

A checkpoint is scored through lm-eval's `HFLM` built on the already loaded model object. A
hidden-state mix (`HiddenMix`) is scored through `MixedHFLM`, an `HFLM` whose forward is
`merge.hidden.mixer.MixedForward`: every source model runs its layers below `mix_layer`, and
the base runs with its residual stream at `mix_layer` replaced, at every position, by

    h <- op(h_base, [h_ft_1, ...], beta)        (lerp: (1 - beta) h_base + beta h_ft)

so a representation merge is scored by the same requests, batches and metrics as a weight
merge; at beta = 0 the hook leaves h untouched and the scores are the base's, bit for bit.

lm-eval is imported only inside these functions: `lsmerge` imports and its other commands run
without it, and `require_lm_eval` names the extra when it is missing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lsmerge.errors import LsMergeError

INSTALL_HINT = "pip install 'lsmerge[eval]'"


@dataclass
class HiddenMix:
    """A hidden-state mix scored as one model (every position of every forward is mixed).

    Attributes:
        base: the base checkpoint (folder or name); its tokenizer, upper layers and LM head are used.
        fine_tuned: the fine-tuned checkpoints whose residual streams are mixed in (one for lerp /
            slerp, one or more for mean); they share the base's tokenizer.
        operator: lerp | slerp | mean (a registered operator with sources).
        mix_layer: residual-stream index 0..N (L = the input of decoder layer L).
        beta: mixing ratio in [0, 1] (0 = the base model unchanged).
        weights: per fine-tuned model weights for mean (None = equal).
        label: the row's name in the table (default: operator(base+fine_tuned)@mix_layer,beta).
    """

    base: str
    fine_tuned: list[str]
    operator: str = "lerp"
    mix_layer: int = 0
    beta: float = 0.5
    weights: list[float] | None = None
    label: str | None = None


@dataclass(frozen=True)
class TaskScore:
    """One metric of one model on one lm-eval task: `value` with lm-eval's standard error."""

    model: str
    task: str
    metric: str
    value: float
    stderr: float | None
    n_items: int
    model_path: str
    items: tuple[float, ...] | None = None  # the metric on each item, in doc order (the unit of paired intervals)


def require_lm_eval():
    """The `lm_eval` module, or one LsMergeError saying how to install it."""
    try:
        import lm_eval
    except ImportError as e:
        raise LsMergeError(
            f"`lsmerge evaluate --tasks` runs lm-evaluation-harness, which is not installed ({e}); install it with: "
            f"{INSTALL_HINT}"
        ) from None
    return lm_eval


@functools.cache
def _mixed_hflm_class():
    from lm_eval.models.huggingface import HFLM

    class MixedHFLM(HFLM):
        """HFLM whose logits come from a `MixedForward` (the base with its residual stream mixed)."""

        def __init__(self, forward, **kwargs):
            super().__init__(**kwargs)
            self._mixed_forward = forward

        def _model_call(self, inps, attn_mask=None, labels=None):
            import torch

            if attn_mask is not None or labels is not None:
                raise LsMergeError("hidden-state mixes are causal LMs; lm-eval asked for a seq2seq call")
            with torch.no_grad():
                return self._mixed_forward(input_ids=inps).logits

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise LsMergeError(
                "hidden-state mixes are scored on log-likelihood tasks (multiple choice, perplexity) here; "
                "for generation tasks write the responses with `lsmerge generate` and judge them with `lsmerge judge`."
            )

    return MixedHFLM


def make_lm(model, tokenizer, *, batch_size: int, forward=None):
    """An lm-eval LM over the loaded causal `model` (its device and dtype as they are): `HFLM`, or
    `MixedHFLM` when `forward` (a `MixedForward` on `model`) is given."""
    require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    if forward is None:
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    return _mixed_hflm_class()(forward, pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def known_tasks() -> list[str]:
    """lm-eval's own task, group and tag names (indexing its task YAMLs takes seconds)."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager().all_tasks


def task_manager(include_paths: list[str], *, own_tasks: bool):
    """An lm-eval TaskManager over the local task folders `include_paths`, plus lm-eval's own tasks
    when `own_tasks` (indexing those takes seconds: build one per run, not one per model)."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_paths or None, include_defaults=own_tasks)


def run_tasks(lm, tasks: list[str], manager, *, limit: int | None, seed: int) -> dict:
    """lm-eval's `simple_evaluate` on `lm` with the tasks of `manager` (`task_manager`), zero-shot as
    each task defines, with each item's metrics logged (`task_scores` keeps them for paired intervals).
    Returns its results dict ({"results": {task: {"acc,none": ..., "acc_stderr,none": ...}},
    "n-samples": ..., "samples": {task: [{"doc_id", "filter", "acc", ...}, ...]}})."""
    require_lm_eval()
    from lm_eval import simple_evaluate

    return simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=True,
                           random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                           bootstrap_iters=1000)  # fmt: skip


def item_values(samples: list[dict], metric: str, filt: str) -> tuple[float, ...] | None:
    """One metric's value on every item of a task's logged samples (lm-eval's per-document records),
    ordered by doc_id; None when a record lacks it or holds no number (an aggregate-only metric)."""
    rows = sorted((s for s in samples if s.get("filter", filt) == filt), key=lambda s: s["doc_id"])
    values = [s.get(metric) for s in rows]
    if not rows or not all(isinstance(v, (int, float)) for v in values):  # a bool (acc of one item) counts as 0 / 1
        return None
    return tuple(float(v) for v in values)


def task_scores(results: dict, model: str, model_path: str) -> list[TaskScore]:
    """The metrics of lm-eval's results as TaskScores ("acc,none" -> metric "acc"; a filter other than
    "none" is kept as "metric,filter"); stderr None where lm-eval gives none ("N/A"); each metric's
    per-item values where the samples were logged (`item_values`)."""
    scores = []
    for task, metrics in results["results"].items():
        n = int(results.get("n-samples", {}).get(task, {}).get("effective", 0))
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name = metric if filt == "none" else key
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            stderr = float(stderr) if isinstance(stderr, (int, float)) else None
            items = item_values(results.get("samples", {}).get(task, []), metric, filt)
            scores.append(TaskScore(model, task, name, float(value), stderr, n, model_path, items))
    return scores

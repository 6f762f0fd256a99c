"""Streaming executor: one tensor at a time from the inputs to `CheckpointWriter`.

Peak memory is about (number of inputs + 2) x the largest tensor, independent of depth.
Every input tensor read is checked for NaN / Inf (named in the error); the writer is atomic,
so an error leaves no output folder behind.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from lsmerge.errors import LsMergeError
from lsmerge.io.store import CheckpointStore
from lsmerge.io.writer import CheckpointWriter
from lsmerge.memory import return_freed_tensors_to_the_os
from lsmerge.merge.weight.base import TensorContext
from lsmerge.merge.weight.plan import MergePlan


def _load(store: CheckpointStore, name: str) -> torch.Tensor:
    t = store.get(name)
    # one reduction instead of an elementwise mask: any NaN / Inf makes the sum non-finite;
    # a finite tensor whose float32 sum overflows is confirmed with the full check
    if t.is_floating_point() and t.numel() and not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
        raise LsMergeError(f"tensor {name!r} of {store.path} holds NaN or Inf values. Repair or re-export that checkpoint.")
    return t


def fit_rows(t: torch.Tensor, rows: int, fill: torch.Tensor) -> torch.Tensor:
    """Truncate `t` to `rows` rows, or pad it with `fill`'s rows beyond its own (vocabulary mismatch)."""
    if t.shape[0] >= rows:
        return t[:rows]
    return torch.cat([t, fill[t.shape[0] : rows].to(t.dtype)], dim=0)


def run_plan(plan: MergePlan, grams: dict[str, list[torch.Tensor]] | None = None, progress: bool = True):
    """Execute a validated plan; returns the output folder."""
    return_freed_tensors_to_the_os()
    ref = plan.reference
    device = torch.device(plan.device)
    total = len(plan.tasks)
    bar = tqdm(total=total, unit="tensor", desc=f"merge-weights {plan.method.name}", disable=not progress, dynamic_ncols=True)
    start, read = time.perf_counter(), 0
    with CheckpointWriter(
        plan.out,
        source=ref.path,
        inputs=[s.path for s in plan.inputs],
        max_shard_size=plan.max_shard_size,
        overwrite=plan.overwrite,
        config=plan.provenance,
        dtype=plan.dtype,
    ) as writer:
        for task in plan.tasks:
            ref_t = _load(ref, task.name)
            read += ref_t.numel() * ref_t.element_size()
            if task.params is None:
                writer.add(task.name, ref_t)
            else:
                xs = []
                for s in plan.models:
                    x = ref_t if s is ref else _load(s, task.name)
                    if s is not ref:
                        read += x.numel() * x.element_size()
                    if task.vocab_rows is not None:
                        x = fit_rows(x, task.vocab_rows, ref_t)
                    xs.append(x.to(device))
                del x  # xs is the only reference left: the method may release it
                base_t = ref_t.to(device) if plan.base is not None else None
                ctx = TensorContext(task.name, plan.seed, grams.get(task.name) if grams else None, task.kind)
                merged = plan.method.merge(xs, base_t, task.params, ctx)
                out_dtype = plan.dtype or ref_t.dtype
                writer.add(task.name, merged.to(out_dtype).cpu())
                del xs, base_t, merged
            bar.update(1)
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{read / elapsed / 1e6:.0f} MB/s", refresh=False)
    bar.close()
    return writer.out

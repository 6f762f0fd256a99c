"""Streaming executor: one tensor at a time from the inputs to `CheckpointWriter`.

A reader thread reads the inputs of the next output tensors while the current ones are merged
(two at once on the CPU) and written (file reads and torch kernels release the GIL), at most
`READ_AHEAD` tensors ahead, so peak memory is a few times (number of inputs + 2) x the largest
tensor, independent of depth. Every input tensor read is checked for NaN / Inf (named in the error); the writer is
atomic, so an error leaves no output folder behind.
"""

from __future__ import annotations

import collections
import contextlib
import math
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.store import CheckpointStore
from lsmerge.io.writer import CheckpointWriter
from lsmerge.memory import return_freed_tensors_to_the_os
from lsmerge.merge.weight.base import TensorContext
from lsmerge.merge.weight.plan import MergePlan, TensorTask

READ_AHEAD = 2  # output tensors whose inputs may be read before their turn


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


def task_sources(plan: MergePlan, task: TensorTask) -> tuple[list[tuple[CheckpointStore, str]], tuple[CheckpointStore, str] | None]:
    """(the method's inputs, the base) of one task as (store, tensor name); for a copied tensor
    (params None) the one input it is copied from."""
    if task.inputs is not None:
        return task.inputs, task.base_input
    if task.params is None:
        return [(plan.reference, task.name)], None
    return [(s, task.name) for s in plan.models], ((plan.base, task.name) if plan.base is not None else None)


def _read_task(plan: MergePlan, task: TensorTask) -> dict[tuple[int, str], torch.Tensor]:
    """Every distinct tensor a task reads, keyed by (id(store), name), each read once."""
    inputs, base = task_sources(plan, task)
    out: dict[tuple[int, str], torch.Tensor] = {}
    for store, name in inputs + ([base] if base is not None else []):
        key = (id(store), name)
        if key not in out:
            out[key] = _load(store, name)
    return out


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _read_ahead(plan: MergePlan) -> Iterator[tuple[TensorTask, dict]]:
    """Yield (task, its tensors) in plan order; a daemon thread reads up to READ_AHEAD tasks ahead.
    An error in the reader is raised here, at the task it hit."""
    q: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
    stop = threading.Event()

    def reader():
        try:
            for task in plan.tasks:
                if stop.is_set():
                    return
                q.put((task, _read_task(plan, task), None))
        except BaseException as e:  # handed to the consumer
            q.put((None, None, e))

    thread = threading.Thread(target=reader, name="lsmerge-reader", daemon=True)
    # SIGINT / SIGTERM raise `Interrupted` in the main thread at any bytecode; one landing inside
    # `thread.start()` would leave a running reader that no `finally` joins (and a daemon thread
    # killed inside torch at exit aborts the process). So they wait, blocked, until start() is done
    # and are handled inside the `try` below, which always stops and joins the reader.
    masked = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    if masked:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        thread.start()
        if masked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            masked = False
        for _ in plan.tasks:
            task, tensors, error = q.get()
            if error is not None:
                raise error
            yield task, tensors
    finally:
        if masked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        stop.set()
        if thread.ident is not None:  # None: start() itself failed, nothing to stop
            while thread.is_alive():  # unblock a reader waiting on a full queue
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
            thread.join()


def _all_equal(ts: list[torch.Tensor]) -> bool:
    """Whether every tensor equals the first in shape, dtype and every value."""
    first = ts[0]
    head = first.reshape(-1)[:4096]  # a cheap first look rejects most unequal tensors
    return all(t.shape == first.shape and t.dtype == first.dtype and torch.equal(t.reshape(-1)[:4096], head)
               and torch.equal(t, first) for t in ts[1:])


def _merge_task(plan: MergePlan, task: TensorTask, tensors: dict, device: torch.device, grams) -> torch.Tensor:
    """The output tensor of one task, in the reference input's dtype (the base's, else the first
    input's) unless the plan sets one."""
    inputs, base = task_sources(plan, task)

    def take(src):
        t = tensors[(id(src[0]), src[1])]
        return t.to(plan.load_dtype) if plan.load_dtype is not None and t.is_floating_point() else t

    ref_t = take(base) if base is not None else take(inputs[0])
    if task.params is None:
        return ref_t
    out_dtype = plan.dtype or ref_t.dtype
    xs = [take(s) for s in inputs]
    base_t = take(base) if base is not None else None
    if task.vocab is not None:
        xs, base_t = task.vocab.apply(xs, base_t)
    if task.vocab_rows is not None:
        xs = [fit_rows(x, task.vocab_rows, ref_t) for x in xs]
    del ref_t
    if plan.method.keeps_equal_inputs(len(xs), base_t is not None, task.params) and _all_equal(xs if base_t is None else [base_t, *xs]):
        return xs[0].to(out_dtype)  # what the method's arithmetic returns there, bit for bit (see the method)
    xs = [x.to(device) for x in xs]
    tensors.clear()  # xs is the only reference left: the method may release it
    if base_t is not None:
        base_t = base_t.to(device)
    ctx = TensorContext(task.name, plan.seed, grams.get(task.name) if grams else None, task.kind)
    return plan.method.merge(xs, base_t, task.params, ctx).to(out_dtype)


def merge_workers(plan: MergePlan) -> int:
    """Tensors merged at once: 2 on the CPU (a merge's heavy kernels, such as TIES' sort, run on
    one core; another tensor's merge fills the second), 1 on an accelerator."""
    return 2 if plan.device == "cpu" and torch.get_num_threads() > 1 else 1


def run_plan(plan: MergePlan, grams: dict[str, list[torch.Tensor]] | None = None, progress: bool = True):
    """Execute a validated plan; returns the output folder.

    Three stages overlap: the reader thread reads ahead, `merge_workers` tensors are merged at
    once, and the outputs are written in plan order (so the bytes do not depend on timing:
    each merge is a pure function of its inputs)."""
    from tqdm.auto import tqdm

    return_freed_tensors_to_the_os()
    ref = plan.reference
    device = torch.device(plan.device)
    bar = tqdm(total=len(plan.tasks), unit="tensor", desc=f"merge-weights {plan.method.name}", disable=not progress,
               dynamic_ncols=True)
    start, read = time.perf_counter(), 0
    workers = merge_workers(plan)
    pending: collections.deque = collections.deque()

    def write_oldest(writer: CheckpointWriter) -> None:
        task, future = pending.popleft()
        merged = future.result()
        writer.add(task.name, merged.cpu())
        del merged
        bar.update(1)
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix_str(f"{read / elapsed / 1e6:.0f} MB/s", refresh=False)

    with CheckpointWriter(
        plan.out,
        source=ref.path,
        inputs=[s.path for s in plan.inputs],
        max_shard_size=plan.max_shard_size,
        overwrite=plan.overwrite,
        config=plan.provenance,
        dtype=plan.dtype,
        side_files=plan.side_files,
    ) as writer, contextlib.closing(_read_ahead(plan)) as reads, ThreadPoolExecutor(workers, "lsmerge-merge") as pool:
        try:
            for task, tensors in reads:
                read += sum(t.numel() * t.element_size() for t in tensors.values())
                pending.append((task, pool.submit(_merge_task, plan, task, tensors, device, grams)))
                del tensors
                while len(pending) >= workers:
                    write_oldest(writer)
            while pending:
                write_oldest(writer)
        finally:
            for _, future in pending:
                future.cancel()
    bar.close()
    return writer.out

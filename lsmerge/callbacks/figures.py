"""TensorBoard figures of the weight VAE: weight histograms and relative error per layer/kind.

After each validation (global rank 0 only, and only when a TensorBoard logger is attached;
`logger=False` or another logger makes this a no-op):

- histograms `weights/original` and `weights/reconstruction` of the first validation batch's
  real values in the original scale;
- a figure `val/rel_frob_by_layer`: relative Frobenius error ||W^ - W||_F / ||W||_F of every
  validated tensor against its layer index, one line per module kind (and per source model).
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


def tensorboard_writer(trainer: L.Trainer):
    """The SummaryWriter of the trainer's TensorBoard logger, or None when it has none."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class WeightFigures(L.Callback):
    """Histograms and the per-layer / per-kind error figure (see module doc)."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        tb = tensorboard_writer(trainer)
        if tb is None:
            return
        step = trainer.global_step
        sample = getattr(pl_module, "val_sample", None)
        if sample is not None and sample[0].numel():
            tb.add_histogram("weights/original", sample[0].float(), step)
            tb.add_histogram("weights/reconstruction", sample[1].float(), step)
        stats = getattr(pl_module, "val_tensor_stats", None)
        table = getattr(trainer.datamodule, "table", None) if trainer.datamodule is not None else None
        if stats is None or not table:
            return
        fig = error_figure(table, stats["rel_frob"])
        if fig is not None:
            tb.add_figure("val/rel_frob_by_layer", fig, step, close=True)


def error_figure(table: list[dict], rel_frob: torch.Tensor):
    """matplotlib Figure of relative error against layer, one line per (kind, source); None if empty."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for tid, rec in enumerate(table):
        if tid >= len(rel_frob) or math.isnan(float(rel_frob[tid])):
            continue
        label = rec["name"].rsplit(".", 2)[-2] if "." in rec["name"] else rec["name"]
        if rec.get("source", 0):
            label += f" (source {rec['source']})"
        series.setdefault(label, []).append((rec["layer_index"], float(rel_frob[tid])))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel("relative Frobenius error")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig

"""`lsmerge inspect`: per-tensor statistics of a checkpoint, grouped by layer and kind.

The heavy-tail diagnosis of the LS-Merge paper: excess-free (Pearson) kurtosis, absolute
maximum and the fraction of values beyond 3 standard deviations. Reads one tensor at a time.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.archmap import ArchitectureMap, expand_kinds
from lsmerge.io.atomic import atomic_path
from lsmerge.io.store import open_checkpoint


@dataclass
class TensorStats:
    name: str
    layer: int | None
    kind: str
    shape: tuple[int, ...]
    dtype: str
    mean: float
    std: float
    kurtosis: float
    absmax: float
    frac_beyond_3std: float


def tensor_stats(x: torch.Tensor) -> dict[str, float]:
    """Moments of a tensor computed in float64.

    kurtosis = E[(x - mu)^4] / sigma^4 (Pearson: 3 for a Gaussian); NaN when sigma is 0.
    frac_beyond_3std = mean(|x - mu| > 3 sigma).
    """
    x = x.detach().reshape(-1).to(torch.float64)
    if x.numel() == 0:
        nan = float("nan")
        return dict(mean=nan, std=nan, kurtosis=nan, absmax=nan, frac_beyond_3std=nan)
    mu = x.mean()
    d = x - mu
    var = (d * d).mean()
    std = var.sqrt()
    kurt = ((d**4).mean() / var**2).item() if var > 0 else float("nan")
    beyond = (d.abs() > 3 * std).double().mean().item() if var > 0 else 0.0
    return dict(mean=mu.item(), std=std.item(), kurtosis=kurt, absmax=x.abs().max().item(), frac_beyond_3std=beyond)


def collect_stats(model: str, kinds: list[str] | None = None, layer_pattern: str | None = None) -> list[TensorStats]:
    """Statistics of every floating-point tensor of `model` (optionally only some kinds)."""
    store = open_checkpoint(model)
    arch = ArchitectureMap.from_config(store.config, layer_pattern=layer_pattern, where=store.path)
    wanted = expand_kinds(kinds) if kinds else None
    rows = []
    for name in store.names:
        role = arch.role(name)
        info = store.info(name)
        if (wanted is not None and role.kind not in wanted) or not info.dtype.is_floating_point:
            continue
        rows.append(TensorStats(name, role.layer, role.kind, info.shape, str(info.dtype).removeprefix("torch."),
                                **tensor_stats(store.get(name))))
    return rows


def _sort_key(r: TensorStats):
    return (-1 if r.layer is None else r.layer, r.kind, r.name)


def format_table(rows: list[TensorStats]) -> str:
    header = f"{'layer':>5}  {'kind':<9}  {'shape':<14}  {'dtype':<8}  {'mean':>10}  {'std':>9}  {'kurt':>7}  {'absmax':>8}  {'>3std':>7}  name"
    lines = [header, "-" * len(header)]
    for r in sorted(rows, key=_sort_key):
        shape = "x".join(map(str, r.shape))
        lines.append(
            f"{'-' if r.layer is None else r.layer:>5}  {r.kind:<9}  {shape:<14}  {r.dtype:<8}  {r.mean:>10.3e}  "
            f"{r.std:>9.3e}  {r.kurtosis:>7.2f}  {r.absmax:>8.3f}  {100 * r.frac_beyond_3std:>6.2f}%  {r.name}"
        )
    by_kind: dict[str, list[float]] = {}
    for r in rows:
        if not math.isnan(r.kurtosis):
            by_kind.setdefault(r.kind, []).append(r.kurtosis)
    lines.append("")
    lines.append("kurtosis by kind (min / median / max):")
    for kind, ks in sorted(by_kind.items()):
        ks = sorted(ks)
        lines.append(f"  {kind:<9} {ks[0]:7.2f} / {ks[len(ks) // 2]:7.2f} / {ks[-1]:7.2f}  ({len(ks)} tensors)")
    return "\n".join(lines)


def plot_kurtosis(rows: list[TensorStats], path: str | Path, title: str = "") -> Path:
    """Figure: kurtosis per layer, one line per kind (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    kinds = sorted({r.kind for r in rows if r.layer is not None})
    for kind in kinds:
        pts = sorted((r.layer, r.kurtosis) for r in rows if r.kind == kind and r.layer is not None and not math.isnan(r.kurtosis))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=kind)
    ax.axhline(3.0, color="grey", ls="--", lw=0.8, label="Gaussian (3)")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("kurtosis")
    ax.set_title(title or "kurtosis per layer")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path


def inspect(
    *,
    model: str,
    kinds: list[str] | None = None,
    layer_pattern: str | None = None,
    plot: str | None = None,
    out: str | None = None,
) -> list[TensorStats]:
    """Print a table of a checkpoint's tensors by layer and kind: shape, dtype, mean, std,
    kurtosis, absolute max and the fraction beyond 3 std. Reads one tensor at a time.

    Args:
        model: checkpoint folder (safetensors, single or sharded) or a name under checkpoints/base/ or
            checkpoints/merged/.
        kinds: only these module kinds or groups (e.g. [mlp, attn, qkv, norm, embed]).
        layer_pattern: regex with a (?P<layer>\\d+) group, for architectures lsmerge does not know.
        plot: write a PNG of kurtosis per layer by kind here.
        out: also write the rows as .json or .csv (by extension).
    """
    if out and not out.endswith((".json", ".csv")):
        raise LsMergeError(f"--out {out!r} must end with .json or .csv.")
    if plot and not plot.endswith(".png"):
        raise LsMergeError(f"--plot {plot!r} must end with .png.")
    from lsmerge.io.hf import resolve_model

    model = str(resolve_model(model))
    rows = collect_stats(model, kinds, layer_pattern)
    if not rows:
        raise LsMergeError(f"no floating-point tensors of kinds {kinds} in {model}. Widen --kinds.")
    print(format_table(rows))
    if plot:
        print(f"wrote {plot_kurtosis(rows, plot, title=Path(model).name)}")
    if out:
        with atomic_path(out) as tmp:
            if out.endswith(".json"):
                tmp.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
            else:
                with open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
                    w.writeheader()
                    for r in rows:
                        w.writerow(asdict(r))
        print(f"wrote {out}")
    return rows

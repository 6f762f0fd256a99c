"""Representation metrics as torchmetrics `Metric`s, accumulated over batches (float32).

Linear CKA (`LinearCKA`), per sequence in its T x T (kernel) form: with X, Y the (T, H) token
states of one sequence, centred over tokens (Xc = X - mean_t X),

    K = Xc Xc^T,  L = Yc Yc^T   (T x T),   CKA(X, Y) = <K, L>_F / (|K|_F |L|_F)

(equal to the H x H form |Xc^T Yc|_F^2 / (|Xc^T Xc|_F |Yc^T Yc|_F) but cheaper when T < H).
The metric is the mean CKA over the sequences seen; padding tokens are dropped via a mask.

Midness (`Midness`), per token, of a mixed state m against the base b and fine-tuned f states,
with d(x, y) = arccos(<x/|x|, y/|y|>) the angle (geodesic distance on the unit sphere) and
g = slerp(b, f, target) the point of the b -> f geodesic at fraction `target` (0.5: midpoint):

    midpoint_cos   = cos(m, g)
    arc_ratio      = d(b, m) / d(b, f)                (tokens with d(b, f) > eps only)
    arc_deviation  = |d(b, m) - target * d(b, f)|
    d_fm           = d(f, m)
    geodesic_excess= d(b, m) + d(m, f) - d(b, f)      (0 on the geodesic; > 0 off it)

Each is averaged over all tokens seen (arc_ratio over its eligible tokens).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def linear_cka_tt(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Linear CKA of (T, H1) and (T, H2) token states in the T x T form, float32 scalar."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear CKA needs (T, H) inputs with the same T, got {tuple(x.shape)} and {tuple(y.shape)}")
    xc = x.float() - x.float().mean(dim=0, keepdim=True)
    yc = y.float() - y.float().mean(dim=0, keepdim=True)
    k = xc @ xc.T
    l_ = yc @ yc.T
    return (k * l_).sum() / (k.norm() * l_.norm()).clamp_min(eps)


def _angle(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    cos = torch.nn.functional.cosine_similarity(x, y, dim=-1, eps=eps)
    return torch.acos(cos.clamp(-1.0, 1.0))


def _sequences(x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    if x.ndim == 2:
        x = x.unsqueeze(0)
        mask = None if mask is None else mask.reshape(1, -1)
    if mask is None:
        return list(x)
    return [seq[m.bool()] for seq, m in zip(x, mask)]


class LinearCKA(Metric):
    """Mean per-sequence linear CKA (T x T form, float32) between two sets of hidden states.

    update(x, y, mask=None): x (batch, T, H1) or (T, H1); y likewise; mask (batch, T) 0/1.
    Sequences with fewer than 2 real tokens are skipped (CKA is undefined on one token).
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        for xs, ys in zip(_sequences(x, mask), _sequences(y, mask)):
            if xs.shape[0] < 2:
                continue
            self.total += linear_cka_tt(xs, ys).to(self.total.device)
            self.count += 1

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1) if self.count > 0 else torch.tensor(float("nan"))


class Midness(Metric):
    """Where mixed states lie relative to the base -> fine-tuned geodesic (see module doc).

    update(h_base, h_ft, h_mix, mask=None): (..., H) states, mask broadcast over the leading dims.
    compute() -> dict of float32 scalars: midpoint_cos, arc_ratio, arc_deviation, d_fm, geodesic_excess.
    """

    full_state_update = False
    NAMES = ("midpoint_cos", "arc_ratio", "arc_deviation", "d_fm", "geodesic_excess")

    def __init__(self, target: float = 0.5, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.target = float(target)
        self.eps = float(eps)
        for name in self.NAMES:
            self.add_state(name, default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("ratio_tokens", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, h_base: torch.Tensor, h_ft: torch.Tensor, h_mix: torch.Tensor, mask=None) -> None:
        from lsmerge.merge.hidden import slerp

        b, f, m = (t.float().reshape(-1, t.shape[-1]) for t in (h_base, h_ft, h_mix))
        if mask is not None:
            keep = mask.reshape(-1).bool().to(b.device)
            b, f, m = b[keep], f[keep], m[keep]
        if b.shape[0] == 0:
            return
        g = slerp(b, f, self.target)
        d_bf, d_bm, d_fm = _angle(b, f), _angle(b, m), _angle(f, m)
        self.midpoint_cos += torch.nn.functional.cosine_similarity(m, g, dim=-1).sum()
        eligible = d_bf > self.eps
        self.arc_ratio += (d_bm[eligible] / d_bf[eligible]).sum()
        self.arc_deviation += (d_bm - self.target * d_bf).abs().sum()
        self.d_fm += d_fm.sum()
        self.geodesic_excess += (d_bm + d_fm - d_bf).sum()
        self.tokens += b.shape[0]
        self.ratio_tokens += int(eligible.sum())

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.tokens.clamp_min(1).float()
        out = {name: getattr(self, name) / n for name in self.NAMES}
        out["arc_ratio"] = self.arc_ratio / self.ratio_tokens.clamp_min(1).float() if self.ratio_tokens > 0 else torch.tensor(float("nan"))
        return out

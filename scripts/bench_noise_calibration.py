"""The noise-calibration reference curve: perplexity of a model whose codec-covered tensors are
perturbed in known ways, beside the relative error of each perturbation (issue 13).

    PYTHONPATH=. .venv/bin/python scripts/bench_noise_calibration.py --out checkpoints/noise_calibration
    PYTHONPATH=. .venv/bin/python scripts/bench_noise_calibration.py --split test --max_tokens 2048

Every selected tensor W (default: all MLP tensors, `--kinds mlp`) is replaced by W + E for each
perturbation, the model is scored, and W is restored:

- `iid e`: E = e ||W||_F / ||N||_F * N, N ~ N(0, 1) iid, so ||E||_F / ||W||_F = e exactly per tensor;
- `iid e, top q of |w| exact`: the same with the top-q entries of |W| left unperturbed;
- `prop e`: E proportional to |W|: E = c |W| * N with c chosen so the relative error is e;
- `int8 per row`: symmetric round-to-nearest with scale max|W_i,:| / 127 per row;
- `int4 per group g`: symmetric round-to-nearest, levels -7..7, scale max|group| / 7 per group
  of `g` consecutive values of a row.

Codec rows (`--pca_rank r`, or `--vae CKPT`): every tensor through a PCA codec of rank r fitted on
the tensors themselves (`lsmerge.codecs.pca`) or through a trained weight VAE, with output
weighting (PCA; `--importance FILE`, the statistics of `lsmerge importance`) and / or the exact
side channel (`--side_channel q`), one row per combination asked for (see `--codec_rows`).
With `--importance` every row also states its output-weighted relative error.

Scoring is the results pipeline's: `lsmerge.evaluate.perplexity.encode_text` and
`perplexity_of_ids` on `<root>/corpora/<corpus>/<split>.txt`, the first `max_tokens` tokens,
windows of `max_length` moved by `stride`, float32 on CPU (`configs/results/smollm2_codec.yaml`:
test split, 2048 tokens, 512 / 512). The default split here is validation; the test split is
for the results plans only.

The relative error of a row is the global one, sqrt(sum ||E||^2 / sum ||W||^2) over the
tensors, and the mean of the per-tensor ratios. Writes `<out>/noise_calibration.json`, a CSV and
a plot (`noise_calibration.png`: perplexity against relative error, one line per corpus).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import time
from pathlib import Path

import torch

LEVELS = (0.005, 0.01, 0.024, 0.05, 0.10)


# -- perturbations (pure; lsmerge.evaluate.noise_reference, also behind `lsmerge perturb`) ---------
from lsmerge.evaluate.noise_reference import int4_groups, int8_rows, perturbation, relative_errors  # noqa: E402


class RoundingCodec:
    """int8 / int4 rounding behind the `Codec` protocol (z holds the rounded tensor; the stated size
    counts it at 8 or 4 bits per value plus a float32 scale per row or group), so the exact side
    channel can wrap a lossy codec whose error is not spread like noise."""

    def __init__(self, kind: str):
        self.kind = kind
        self.chunk_size, self.bits, self.group = (None, 8, None) if kind == "int8" else (None, 4, 64)

    def covers(self, name: str) -> bool:
        return True

    def encode(self, name: str, weight: torch.Tensor):
        from lsmerge.codecs.base import TensorLatent

        q = int8_rows(weight.float()) if self.kind == "int8" else int4_groups(weight.float(), 64)
        return TensorLatent(z=q, norm=torch.zeros(0), shape=tuple(weight.shape))

    def decode(self, name: str, latent) -> torch.Tensor:
        return latent.z.clone()

    def latent_values(self, shape) -> float:
        """float32-equivalent values stored: bits/32 per weight plus one scale per row / group."""
        rows, cols = shape
        scales = rows if self.kind == "int8" else rows * math.ceil(cols / 64)
        return rows * cols * self.bits / 32 + scales


def perturbations(seed: int) -> list[tuple[str, str, float | None, object]]:
    """(name, family, nominal relative error, fn(name, w) -> w') for every row of the curve
    (`lsmerge.evaluate.noise_reference.perturbation`, the same noise `lsmerge perturb` writes)."""
    rows = [(f"iid {e:.1%}", "iid", e, perturbation("iid", e, seed=seed)) for e in LEVELS]
    rows.append(("iid 2.4%, top 0.1% of |w| exact", "iid_keep_top", 0.024, perturbation("iid", 0.024, seed=seed, keep_top=1e-3)))
    rows += [(f"prop |w| {e:.1%}", "prop", e, perturbation("prop", e, seed=seed)) for e in (0.024, 0.10)]
    rows.append(("int8 per row", "int8", None, perturbation("int8")))
    rows.append(("int4 per group 64", "int4", None, perturbation("int4", group=64)))
    return rows


# -- scoring -------------------------------------------------------------------------------------
def load_texts(tokenizer, root: str, corpora: list[str], split: str, max_tokens: int) -> dict[str, torch.Tensor]:
    from lsmerge.data.corpora import corpus_path
    from lsmerge.evaluate.perplexity import encode_text

    out = {}
    for c in corpora:
        path = corpus_path(root, c, split)
        out[c] = encode_text(tokenizer, path.read_text(encoding="utf-8"), max_tokens)
    return out


def score(model, ids: dict[str, torch.Tensor], a, pad_id: int) -> dict[str, float]:
    from lsmerge.evaluate.perplexity import perplexity_of_ids

    out = {}
    with torch.inference_mode():
        for c, t in ids.items():
            out[c] = perplexity_of_ids(model, t, max_length=a.max_length, stride=a.stride, batch_size=a.batch_size,
                                       pad_id=pad_id)[0]
    return out


def apply(params: dict[str, torch.nn.Parameter], originals: dict[str, torch.Tensor], fn, stats=None) -> tuple:
    """Set every parameter to fn(name, W); (global relative error, mean per-tensor relative error, global
    output-weighted relative error sqrt(sum ||E diag(sqrt h)||^2 / sum ||W diag(sqrt h)||^2), None without stats)."""
    per = []

    def applied():
        for name, w in originals.items():
            new = fn(name, w).to(w.dtype)
            per.append(relative_errors([(name, w, new, None)])["relative_error"])
            params[name].copy_(new)
            yield name, w, new, stats.for_tensor(name, w.shape) if stats is not None else None

    with torch.no_grad():
        e = relative_errors(applied())
    return e["relative_error"], sum(per) / len(per), e["output_weighted_error"]


def codec_rows(a, originals: dict[str, torch.Tensor], family: str | None, stats) -> list[tuple[str, str, float | None, object, dict]]:
    """Codec rows: a PCA codec of rank a.pca_rank fitted on the tensors, or the VAE checkpoint a.vae;
    per spec of a.codec_rows: plain, s (side channel, saliency w^2 h), m (side channel, saliency
    w^2), e (side channel, largest errors (w - w^)^2 h), w (output-weighted PCA), ws / we (both)."""
    from lsmerge.codecs.pca import PCACodec
    from lsmerge.codecs.side_channel import SideChannelCodec, compression

    vae = None
    if a.rounding:
        vae = RoundingCodec(a.rounding)
    elif a.vae:
        from lsmerge.codecs.vae import VAECodec

        vae = VAECodec.from_checkpoint(a.vae)
    rows = []
    for spec in a.codec_rows:
        weighted, side = "w" in spec, "s" in spec or "m" in spec or "e" in spec
        if (weighted or "s" in spec or "e" in spec) and stats is None:
            raise SystemExit(f"codec row {spec!r} needs --importance")
        if vae is not None:
            if weighted:
                raise SystemExit("output weighting of a VAE is a training option (lsmerge fit); use rows plain, s, m, e")
            codec = vae
            label = (a.rounding + (" per row" if a.rounding == "int8" else " per group 64")) if a.rounding else \
                f"VAE {Path(a.vae).parent.name} (ratio {vae.chunk_size / vae.model.hparams.latent_dim:g})"
        else:
            codec = PCACodec.fit(((n, [w]) for n, w in originals.items()), chunk_size=a.chunk_size, rank=a.pca_rank,
                                 family=family, layout=a.layout, importance=stats if weighted else None)
            label = f"PCA rank {a.pca_rank} (ratio {a.chunk_size / a.pca_rank:g})"
        if side:
            codec = SideChannelCodec(codec, a.side_channel, None if "m" in spec else stats,
                                     "error" if "e" in spec else "saliency")
        name = (label + (", output-weighted" if weighted else "") + (f", side channel {a.side_channel:g}" if side else "")
                + (" by |w|" if "m" in spec else "") + (" by error" if "e" in spec else ""))
        info = {"codec": a.rounding or a.vae or "pca", "output_weighting": weighted, "side_channel": a.side_channel if side else 0.0,
                "saliency": None if not side else ("(w - w^)^2 h" if "e" in spec else "w^2 h" if "s" in spec else "w^2")}
        n0, w0 = next(iter(originals.items()))  # every SmolLM2 MLP tensor has the same size
        lat = codec.encode(n0, w0)
        stored = vae.latent_values(tuple(w0.shape)) if a.rounding else lat.z.numel() + lat.norm.numel()
        info.update(compression(w0.numel(), stored, 0 if lat.side is None else lat.side[0].numel()))
        rows.append((name, "codec", None, lambda n, w, c=codec: c.decode(n, c.encode(n, w)), info))
    return rows


def plot(rows: list[dict], corpora: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for c, color in zip(corpora, ("C0", "C1", "C2", "C3")):
        base = rows[0]["perplexity"][c]
        curve = sorted((r for r in rows if r["family"] in ("none", "iid")), key=lambda r: r["rel_error"])
        ax.plot([100 * r["rel_error"] for r in curve], [r["perplexity"][c] / base for r in curve], "-o", color=color,
                label=f"{c}: iid noise")
        for r in rows:
            if r["family"] not in ("none", "iid"):
                marker = {"prop": "^", "int8": "s", "int4": "D", "iid_keep_top": "x", "codec": "*"}[r["family"]]
                ax.plot(100 * r["rel_error"], r["perplexity"][c] / base, marker, color=color)
    if max(r["perplexity"][c] / rows[0]["perplexity"][c] for r in rows for c in corpora) > 3:
        ax.set_yscale("log")
    ax.set_xlabel("relative Frobenius error of the perturbed tensors (%)")
    ax.set_ylabel("perplexity / base perplexity")
    ax.set_title("noise calibration (markers: ^ prop |w|, s int8, D int4, x top kept, * codec)", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="checkpoints/base/smollm2-135m-instruct")
    p.add_argument("--kinds", nargs="*", default=["mlp"])
    p.add_argument("--root", default="checkpoints")
    p.add_argument("--corpora", nargs="*", default=["shakespeare", "python"])
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p.add_argument("--max_tokens", type=int, default=2048)
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--stride", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_noise", action="store_true", help="only the base row and the codec rows")
    p.add_argument("--only", default=None, help="regex: keep only the perturbation rows whose name matches")
    p.add_argument("--pca_rank", type=int, default=None, help="add PCA codec rows of this rank")
    p.add_argument("--vae", default=None, help="add codec rows of this weight-VAE checkpoint (rows plain, s, m, e)")
    p.add_argument("--rounding", default=None, choices=["int8", "int4"],
                   help="add codec rows of int8 / int4 rounding as a codec (rows plain, s, m): the side channel on it")
    p.add_argument("--chunk_size", type=int, default=64)
    p.add_argument("--layout", default="rows", choices=["flat", "rows"])
    p.add_argument("--importance", default=None, help="importance statistics (lsmerge importance) for output weighting")
    p.add_argument("--side_channel", type=float, default=0.01, help="side-channel fraction of the codec rows with it")
    p.add_argument("--codec_rows", nargs="*", default=["plain", "s", "w", "ws"],
                   help="which codec rows: plain, s (side channel, saliency w^2 h), m (side channel, saliency w^2), "
                        "e (side channel, largest errors (w - w^)^2 h), w (output-weighted PCA), ws / we (both)")
    p.add_argument("--reference", default=None,
                   help="noise_calibration.json of an earlier run on the same split: its rows join the plot")
    p.add_argument("--out", default="checkpoints/noise_calibration")
    a = p.parse_args()

    from lsmerge.data.weight_datamodule import select_tensors
    from lsmerge.io.archmap import ArchitectureMap
    from lsmerge.io.hf import load_causal_lm, load_tokenizer
    from lsmerge.io.store import open_checkpoint

    torch.manual_seed(a.seed)
    store = open_checkpoint(a.model)
    arch = ArchitectureMap.from_config(store.config)
    names = select_tensors(store, arch, a.kinds)
    tokenizer = load_tokenizer(a.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = load_texts(tokenizer, a.root, a.corpora, a.split, a.max_tokens)
    model = load_causal_lm(a.model, "float32", "cpu")
    params = dict(model.named_parameters())
    originals = {n: params[n].detach().clone() for n in names}
    res = {"model": a.model, "tensors": len(names), "values": sum(w.numel() for w in originals.values()),
           "settings": {k: v for k, v in vars(a).items()}, "load_before": os.getloadavg(), "rows": []}
    table = [("none", "none", 0.0, None, {})]
    if not a.skip_noise:
        table += [(*r, {}) for r in perturbations(a.seed) if a.only is None or re.search(a.only, r[0])]
    stats = None
    if a.importance:
        from lsmerge.data.importance import ImportanceStats

        stats = ImportanceStats.load(a.importance)
    if a.pca_rank is not None or a.vae or a.rounding:
        table += codec_rows(a, originals, arch.family.name, stats)
    for name, family, nominal, fn, info in table:
        t0 = time.perf_counter()
        rel, rel_mean, rel_w = apply(params, originals, fn, stats) if fn is not None else (0.0, 0.0, 0.0)
        ppl = score(model, ids, a, pad_id)
        row = {"row": name, "family": family, "nominal": nominal, "rel_error": rel, "rel_error_mean_per_tensor": rel_mean,
               "output_weighted_rel_error": rel_w,
               "perplexity": ppl, "seconds": round(time.perf_counter() - t0, 1), **info}
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        if fn is not None:
            apply(params, originals, lambda n, w: w)
    res["load_after"] = os.getloadavg()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "noise_calibration.json").write_text(json.dumps(res, indent=1) + "\n")
    with open(out / "noise_calibration.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "rel_error", *a.corpora])
        for r in res["rows"]:
            w.writerow([r["row"], f"{r['rel_error']:.5f}", *(f"{r['perplexity'][c]:.4f}" for c in a.corpora)])
    rows = res["rows"]
    if a.reference:
        ref = json.loads(Path(a.reference).read_text())
        if ref["settings"]["split"] != a.split or ref["settings"]["max_tokens"] != a.max_tokens:
            raise SystemExit(f"--reference {a.reference} was scored on another split or token count")
        rows = rows[:1] + [r for r in ref["rows"] if r["family"] != "none"] + rows[1:]
    plot(rows, a.corpora, out / "noise_calibration.png")
    print(f"wrote {out}/noise_calibration.json, .csv, .png")


if __name__ == "__main__":
    main()

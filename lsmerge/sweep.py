"""`lsmerge sweep`: hidden-state mixing over layers x ratios x operators (the seed's Experiment C).

For every (operator, mix_layer, beta) the mixed model -- the base with its residual stream at
`mix_layer` replaced, at every position, by operator(h_base, h_ft, beta) -- is scored on held-out
text (teacher forcing; tokens: "all" is exactly what generation with tokens: all computes):

    perplexity = exp( sum_chunks sum_t -log p_mix(x_t | x_<t) / number of predicted tokens )

over non-overlapping chunks of `seq_len` tokens of the text (the first token of each chunk is
context only). Beside it, at the last layer's output (residual stream N, before the final norm)
the mixed states are compared with the base's and the fine-tuned model's: linear CKA to each
(`LinearCKA`, mean over chunks) and `Midness` (target 0.5). The base and the fine-tuned model
alone are scored as reference rows. Each fine-tuned model runs once per chunk (its states at all
swept layers are kept); the base runs once per chunk and combination.

Writes `<output_dir>/sweep.csv` and `<output_dir>/sweep_heatmap.png` (perplexity, one panel per
operator: mix layers down, ratios across).
"""

from __future__ import annotations

import csv
import math
import os

import torch
from torch.nn import functional as F

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.representation import LinearCKA, Midness
from lsmerge.merge.hidden import OPERATORS, HiddenStateMixer, MixSpec, ResidualHooks, check_mix_layer, num_layers

COLUMNS = [
    "operator", "mix_layer", "beta", "perplexity", "nll", "tokens",
    "cka_base", "cka_ft", "midpoint_cos", "arc_ratio", "arc_deviation", "d_fm", "geodesic_excess",
]  # fmt: skip


def text_chunks(ids: list[int], seq_len: int, max_chunks: int | None) -> torch.Tensor:
    """(n_chunks, seq_len) non-overlapping chunks of a token id list (the remainder is dropped)."""
    n = len(ids) // seq_len
    if n == 0:
        raise LsMergeError(f"the text has {len(ids)} tokens, fewer than seq_len={seq_len}; use a longer text or a smaller seq_len")
    if max_chunks:
        n = min(n, max_chunks)
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def chunk_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[float, int]:
    """Sum of -log p(x_t | x_<t) over t >= 1 of (batch, seq) ids, and the number of terms."""
    pred = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    target = input_ids[:, 1:].reshape(-1)
    return float(F.cross_entropy(pred, target, reduction="sum")), int(target.numel())


@torch.no_grad()
def forward_with_residuals(model, input_ids: torch.Tensor, layers: list[int]):
    """Full forward; returns (logits, {layer: residual stream}) for the requested layers."""
    captured: dict[int, torch.Tensor] = {}

    def recorder(layer):
        def edit(h):
            captured[layer] = h.detach()
            return h

        return edit

    with ResidualHooks(model, {layer: recorder(layer) for layer in layers}):
        logits = model(input_ids=input_ids, use_cache=False).logits
    return logits, captured


class _Scores:
    def __init__(self):
        self.nll, self.tokens = 0.0, 0
        self.cka_base, self.cka_ft, self.mid = LinearCKA(), LinearCKA(), Midness(target=0.5)

    def row(self, operator, mix_layer, beta) -> dict:
        nll = self.nll / max(self.tokens, 1)
        row = {"operator": operator, "mix_layer": mix_layer, "beta": beta, "nll": nll,
               "perplexity": math.exp(nll), "tokens": self.tokens}  # fmt: skip
        if self.cka_base.count > 0:
            row["cka_base"] = float(self.cka_base.compute())
            row["cka_ft"] = float(self.cka_ft.compute())
            row.update({k: float(v) for k, v in self.mid.compute().items()})
        return row


@torch.no_grad()
def run_sweep(
    base, sources: list, chunks: torch.Tensor, *, layers: list[int], ratios: list[float], operators: list[str],
    batch_size: int = 4,
) -> list[dict]:  # fmt: skip
    """The sweep on in-memory models; returns one dict per row (see COLUMNS)."""
    n = num_layers(base)
    for layer in layers:
        check_mix_layer(layer, n, what="the base model")
        for m in sources:
            check_mix_layer(layer, num_layers(m), what="a fine-tuned model")
    specs = [MixSpec(op, layer, beta, "all") for op in operators for layer in layers for beta in ratios]
    for op in operators:
        MixSpec(op, 0, 0.0, "all").check_sources(len(sources))
    device = next(base.parameters()).device
    ref = {"base": _Scores(), "fine_tuned": _Scores()}
    scores = {(s.operator, s.mix_layer, s.beta): _Scores() for s in specs}
    for start in range(0, chunks.shape[0], batch_size):
        ids = chunks[start : start + batch_size].to(device)
        logits_b, res_b = forward_with_residuals(base, ids, [n])
        h_base_out = res_b[n]
        nll, count = chunk_nll(logits_b, ids)
        ref["base"].nll += nll
        ref["base"].tokens += count
        res_f = []
        for i, m in enumerate(sources):
            logits_f, res = forward_with_residuals(m, ids, sorted(set(layers) | {num_layers(m)}))
            res_f.append(res)
            if i == 0:
                nll, count = chunk_nll(logits_f, ids)
                ref["fine_tuned"].nll += nll
                ref["fine_tuned"].tokens += count
        h_ft_out = res_f[0][num_layers(sources[0])]
        for spec in specs:
            with HiddenStateMixer(base, spec) as mixer:
                mixer.set_sources([r[spec.mix_layer] for r in res_f])
                logits_m, res_m = forward_with_residuals(base, ids, [n])
            s = scores[(spec.operator, spec.mix_layer, spec.beta)]
            nll, count = chunk_nll(logits_m, ids)
            s.nll += nll
            s.tokens += count
            s.cka_base.update(res_m[n], h_base_out)
            s.cka_ft.update(res_m[n], h_ft_out)
            s.mid.update(h_base_out, h_ft_out, res_m[n])
    rows = [ref["base"].row("base", None, 0.0), ref["fine_tuned"].row("fine_tuned", None, 1.0)]
    rows += [scores[key].row(*key) for key in scores]
    return rows


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})


def plot_heatmap(rows: list[dict], path: str) -> None:
    """Perplexity heatmap: one panel per operator, mix layers down, ratios across (log colour scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    mixed = [r for r in rows if r["operator"] not in ("base", "fine_tuned")]
    operators = list(dict.fromkeys(r["operator"] for r in mixed))
    layers = sorted({r["mix_layer"] for r in mixed})
    ratios = sorted({r["beta"] for r in mixed})
    values = [r["perplexity"] for r in mixed]
    norm = LogNorm(vmin=min(values), vmax=max(values)) if min(values) > 0 and max(values) > min(values) else None
    ref = {r["operator"]: r["perplexity"] for r in rows if r["operator"] in ("base", "fine_tuned")}
    fig, axes = plt.subplots(1, len(operators), figsize=(1.2 + 1.1 * len(ratios) * len(operators), 1.5 + 0.45 * len(layers)), squeeze=False)
    for ax, op in zip(axes[0], operators):
        grid = torch.full((len(layers), len(ratios)), float("nan"))
        for r in mixed:
            if r["operator"] == op:
                grid[layers.index(r["mix_layer"]), ratios.index(r["beta"])] = r["perplexity"]
        im = ax.imshow(grid.numpy(), cmap="viridis_r", norm=norm, aspect="auto")
        for i in range(len(layers)):
            for j in range(len(ratios)):
                value = float(grid[i, j])
                bright = im.norm(value) < 0.5  # viridis_r: low perplexity is drawn light
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="black" if bright else "white")
        ax.set_xticks(range(len(ratios)), [f"{b:g}" for b in ratios])
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlabel("beta")
        ax.set_ylabel("mix layer")
        ax.set_title(op)
    fig.colorbar(im, ax=axes[0].tolist(), label="perplexity")
    fig.suptitle(f"perplexity (base {ref.get('base', float('nan')):.2f}, fine-tuned {ref.get('fine_tuned', float('nan')):.2f})", fontsize=9, y=1.03)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def sweep(
    *,
    base: str,
    fine_tuned: list[str],
    text: str,
    output_dir: str,
    layers: list[int] | None = None,
    ratios: list[float] = [0.25, 0.5, 0.75],  # noqa: B006 (jsonargparse default)
    operators: list[str] = ["lerp", "slerp"],  # noqa: B006
    seq_len: int = 256,
    max_chunks: int | None = 8,
    batch_size: int = 4,
    dtype: str = "float32",
    device: str = "cpu",
    overwrite: bool = False,
) -> None:
    """Perplexity and representation metrics of hidden-state mixing over layers x ratios x operators.

    Args:
        base: base model checkpoint folder.
        fine_tuned: fine-tuned checkpoint folders (one for lerp / slerp; mean averages all).
        text: held-out plain-text file.
        output_dir: folder for sweep.csv and sweep_heatmap.png.
        layers: mix layers (residual-stream indices 0..N); default: every 4th layer from 0 to N.
        ratios: beta values in [0, 1].
        operators: any of lerp, slerp, mean.
        seq_len: tokens per chunk.
        max_chunks: most chunks of the text scored (null: all).
        batch_size: chunks per forward pass.
        dtype: float32 | bfloat16 | float16.
        device: torch device.
        overwrite: replace existing outputs.
    """
    from lsmerge.io.hf import load_causal_lm, load_tokenizer

    bad = [op for op in operators if op not in OPERATORS or op == "steer"]
    if bad:
        raise LsMergeError(f"sweep operators {bad} are not supported; choose from lerp, slerp, mean")
    for op in operators:
        MixSpec(op, 0, 0.0, "all").check_sources(len(fine_tuned))
    for beta in ratios:
        MixSpec("lerp", 0, beta, "all")
    if not os.path.isfile(text):
        raise LsMergeError(f"held-out text {text} not found; give a plain-text file")
    csv_path = os.path.join(output_dir, "sweep.csv")
    png_path = os.path.join(output_dir, "sweep_heatmap.png")
    if not overwrite and any(os.path.exists(p) for p in (csv_path, png_path)):
        raise LsMergeError(f"{output_dir} already holds sweep results; choose another output_dir or set overwrite: true")
    tokenizer = load_tokenizer(base)
    base_model = load_causal_lm(base, dtype, device)
    sources = [load_causal_lm(p, dtype, device) for p in fine_tuned]
    n = num_layers(base_model)
    layer_list = list(range(0, n + 1, 4)) if layers is None else list(layers)
    with open(text, encoding="utf-8") as f:
        ids = tokenizer(f.read(), add_special_tokens=False)["input_ids"]
    chunks = text_chunks(ids, seq_len, max_chunks)
    rows = run_sweep(base_model, sources, chunks, layers=layer_list, ratios=list(ratios), operators=list(operators),
                     batch_size=batch_size)  # fmt: skip
    os.makedirs(output_dir, exist_ok=True)
    write_csv(rows, csv_path)
    plot_heatmap(rows, png_path)
    best = min((r for r in rows if r["operator"] not in ("base", "fine_tuned")), key=lambda r: r["perplexity"])
    print(f"base ppl {rows[0]['perplexity']:.3f}, fine-tuned ppl {rows[1]['perplexity']:.3f}; best mixed: "
          f"{best['operator']} layer {best['mix_layer']} beta {best['beta']} ppl {best['perplexity']:.3f}")  # fmt: skip
    print(f"wrote {csv_path} and {png_path}")

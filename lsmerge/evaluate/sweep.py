"""`lsmerge sweep`: hidden-state mixing over layers x ratios x operators (the seed's Experiment C).

For every (operator, mix_layer, beta) the mixed model -- the base with its residual stream at
`mix_layer` replaced, at every position, by operator(h_base, h_ft, beta) -- is scored on held-out
text (teacher forcing; tokens: "all" is exactly what generation with tokens: all computes) by
the one perplexity of `lsmerge evaluate` (`lsmerge.evaluate.perplexity.perplexity_of_ids`):

    perplexity = exp( sum_t -log p_mix(x_t | x_<t) / number of predicted tokens )

over the windows `sliding_windows(ids, seq_len, stride=seq_len)`: windows of `seq_len` tokens
that overlap by one token, so every token but the first is scored once (at most `max_chunks`
windows). Beside it, at the last layer's output (residual stream N, before the final norm) the
mixed states are compared with the base's and the fine-tuned model's: linear CKA to each
(`LinearCKA`, mean over windows) and `Midness` (target 0.5). The base and the fine-tuned model
alone are scored as reference rows.

Windows are taken `batch_size` at a time: each batch is a token segment whose windows
`perplexity_of_ids` scores in one forward. Per batch each fine-tuned model runs once (its states
at all swept layers are recorded) and the base once per combination, the recorded source states
replayed into its `HiddenStateMixer`.

Writes `<output_dir>/sweep.csv` and `<output_dir>/sweep_heatmap.png` (perplexity, one panel per
operator: mix layers down, ratios across).
"""

from __future__ import annotations

import csv
import sys
import math
import os
from typing import Literal

import torch
from torch import nn

from lsmerge.errors import LsMergeError
from lsmerge.io.text import EncodingErrors, read_text
from lsmerge.evaluate.perplexity import perplexity_of_ids
from lsmerge.evaluate.representation import LinearCKA, Midness
from lsmerge.io.atomic import atomic_paths
from lsmerge.merge.hidden import (
    HiddenStateMixer,
    MixSpec,
    ResidualRecorder,
    check_beta,
    check_mix_layer,
    num_layers,
    operator_names,
)

COLUMNS = [
    "operator", "mix_layer", "beta", "perplexity", "nll", "tokens",
    "cka_base", "cka_ft", "midpoint_cos", "arc_ratio", "arc_deviation", "d_fm", "geodesic_excess",
]  # fmt: skip

# The registry's operators that mix fine-tuned models' states (steering has none to sweep).
SweepOperator = Literal[operator_names("one", "many")]  # type: ignore[valid-type]


def window_segments(ids: torch.Tensor, seq_len: int, max_chunks: int | None, batch_size: int) -> list[torch.Tensor]:
    """Cut (n,) token ids into segments of `batch_size` windows of `sliding_windows(ids, seq_len, seq_len)`.

    Window k is ids[k (seq_len - 1) : k (seq_len - 1) + seq_len]; a segment holds windows
    k0 .. k1 as ids[k0 (seq_len - 1) : k1 (seq_len - 1) + seq_len] (consecutive segments share one
    token), so scoring a segment with max_length = stride = seq_len scores exactly its windows.
    At most `max_chunks` windows in all (null: every window).
    """
    if seq_len < 2:
        raise LsMergeError(f"seq_len={seq_len} is too short; a window needs at least 2 tokens")
    n = ids.numel()
    if n < seq_len:
        raise LsMergeError(f"the text has {n} tokens, fewer than seq_len={seq_len}; use a longer text or a smaller seq_len")
    step = seq_len - 1
    windows = math.ceil((n - 1) / step)
    if max_chunks:
        windows = min(windows, max_chunks)
    return [ids[k * step : min((k + batch_size) * step + 1, (windows * step) + 1, n)] for k in range(0, windows, batch_size)]


class _Recorded:
    """Callable LM for `perplexity_of_ids` that records the residual streams at `layers` (and the
    attention mask) of its latest forward; with `mixer`, `sources` are the fine-tuned models'
    recorded streams replayed into it first."""

    def __init__(self, model: nn.Module, layers: list[int], mixer: HiddenStateMixer | None = None, sources=()):
        self.model, self.layers, self.mixer, self.sources = model, layers, mixer, list(sources)
        self.states: dict[int, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        if self.mixer is not None:
            self.mixer.set_sources([s.states[self.mixer.spec.mix_layer] for s in self.sources])
        with ResidualRecorder(self.model, self.layers) as rec:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        self.states, self.mask = rec.states, attention_mask
        return out


class _Scores:
    def __init__(self):
        self.nll, self.tokens = 0.0, 0
        self.cka_base, self.cka_ft, self.mid = LinearCKA(), LinearCKA(), Midness(target=0.5)

    def add(self, scored: tuple[float, float, int, int]) -> None:
        _, mean_nll, count, _ = scored
        self.nll += mean_nll * count
        self.tokens += count

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
    base, sources: list, token_ids: torch.Tensor, *, seq_len: int, layers: list[int], ratios: list[float],
    operators: list[str], max_chunks: int | None = None, batch_size: int = 4, progress: bool = False,
) -> list[dict]:  # fmt: skip
    """The sweep on in-memory models and (n,) token ids; returns one dict per row (see COLUMNS)."""
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
    segments = window_segments(token_ids, seq_len, max_chunks, batch_size)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(segments) * (1 + len(sources) + len(specs)), desc="sweep", unit="pass", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    for k, segment in enumerate(segments):

        def score(model, into: _Scores | None = None, what: str = ""):
            bar.set_postfix_str(f"segment {k + 1}/{len(segments)}: {what}", refresh=False)
            result = perplexity_of_ids(model, segment, max_length=seq_len, stride=seq_len, batch_size=batch_size, device=device)
            bar.update()
            if into is not None:
                into.add(result)

        rec_base = _Recorded(base, [n])
        score(rec_base, ref["base"], "base")
        rec_fts = [_Recorded(m, sorted(set(layers) | {num_layers(m)})) for m in sources]
        for i, rec in enumerate(rec_fts):
            score(rec, ref["fine_tuned"] if i == 0 else None, f"fine-tuned {i + 1}")
        h_base_out, h_ft_out = rec_base.states[n], rec_fts[0].states[num_layers(sources[0])]
        for spec in specs:
            with HiddenStateMixer(base, spec) as mixer:
                rec_mix = _Recorded(base, [n], mixer, rec_fts)
                s = scores[(spec.operator, spec.mix_layer, spec.beta)]
                score(rec_mix, s, f"{spec.operator} layer {spec.mix_layer} beta {spec.beta:g}")
            mask = rec_mix.mask
            s.cka_base.update(rec_mix.states[n], h_base_out, mask=mask)
            s.cka_ft.update(rec_mix.states[n], h_ft_out, mask=mask)
            s.mid.update(h_base_out, h_ft_out, rec_mix.states[n], mask=mask)
    bar.close()
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
    operators: list[SweepOperator] = ["lerp", "slerp"],  # noqa: B006
    seq_len: int = 256,
    max_chunks: int | None = 8,
    batch_size: int = 4,
    dtype: str = "float32",
    device: str = "cpu",
    overwrite: bool = False,
    encoding_errors: EncodingErrors = "strict",
    progress: bool = True,
) -> None:
    """Perplexity and representation metrics of hidden-state mixing over layers x ratios x operators.

    Args:
        base: base model checkpoint folder or name under checkpoints/base/ (as merge takes them).
        fine_tuned: fine-tuned checkpoint folders or names (one for lerp / slerp; mean averages all).
        text: held-out plain-text file.
        output_dir: folder for sweep.csv and sweep_heatmap.png.
        layers: mix layers (residual-stream indices 0..N); default: every 4th layer from 0 to N.
        ratios: beta values in [0, 1].
        operators: any of the registry's mixing operators (lerp, slerp, mean).
        seq_len: tokens per window (consecutive windows share one token).
        max_chunks: most windows of the text scored (null: all).
        batch_size: windows per forward pass.
        dtype: float32 | bfloat16 | float16.
        device: torch device.
        overwrite: replace existing outputs.
        encoding_errors: strict (a text that is not UTF-8 is an error) or replace (bad bytes become U+FFFD).
        progress: a progress bar on stderr (one step per model pass over a segment of windows).
    """
    from lsmerge.io.hf import load_causal_lm, load_tokenizer, resolve_model

    choices = operator_names("one", "many")
    bad = [op for op in operators if op not in choices]
    if bad:
        raise LsMergeError(f"sweep operators {bad} are not supported; choose from {', '.join(choices)}")
    for op in operators:
        MixSpec(op, 0, 0.0, "all").check_sources(len(fine_tuned))
    for beta in ratios:
        check_beta(beta)
    if not os.path.isfile(text):
        raise LsMergeError(f"held-out text {text} not found; give a plain-text file")
    held_out = read_text(text, "held-out text", encoding_errors)
    csv_path = os.path.join(output_dir, "sweep.csv")
    png_path = os.path.join(output_dir, "sweep_heatmap.png")
    if not overwrite and any(os.path.exists(p) for p in (csv_path, png_path)):
        raise LsMergeError(f"{output_dir} already holds sweep results; choose another output_dir or set overwrite: true")
    base = str(resolve_model(base))  # folders, names under checkpoints/, tiny:DIR
    fine_tuned = [str(resolve_model(p)) for p in fine_tuned]
    tokenizer = load_tokenizer(base)
    base_model = load_causal_lm(base, dtype, device)
    sources = [load_causal_lm(p, dtype, device) for p in fine_tuned]
    n = num_layers(base_model)
    layer_list = list(range(0, n + 1, 4)) if layers is None else list(layers)
    ids = tokenizer(held_out, add_special_tokens=False)["input_ids"]
    rows = run_sweep(base_model, sources, torch.tensor(ids, dtype=torch.long), seq_len=seq_len, layers=layer_list,
                     ratios=list(ratios), operators=list(operators), max_chunks=max_chunks, batch_size=batch_size,
                     progress=progress)  # fmt: skip
    with atomic_paths(csv_path, png_path) as (csv_tmp, png_tmp):
        write_csv(rows, str(csv_tmp))
        plot_heatmap(rows, str(png_tmp))
    best = min((r for r in rows if r["operator"] not in ("base", "fine_tuned")), key=lambda r: r["perplexity"])
    print(f"base ppl {rows[0]['perplexity']:.3f}, fine-tuned ppl {rows[1]['perplexity']:.3f}; best mixed: "
          f"{best['operator']} layer {best['mix_layer']} beta {best['beta']} ppl {best['perplexity']:.3f}")  # fmt: skip
    print(f"wrote {csv_path} and {png_path}")

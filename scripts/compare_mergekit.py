"""Compare `lsmerge merge-weights --mergekit_config` with mergekit on the same YAML recipes.

Builds tiny random Llama checkpoints (float32), runs `mergekit-yaml` from its own venv
(mergekit pins dependencies that may clash with ours: install it with
`python3 -m venv mk-venv && mk-venv/bin/pip install torch==2.13.0 && mk-venv/bin/pip install mergekit==0.1.5`,
then `export LSMERGE_MERGEKIT=$PWD/mk-venv/bin/mergekit-yaml`)
and lsmerge in-process on each recipe, then compares every tensor:
rel = max|ours - theirs| / max(max|theirs|, 1e-12), which must be <= 1e-6.
The random methods (della, della_linear: `--recipes della della_linear`) are compared in
distribution instead (`compare_distribution`: kept fraction per tensor and against density, its
growth with magnitude rank, the L1 rescale factor).
The union tokenizer recipes (`UNION_RECIPES`) are compared token by token: mergekit numbers some
new tokens in a hash order that changes from run to run (lsmerge/merge/weight/mergekit_union.py).

    .venv/bin/python scripts/compare_mergekit.py [--mergekit-bin PATH/TO/mergekit-yaml] [--workdir DIR]

Prints one line per recipe and exits 1 when a recipe differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MERGEKIT_ENV = "LSMERGE_MERGEKIT"


def find_mergekit() -> Path | None:
    """mergekit-yaml from $LSMERGE_MERGEKIT, else from PATH, else None."""
    given = os.environ.get(MERGEKIT_ENV)
    if given:
        return Path(given) if Path(given).exists() else None
    found = shutil.which("mergekit-yaml")
    return Path(found) if found else None

TOLERANCE = 1e-6
LAYERS = 4

RECIPES = {
    "linear": """
models:
  - model: {A}
    parameters: {{weight: 0.7}}
  - model: {B}
    parameters: {{weight: 0.3}}
  - model: {C}
    parameters: {{weight: 0.5}}
merge_method: linear
dtype: float32
""",
    "slerp": """
models:
  - model: {A}
  - model: {B}
merge_method: slerp
base_model: {A}
parameters:
  t: 0.35
dtype: float32
""",
    "slerp_gradient": """
slices:
  - sources:
      - model: {A}
        layer_range: [0, {L}]
      - model: {B}
        layer_range: [0, {L}]
merge_method: slerp
base_model: {A}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
""",
    "ties": """
models:
  - model: {B}
    parameters: {{density: 0.5, weight: 1.0}}
  - model: {C}
    parameters: {{density: 0.3, weight: 0.6}}
merge_method: ties
base_model: {A}
parameters:
  normalize: true
dtype: float32
""",
    "ties_lambda_slices": """
slices:
  - sources:
      - model: {A}
        layer_range: [0, 2]
      - model: {B}
        layer_range: [0, 2]
        parameters: {{density: 0.6, weight: [0.2, 1.0]}}
      - model: {C}
        layer_range: [0, 2]
        parameters: {{density: 0.4, weight: 0.8}}
  - sources:
      - model: {A}
        layer_range: [2, {L}]
      - model: {B}
        layer_range: [2, {L}]
        parameters: {{density: 0.7, weight: 0.5}}
      - model: {C}
        layer_range: [2, {L}]
        parameters: {{density: 0.5, weight: 0.5}}
    parameters: {{lambda: 0.8}}
merge_method: ties
base_model: {A}
dtype: float32
""",
    "task_arithmetic": """
models:
  - model: {B}
    parameters: {{weight: 0.6}}
  - model: {C}
    parameters: {{weight: -0.3}}
merge_method: task_arithmetic
base_model: {A}
parameters: {{lambda: 0.9}}
dtype: float32
""",
    "passthrough_upscale": """
slices:
  - sources:
      - model: {A}
        layer_range: [0, 3]
  - sources:
      - model: {A}
        layer_range: [1, {L}]
merge_method: passthrough
dtype: float32
""",
    "passthrough_frankenmerge": """
slices:
  - sources:
      - model: {A}
        layer_range: [0, 2]
  - sources:
      - model: {B}
        layer_range: [1, {L}]
        parameters:
          scale:
            - filter: mlp
              value: [0.5, 1.0]
            - value: 1.0
merge_method: passthrough
dtype: float32
""",
    "passthrough_scale": """
models:
  - model: {B}
    parameters: {{scale: 0.9}}
merge_method: passthrough
dtype: float32
""",
    "slices_two_ranges": """
slices:
  - sources:
      - model: {A}
        layer_range: [0, 3]
      - model: {B}
        layer_range: [1, {L}]
        parameters: {{weight: [0.2, 0.8]}}
    parameters: {{weight: 0.5}}
merge_method: linear
dtype: float32
""",
    "tokenizer_source_model": """
models:
  - model: {A}
    parameters: {{weight: 0.5}}
  - model: {B}
    parameters: {{weight: 0.3}}
  - model: {C}
    parameters: {{weight: 0.2}}
merge_method: linear
tokenizer_source: {C}
dtype: float32
""",
    "tokenizer_base_chat_template": """
models:
  - model: {B}
    parameters: {{weight: 0.6}}
  - model: {C}
    parameters: {{weight: 0.4}}
merge_method: task_arithmetic
base_model: {A}
tokenizer:
  source: base
  pad_to_multiple_of: 100
chat_template: "{{% for m in messages %}}<{{{{ m['role'] }}}}> {{{{ m['content'] }}}}{{% endfor %}}"
dtype: float32
""",
    "breadcrumbs": """
models:
  - model: {B}
    parameters: {{density: 0.5, gamma: 0.05, weight: 1.0}}
  - model: {C}
    parameters: {{density: 0.3, gamma: 0.1, weight: 0.6}}
merge_method: breadcrumbs
base_model: {A}
parameters: {{lambda: 0.9}}
dtype: float32
""",
    "breadcrumbs_ties": """
models:
  - model: {B}
    parameters: {{density: 0.6, weight: 0.7}}
  - model: {C}
    parameters: {{density: 0.4, gamma: 0.02, weight: 0.5}}
merge_method: breadcrumbs_ties
base_model: {A}
parameters: {{normalize: true, rescale: true, gamma: [0.0, 0.2]}}
dtype: float32
""",
    "sce": """
models:
  - model: {A}
  - model: {B}
  - model: {C}
merge_method: sce
base_model: {A}
parameters: {{select_topk: 0.4}}
dtype: float32
""",
    "sce_all": """
models:
  - model: {B}
  - model: {C}
merge_method: sce
base_model: {A}
dtype: float32
""",
    "ram": """
models:
  - model: {B}
  - model: {C}
merge_method: ram
base_model: {A}
parameters: {{epsilon: 0.01}}
dtype: float32
""",
    "ramplus_tl": """
models:
  - model: {B}
  - model: {C}
merge_method: ramplus_tl
base_model: {A}
parameters: {{epsilon: 0.01, r: 0.5, alpha: 0.8}}
dtype: float32
""",
    "model_stock": """
models:
  - model: {B}
  - model: {C}
merge_method: model_stock
base_model: {A}
dtype: float32
""",
    "model_stock_filter_wise": """
models:
  - model: {A}
  - model: {B}
  - model: {C}
merge_method: model_stock
base_model: {A}
parameters: {{filter_wise: true}}
dtype: float32
""",
    "karcher": """
models:
  - model: {B}
  - model: {A}
  - model: {C}
merge_method: karcher
dtype: float32
""",
    "karcher_base": """
models:
  - model: {B}
  - model: {C}
merge_method: karcher
base_model: {A}
parameters: {{max_iter: 3, tol: 1.0e-4}}
dtype: float32
""",
    "nuslerp": """
models:
  - model: {B}
    parameters: {{weight: 0.7}}
  - model: {C}
    parameters: {{weight: 0.3}}
merge_method: nuslerp
base_model: {A}
dtype: float32
""",
    "nuslerp_row_wise": """
models:
  - model: {B}
    parameters: {{weight: 1.0}}
  - model: {C}
    parameters: {{weight: 2.0}}
merge_method: nuslerp
parameters: {{nuslerp_flatten: false, nuslerp_row_wise: true}}
dtype: float32
""",
    "multislerp": """
models:
  - model: {B}
    parameters: {{weight: 0.6}}
  - model: {C}
    parameters: {{weight: 0.4}}
merge_method: multislerp
base_model: {A}
dtype: float32
""",
    "multislerp_three": """
models:
  - model: {A}
    parameters: {{weight: 0.5}}
  - model: {B}
    parameters: {{weight: 0.3}}
  - model: {C}
    parameters: {{weight: [0.2, 0.6]}}
merge_method: multislerp
dtype: float32
""",
    "nearswap": """
models:
  - model: {A}
  - model: {B}
merge_method: nearswap
base_model: {A}
parameters: {{t: 0.01}}
dtype: float32
""",
    "arcee_fusion": """
models:
  - model: {B}
merge_method: arcee_fusion
base_model: {A}
dtype: float32
""",
    "tokenizer_union": """
models:
  - model: {B}
    parameters: {{weight: 0.6}}
  - model: {D}
    parameters: {{weight: 0.5}}
merge_method: task_arithmetic
base_model: {A}
tokenizer_source: union
dtype: float32
""",
    "tokenizer_union_default": """
models:
  - model: {A}
    parameters: {{weight: 0.5}}
  - model: {C}
    parameters: {{weight: 0.2}}
  - model: {D}
    parameters: {{weight: 0.3}}
merge_method: linear
base_model: {A}
tokenizer:
  pad_to_multiple_of: 64
chat_template: auto
dtype: float32
""",
}
#: recipes whose output vocabulary is mergekit's union: some of its ids come in hash order (see
#: lsmerge/merge/weight/mergekit_union.py), so rows and tokenizers are compared token by token
UNION_RECIPES = ("tokenizer_union", "tokenizer_union_default")


def _tokenizer(words: list[str], template: str | None = None):
    """A word-level tokenizer over exactly `words` (ids in that order), built with no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    if template:
        wrapped.chat_template = template
    return wrapped


def vocabularies(n: int = 256) -> dict[str, list[str]]:
    """A, B, C's vocabularies of n tokens: B lacks A's w180..w199 (has y tokens instead); C has
    w0..w199 in reverse and x tokens instead of A's last ones; so tokenizer sources remap rows."""
    specials = ["[UNK]", "[PAD]"]
    a = specials + [f"w{i}" for i in range(n - 2)]
    b = specials + [f"w{i}" if not 180 <= i < 200 else f"y{i}" for i in range(n - 2)]
    c = specials + [f"w{i}" for i in reversed(range(200))] + [f"x{i}" for i in range(n - 202)]
    return {"A": a, "B": b, "C": c}


def union_vocabulary(n: int = 256) -> tuple[list[str], list[tuple[str, bool]]]:
    """D's words and added tokens (content, special): D shares [UNK], [PAD], w0..w149 with A, has
    z tokens no other model has, then added tokens: a special one, a plain one, one that is A's
    word w220 (the union keeps A's id) and one past the vocab size (the union leaves it out)."""
    words = ["[UNK]", "[PAD]"] + [f"w{i}" for i in range(150)] + [f"z{i}" for i in range(n - 155)]
    return words, [("<|im_start|>", True), ("<tool>", False), ("w220", False), ("<past>", True)]


# Random methods: compared in distribution, not tensor by tensor. One model B on base A, so an
# entry is kept where the output differs from the base, and the L1 rescale is output / delta there.
DELLA_DENSITY, DELLA_EPSILON = 0.4, 0.2
DISTRIBUTION_RECIPES = {
    name: f"""
models:
  - model: {{B}}
    parameters: {{{{weight: 1.0, density: {DELLA_DENSITY}, epsilon: {DELLA_EPSILON}}}}}
merge_method: {name}
base_model: {{A}}
dtype: float32
"""
    for name in ("della", "della_linear")
}
MIN_ENTRIES = 1024  # tensors this large carry the per-tensor statistics


def prune_stats(out: dict[str, torch.Tensor], base: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per tensor of one pruned task vector (out - base against model - base): entries n, kept
    fraction, kept fraction among the smaller / larger half of |delta| in each row (MagPrune ranks
    along dim 1; a 1-d tensor is one row), and the rescale factor (median of out / delta where kept)."""
    stats = {}
    for name, o in out.items():
        delta = (model[name] - base[name]).double()
        got = o.double() - base[name].double()
        rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
        kept = (got != 0).reshape(rows.shape)
        ranks = rows.abs().argsort(dim=1).argsort(dim=1)
        upper = ranks >= rows.shape[1] / 2
        scale = (got.reshape(rows.shape)[kept] / rows[kept]).median() if kept.any() else torch.tensor(float("nan"))
        stats[name] = {"n": delta.numel(), "kept": float(kept.double().mean()), "kept_small": float(kept[~upper].double().mean()),
                       "kept_large": float(kept[upper].double().mean()), "rescale": float(scale)}
    return stats


def compare_distribution(ours: dict[str, dict], theirs: dict[str, dict], density: float, epsilon: float) -> tuple[dict, list[str]]:
    """lsmerge's and mergekit's pruning statistics agree: per tensor, kept fractions within 6
    binomial standard deviations of each other; over all tensors, the kept fraction at density
    and the large-half minus small-half gap at epsilon (both within 0.02), and the median ratio of
    the rescale factors within 2 % of 1."""
    problems, ratios, summary = [], [], {}
    big = [n for n in ours if ours[n]["n"] >= MIN_ENTRIES]
    for tool, st in (("lsmerge", ours), ("mergekit", theirs)):
        weight = sum(st[n]["n"] for n in big)
        kept = sum(st[n]["kept"] * st[n]["n"] for n in big) / weight
        gap = sum((st[n]["kept_large"] - st[n]["kept_small"]) * st[n]["n"] for n in big) / weight
        summary[tool] = {"kept": round(kept, 4), "large_minus_small": round(gap, 4)}
        if abs(kept - density) > 0.02:
            problems.append(f"{tool}: kept fraction {kept:.4f}, density {density}")
        if abs(gap - epsilon) > 0.02:
            problems.append(f"{tool}: kept(large half) - kept(small half) = {gap:.4f}, expected epsilon {epsilon}")
    for n in big:
        a, b = ours[n], theirs[n]
        sd = (2 * density * (1 - density) / a["n"]) ** 0.5
        if abs(a["kept"] - b["kept"]) > 6 * sd:
            problems.append(f"{n}: kept {a['kept']:.4f} (lsmerge) vs {b['kept']:.4f} (mergekit), > 6 sd ({sd:.4f})")
        ratios.append(a["rescale"] / b["rescale"])
    median = float(torch.tensor(ratios).median())
    summary["rescale_ratio_median"] = round(median, 4)
    if abs(median - 1) > 0.02:
        problems.append(f"median rescale factor ratio lsmerge / mergekit = {median:.4f}, not within 2 % of 1")
    return summary, problems


def make_models(root: Path) -> dict[str, Path]:
    """Four tiny Llamas: A (base) and B, C, D = A + noise (fine-tune-like), float32, untied, each with
    its own word-level tokenizer (`vocabularies`, D's `union_vocabulary` with added tokens; A's has
    a chat template)."""
    from tokenizers import AddedToken
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, tie_word_embeddings=False, max_position_embeddings=128)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg).eval()
    paths = {"A": root / "A"}
    base.save_pretrained(paths["A"])
    for i, name in enumerate("BCD"):
        g = torch.Generator().manual_seed(i + 1)
        m = LlamaForCausalLM(cfg).eval()
        sd = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.state_dict().items()}
        m.load_state_dict(sd)
        paths[name] = root / name
        m.save_pretrained(paths[name])
    for name, words in vocabularies(cfg.vocab_size).items():
        _tokenizer(words, "{% for m in messages %}{{ m['content'] }}{% endfor %}" if name == "A" else None).save_pretrained(paths[name])
    words, added = union_vocabulary(cfg.vocab_size)
    tok = _tokenizer(words)
    for content, special in added:
        tok.add_tokens([AddedToken(content, special=special, normalized=not special)], special_tokens=special)
    tok.save_pretrained(paths["D"])
    return paths


def load_all(folder: Path) -> dict[str, torch.Tensor]:
    from lsmerge.io.store import open_checkpoint

    return dict(open_checkpoint(folder).items())


CONFIG_FIELDS = ("num_hidden_layers", "vocab_size", "hidden_size", "tie_word_embeddings")


def compare_side_files(ours: Path, theirs: Path, tokenizer: bool, union_base: Path | None = None) -> list[str]:
    """config.json fields that matter, and (`tokenizer`) the vocabulary and chat template. With
    `union_base` (the base of a union vocabulary) the vocabularies need not number every token
    alike: the same tokens, the base's tokens at the base's ids, the same added tokens (content
    and flags), the same written tokenizer files and the same tokens for a text with every token."""
    problems = []
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (ours, theirs))
    for key in CONFIG_FIELDS:
        if ca.get(key) != cb.get(key):
            problems.append(f"config.json {key}: ours {ca.get(key)!r}, mergekit {cb.get(key)!r}")
    if tokenizer:
        from transformers import AutoTokenizer

        ta, tb = AutoTokenizer.from_pretrained(str(ours)), AutoTokenizer.from_pretrained(str(theirs))
        va, vb = ta.get_vocab(), tb.get_vocab()
        if union_base is None and va != vb:
            problems.append("tokenizer vocabularies differ")
        if union_base is not None:
            base = AutoTokenizer.from_pretrained(str(union_base)).get_vocab()
            if set(va) != set(vb):
                problems.append(f"union vocabularies differ: only ours {sorted(set(va) - set(vb))[:5]}, "
                                f"only mergekit {sorted(set(vb) - set(va))[:5]}")
            moved = [t for t in base if t in va and not va[t] == vb.get(t) == base[t]]
            if moved:
                problems.append(f"base tokens not at the base's ids: {moved[:5]}")
            added = [{t.content: repr(t) for t in tok.added_tokens_decoder.values()} for tok in (ta, tb)]
            if added[0] != added[1]:
                problems.append(f"added tokens differ: {sorted(set(added[0].items()) ^ set(added[1].items()))[:4]}")
            files = [sorted(f.name for f in d.iterdir() if f.name.startswith(("tokenizer", "special_tokens", "chat_template",
                                                                               "added_tokens", "vocab.", "merges")))
                     for d in (ours, theirs)]
            if files[0] != files[1]:
                problems.append(f"tokenizer files differ: ours {files[0]}, mergekit {files[1]}")
            text = " ".join(sorted(va))
            if ta.tokenize(text) != tb.tokenize(text):
                problems.append("the union tokenizers split a text with every token differently")
        if ta.chat_template != tb.chat_template:
            problems.append(f"chat templates differ: ours {ta.chat_template!r}, mergekit {tb.chat_template!r}")
    return problems


VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def union_rows(ours: Path, theirs: Path) -> torch.Tensor:
    """For each row of our vocabulary-indexed tensors, the row of mergekit's that holds the same
    token (padding rows: the same row), to compare union merges token by token."""
    from transformers import AutoTokenizer

    va, vb = (AutoTokenizer.from_pretrained(str(d)).get_vocab() for d in (ours, theirs))
    perm = list(range(json.loads((ours / "config.json").read_text())["vocab_size"]))
    for token, i in va.items():
        perm[i] = vb.get(token, i)
    return torch.tensor(perm)


def compare(ours: Path, theirs: Path, rows: torch.Tensor | None = None) -> tuple[float, int, list[str]]:
    """Every tensor within TOLERANCE; `rows` (`union_rows`) reorders mergekit's vocabulary-indexed rows first."""
    a, b = load_all(ours), load_all(theirs)
    if rows is not None:
        b = {n: (t[rows] if n in VOCAB_TENSORS and t.shape[0] == len(rows) else t) for n, t in b.items()}
    problems = []
    if set(a) != set(b):
        problems.append(f"tensor names differ: only ours {sorted(set(a) - set(b))[:3]}, only mergekit {sorted(set(b) - set(a))[:3]}")
    worst = 0.0
    for name in sorted(set(a) & set(b)):
        x, y = a[name].double(), b[name].double()
        if x.shape != y.shape or a[name].dtype != b[name].dtype:
            problems.append(f"{name}: {a[name].dtype} {list(x.shape)} vs {b[name].dtype} {list(y.shape)}")
            continue
        rel = float((x - y).abs().max() / max(float(y.abs().max()), 1e-12))
        worst = max(worst, rel)
        if rel > TOLERANCE:
            problems.append(f"{name}: rel {rel:.2e}")
    return worst, len(set(a) & set(b)), problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mergekit-bin", default=None, help=f"default: ${MERGEKIT_ENV}, else mergekit-yaml on PATH")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=[*RECIPES, *DISTRIBUTION_RECIPES],
                    help=f"default: the exact ones; {', '.join(DISTRIBUTION_RECIPES)} compare in distribution")
    args = ap.parse_args(argv)
    args.mergekit_bin = args.mergekit_bin or find_mergekit()
    if args.mergekit_bin is None or not Path(args.mergekit_bin).exists():
        print(f"mergekit-yaml not found (--mergekit-bin, ${MERGEKIT_ENV} or PATH); install it in its own venv (see this script's docstring).")
        return 2
    from lsmerge.merge.weight.command import merge_weights

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lsmerge-vs-mergekit-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = make_models(work / "models")
    failed = 0
    for key in args.recipes:
        yml = work / f"{key}.yml"
        yml.write_text({**RECIPES, **DISTRIBUTION_RECIPES}[key].format(L=LAYERS, **{k: str(v) for k, v in paths.items()}))
        theirs, ours = work / f"mk_{key}", work / f"ls_{key}"
        for d in (theirs, ours):
            shutil.rmtree(d, ignore_errors=True)
        recipe = {**RECIPES, **DISTRIBUTION_RECIPES}[key]
        tokenizer = "tokenizer" in recipe or "chat_template" in recipe
        t0 = time.perf_counter()
        r = subprocess.run([args.mergekit_bin, str(yml), str(theirs), *([] if tokenizer else ["--no-copy-tokenizer"]),
                            "--out-shard-size", "1B", "--device", "cpu", "--quiet", "--no-write-model-card"],
                           capture_output=True, text=True)
        t_mk = time.perf_counter() - t0
        if r.returncode != 0:
            print(f"{key}: mergekit failed ({r.returncode}): {r.stderr.strip()[-800:]}")
            failed += 1
            continue
        t0 = time.perf_counter()
        merge_weights(mergekit_config=str(yml), out=str(ours), device="cpu", progress=False)
        t_ls = time.perf_counter() - t0
        if key in DISTRIBUTION_RECIPES:
            inputs = {k: load_all(paths[k]) for k in "AB"}
            summary, problems = compare_distribution(prune_stats(load_all(ours), inputs["A"], inputs["B"]),
                                                     prune_stats(load_all(theirs), inputs["A"], inputs["B"]), DELLA_DENSITY, DELLA_EPSILON)
            result = {"distribution": summary}
        else:
            union = key in UNION_RECIPES
            worst, n, problems = compare(ours, theirs, union_rows(ours, theirs) if union else None)
            result = {"tensors": n, "max_rel_diff": worst}
            problems += compare_side_files(ours, theirs, tokenizer, paths["A"] if union else None)
        status = "OK" if not problems else "DIFF"
        failed += bool(problems)
        print(json.dumps({"recipe": key, "status": status, **result, "mergekit_s": round(t_mk, 2), "lsmerge_s": round(t_ls, 2)}))
        for p in problems[:10]:
            print(f"    {p}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""LoRA experts: resumable CPU fine-tunes of a causal LM on one text domain (`scripts/make_experts.py`).

One expert is a PEFT LoRA adapter trained on fixed-length token blocks of a train text, saved
twice: as the adapter (`save_pretrained`) and as a full checkpoint with the adapter merged in
(`merge_and_unload`), written by `lsmerge.io.writer.CheckpointWriter` with exactly the base's
tensor names, config and tokenizer, so merges can pair it with the base tensor by tensor.

Training (`train_expert`):
- the train text is tokenized once and cut into blocks of `seq_len` tokens (the remainder is
  dropped); the batch of step s is blocks `order_e[(s * batch_size) % n : ...]` of a permutation
  drawn from `seed + epoch e`, so the data order depends only on the step and the seed;
- AdamW on the LoRA parameters, linear warm-up for `warmup_steps`, then a constant rate, gradient
  norm clipped to `max_grad_norm`;
- budget: `minutes` of training time (summed over resumed runs) and/or `max_steps`;
- every `save_every` steps and when the budget ends, `<state_dir>/` is replaced atomically by the
  adapter, the optimizer state, the step, the tokens seen, the training time and the torch RNG
  state. A rerun continues from there; a run whose saved state already meets the budget (and
  whose outputs were written from that state) is skipped. Raising the budget continues a
  finished run.
- cache key (`expert_recipe`, `recipe_key`): the sha256 of the base checkpoint's files, of the
  train text, and every hyperparameter that changes the weights (not the budget, output paths,
  threads or logging cadence). The state and the merged checkpoint record it with the steps,
  tokens and minutes trained; resuming a state of another recipe is refused, and outputs not
  written from the current state (another recipe, or a shorter or longer run) are rewritten
  from it, so a cached expert is never silently another run's.

Evaluation (`evaluate_expert`): held-out perplexity of base and expert on each domain's text by
`lsmerge.evaluate.perplexity.perplexity_of_ids`, non-overlapping windows of `max_length` tokens,
the first `max_tokens` tokens of each text.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lsmerge.errors import LsMergeError
from lsmerge.io.atomic import replace_dir, temp_dir_beside, write_text_atomic
from lsmerge.io.hf import load_causal_lm, load_tokenizer
from lsmerge.io.text import read_text

STATE_FILE = "trainer_state.pt"
ADAPTER_SUBDIR = "adapter"
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class ExpertConfig:
    """What one expert is trained on, how, and where its outputs go.

    Defaults (LoRA r 16, alpha 32, dropout 0.05 on all attention and MLP projections; blocks of
    256 tokens, batch 4, AdamW lr 1e-3 with 10 warm-up steps, no weight decay) suit SmolLM2-135M
    on 2 CPU cores.
    """

    base: str  # base checkpoint folder (weights, config, tokenizer)
    train_text: str  # plain-text train split
    adapter_dir: str  # PEFT adapter output (save_pretrained)
    merged_dir: str  # full checkpoint output (adapter merged in)
    state_dir: str  # resumable training state
    seq_len: int = 256
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    seed: int = 0
    minutes: float | None = 30.0  # training-time budget, summed over resumed runs
    max_steps: int | None = None  # step budget
    save_every: int = 25
    log_every: int = 5
    threads: int | None = 2  # torch.set_num_threads; None leaves torch's default


# -- cache key -------------------------------------------------------------------------------
RECIPE_EXCLUDED = ("base", "train_text", "adapter_dir", "merged_dir", "state_dir", "minutes", "max_steps",
                   "save_every", "log_every", "threads")


def expert_recipe(cfg: ExpertConfig) -> dict:
    """What decides an expert's weights besides its budget: the content digests of the base
    checkpoint (its weight files and config) and of the train text, and every training
    hyperparameter (paths, budget, threads and logging cadence left out)."""
    from lsmerge.io.provenance import file_sha256, input_digests

    base = input_digests([cfg.base])[0]
    return {"base_files": base.get("files", base), "train_text_sha256": file_sha256(cfg.train_text),
            **{k: v for k, v in asdict(cfg).items() if k not in RECIPE_EXCLUDED}}


def recipe_key(recipe: dict) -> str:
    """16 hex digits of the sha256 of the recipe's canonical JSON."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _recipe_difference(saved: dict, current: dict) -> str:
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    return ", ".join(keys) or "unknown fields"


def written_from(cfg: ExpertConfig, key: str, step: int) -> bool:
    """True when the adapter and merged checkpoint exist and the merged one records recipe `key`
    at `step` (i.e. it was written from the current state of the current recipe)."""
    if not outputs_exist(cfg):
        return False
    from lsmerge.io.store import checkpoint_metadata

    try:
        prov = json.loads(checkpoint_metadata(cfg.merged_dir).get("lsmerge_config", "{}"))
    except (LsMergeError, OSError, ValueError):
        return False
    return prov.get("recipe_key") == key and prov.get("step") == step


# -- data ------------------------------------------------------------------------------------
def token_blocks(token_ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(n,) token ids -> (n // seq_len, seq_len) consecutive blocks; the remainder is dropped."""
    n_blocks = token_ids.numel() // seq_len
    if n_blocks < 1:
        raise LsMergeError(f"the train text has {token_ids.numel()} tokens, fewer than one block of {seq_len}; use a longer text or a smaller seq_len.")
    return token_ids[: n_blocks * seq_len].view(n_blocks, seq_len)


def batch_indices(step: int, batch_size: int, n_blocks: int, seed: int) -> torch.Tensor:
    """Block indices (batch_size,) of step `step` (0-based): consecutive positions of a per-epoch
    permutation drawn from `seed + epoch`; depends only on its arguments."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(pos, n_blocks)
        order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed + epoch))
        out.append(order[i])
    return torch.stack(out)


def tokenize_text(tokenizer, text: str, piece_chars: int = 1 << 20, progress: bool = False) -> torch.Tensor:
    """Token ids (n,) of `text` without special tokens, tokenized in pieces cut at blank lines
    (a bar over the characters on stderr with `progress`)."""
    ids: list[int] = []
    start = 0
    with tqdm(total=len(text), desc="tokenize", unit="char", unit_scale=True, file=sys.stderr, leave=False,
              disable=not progress) as bar:
        while start < len(text):
            end = min(start + piece_chars, len(text))
            if end < len(text):
                cut = text.rfind("\n\n", start, end)
                end = cut + 2 if cut > start else end
            ids += tokenizer(text[start:end], add_special_tokens=False, return_attention_mask=False)["input_ids"]
            bar.update(end - start)
            start = end
    return torch.tensor(ids, dtype=torch.long)


# -- state -----------------------------------------------------------------------------------
def budget_reached(cfg: ExpertConfig, step: int, train_seconds: float) -> bool:
    """True when the step or time budget is used up."""
    if cfg.max_steps is not None and step >= cfg.max_steps:
        return True
    return cfg.minutes is not None and train_seconds >= cfg.minutes * 60


def read_state(state_dir: str | os.PathLike) -> dict | None:
    """The saved trainer state (without the adapter), or None when there is none."""
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, weights_only=True)


def save_state(model, optimizer, state: dict, state_dir: str | os.PathLike) -> None:
    """Atomically replace `state_dir` by the adapter and `state` plus the optimizer and RNG state."""
    out = Path(state_dir)
    tmp = temp_dir_beside(out)
    model.save_pretrained(tmp / ADAPTER_SUBDIR)
    full = dict(state, optimizer=optimizer.state_dict(), rng=torch.get_rng_state())
    torch.save(full, tmp / STATE_FILE)
    replace_dir(tmp, out)


def load_adapter_weights(model, adapter_dir: str | os.PathLike) -> None:
    """Load a saved adapter's weights into the matching PEFT model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(Path(adapter_dir) / "adapter_model.safetensors"))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise LsMergeError(f"the saved adapter in {adapter_dir} does not fit this model ({unexpected[:3]} ...); delete it to start over.")


# -- outputs ---------------------------------------------------------------------------------
def save_adapter(model, adapter_dir: str | os.PathLike) -> None:
    """The PEFT adapter, written atomically."""
    out = Path(adapter_dir)
    tmp = temp_dir_beside(out)
    model.save_pretrained(tmp)
    replace_dir(tmp, out)


def save_merged(model, base: str | os.PathLike, merged_dir: str | os.PathLike, config: dict) -> None:
    """Merge the adapter into the weights (`merge_and_unload`, which consumes the PEFT wrapping) and
    write the base's tensor names from the result, with the base's config and tokenizer."""
    from lsmerge.io.store import open_checkpoint
    from lsmerge.io.writer import CheckpointWriter

    names = open_checkpoint(base).names
    merged = model.merge_and_unload()
    weights = merged.state_dict()
    missing = [n for n in names if n not in weights]
    if missing:
        raise LsMergeError(f"the merged model lacks base tensors {missing[:3]}; is {base} the model the adapter was trained on?")
    with CheckpointWriter(merged_dir, source=base, overwrite=True, config=config) as w:
        for n in names:
            w.add(n, weights[n].detach().contiguous())


def outputs_exist(cfg: ExpertConfig) -> bool:
    return (Path(cfg.adapter_dir) / "adapter_config.json").is_file() and (Path(cfg.merged_dir) / "config.json").is_file()


# -- training --------------------------------------------------------------------------------
def _peft_model(cfg: ExpertConfig, base_model):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
        bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(base_model, lora)


def _learning_rate(cfg: ExpertConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def train_expert(cfg: ExpertConfig, print_fn=print) -> dict:
    """Train (or resume, or skip) one expert and write its adapter and merged checkpoint.

    Returns the final state summary: step, tokens_seen, train_seconds, skipped, last_loss.
    """
    if cfg.minutes is None and cfg.max_steps is None:
        raise LsMergeError("no budget: give minutes and/or max_steps.")
    recipe = expert_recipe(cfg)
    key = recipe_key(recipe)
    state = read_state(cfg.state_dir)
    if state is not None and state.get("recipe_key") != key:
        saved = state.get("recipe")
        why = f"it differs in: {_recipe_difference(saved, recipe)}" if isinstance(saved, dict) else "it records no recipe (an older lsmerge)"
        raise LsMergeError(f"{cfg.state_dir} holds the training state of another expert recipe ({why}); "
                           "delete that folder to train this one, or give another state_dir.")
    if state is not None and budget_reached(cfg, state["step"], state["train_seconds"]) and written_from(cfg, key, state["step"]):
        print_fn(f"{Path(cfg.merged_dir).name}: done at step {state['step']} ({state['tokens_seen']} tokens, "
                 f"{state['train_seconds'] / 60:.1f} min, recipe {key}); skipped")
        return {k: state[k] for k in ("step", "tokens_seen", "train_seconds", "last_loss")} | {"skipped": True, "recipe_key": key}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    tokenizer = load_tokenizer(cfg.base)
    tokenizer.model_max_length = int(1e12)
    text = read_text(cfg.train_text, "training text")
    t0 = time.perf_counter()
    blocks = token_blocks(tokenize_text(tokenizer, text, progress=True), cfg.seq_len)  # (n_blocks, seq_len)
    print_fn(f"{Path(cfg.merged_dir).name}: {blocks.numel()} train tokens in {len(blocks)} blocks of {cfg.seq_len} "
             f"(tokenized in {time.perf_counter() - t0:.1f} s)")

    torch.manual_seed(cfg.seed)
    base_model = load_causal_lm(cfg.base, "float32")
    model = _peft_model(cfg, base_model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, tokens_seen, train_seconds, last_loss = 0, 0, 0.0, float("nan")
    if state is not None:
        load_adapter_weights(model, Path(cfg.state_dir) / ADAPTER_SUBDIR)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, tokens_seen, train_seconds, last_loss = state["step"], state["tokens_seen"], state["train_seconds"], state["last_loss"]
        print_fn(f"resuming at step {step} ({tokens_seen} tokens, {train_seconds / 60:.1f} min trained)")
    n_trainable = sum(p.numel() for p in params)
    modules = list(cfg.target_modules)
    shown = ",".join(modules) if len(modules) <= 8 else f"{len(modules)} modules ({modules[0]}, ..., {modules[-1]})"
    print_fn(f"LoRA r={cfg.r} alpha={cfg.alpha} dropout={cfg.dropout} on {shown}: {n_trainable} trainable parameters")

    def checkpoint() -> None:
        save_state(model, optimizer, {"step": step, "tokens_seen": tokens_seen, "train_seconds": train_seconds,
                                      "last_loss": last_loss, "config": asdict(cfg), "recipe": recipe,
                                      "recipe_key": key}, cfg.state_dir)

    model.train()
    window_loss, window_steps, window_t, window_tokens = 0.0, 0, 0.0, 0
    last_line = time.perf_counter()
    while not budget_reached(cfg, step, train_seconds):
        t = time.perf_counter()
        batch = blocks[batch_indices(step, cfg.batch_size, len(blocks), cfg.seed)]  # (batch, seq_len)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(cfg, step)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss.item()):
            raise LsMergeError(f"loss became {loss.item()} at step {step}; lower lr.")
        dt = time.perf_counter() - t
        step += 1
        tokens_seen += batch.numel()
        train_seconds += dt
        last_loss = loss.item()
        window_loss, window_steps, window_t, window_tokens = window_loss + last_loss, window_steps + 1, window_t + dt, window_tokens + batch.numel()
        if step % cfg.log_every == 0 or time.perf_counter() - last_line >= 10.0:  # a line at least every 10 s
            print_fn(f"step {step:5d}  loss {window_loss / window_steps:.4f}  {window_tokens / window_t:7.0f} tok/s  "
                     f"{train_seconds / 60:5.1f} min  {tokens_seen} tokens")
            window_loss, window_steps, window_t, window_tokens = 0.0, 0, 0.0, 0
            last_line = time.perf_counter()
        if step % cfg.save_every == 0:
            checkpoint()
    checkpoint()

    model.eval()
    save_adapter(model, cfg.adapter_dir)
    provenance = {"expert": asdict(cfg), "recipe": recipe, "recipe_key": key, "step": step, "tokens_seen": tokens_seen,
                  "train_minutes": round(train_seconds / 60, 2)}
    save_merged(model, cfg.base, cfg.merged_dir, provenance)
    print_fn(f"{Path(cfg.merged_dir).name}: step {step}, {tokens_seen} tokens, {train_seconds / 60:.1f} min; "
             f"wrote {cfg.adapter_dir} and {cfg.merged_dir}")
    return {"step": step, "tokens_seen": tokens_seen, "train_seconds": train_seconds, "last_loss": last_loss, "skipped": False,
            "recipe_key": key}


# -- evaluation ------------------------------------------------------------------------------
def perplexity_on_texts(model_dir: str | os.PathLike, texts: dict[str, str], *, max_length: int = 512,
                        max_tokens: int | None = 16384, batch_size: int = 4) -> dict[str, float]:
    """{text name: perplexity} of one checkpoint on text files, each scored on its first
    `max_tokens` tokens in non-overlapping windows of `max_length` (`perplexity_of_ids`)."""
    from lsmerge.evaluate.perplexity import encode_text, perplexity_of_ids

    tokenizer = load_tokenizer(model_dir)
    tokenizer.model_max_length = int(1e12)
    model = load_causal_lm(model_dir, "float32")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = {}
    for name, path in texts.items():
        ids = encode_text(tokenizer, read_text(path, "evaluation text"), max_tokens)
        ppl, _, _, _ = perplexity_of_ids(model, ids, max_length=max_length, stride=max_length, batch_size=batch_size, pad_id=pad_id)
        out[name] = ppl
    return out


def evaluate_expert(name: str, domain: str, expert_dir: str, base: str, texts: dict[str, str], out_json: str | os.PathLike,
                    base_ppl: dict[str, float] | None = None, training: dict | None = None, **ppl_kwargs) -> dict:
    """Perplexity of base and expert on every text, written to `out_json`; returns that record.

    `base_ppl` (the base's perplexities on the same texts and settings) is reused when given;
    `training` (step, tokens seen, ...) is stored with the numbers.
    """
    base_ppl = base_ppl or perplexity_on_texts(base, texts, **ppl_kwargs)
    expert_ppl = perplexity_on_texts(expert_dir, texts, **ppl_kwargs)
    record = {
        "expert": name, "domain": domain, "expert_path": str(expert_dir), "base_path": str(base),
        "texts": {k: str(v) for k, v in texts.items()}, "settings": ppl_kwargs,
        "perplexity": {"base": base_ppl, "expert": expert_ppl},
        "own_domain_reduction": 1 - expert_ppl[domain] / base_ppl[domain],
        "training": training or {},
    }
    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(record, indent=2) + "\n")
    return record


def format_table(records: list[dict]) -> str:
    """Base and expert perplexity per domain, one row per model."""
    domains = list(records[0]["perplexity"]["base"])
    rows = [("base", records[0]["perplexity"]["base"])] + [(r["expert"], r["perplexity"]["expert"]) for r in records]
    width = max(len(n) for n, _ in rows)
    lines = ["  ".join([f"{'model':<{width}}", *(f"{d:>12}" for d in domains)])]
    lines.append("  ".join(["-" * width, *("-" * 12 for _ in domains)]))
    for n, ppl in rows:
        lines.append("  ".join([f"{n:<{width}}", *(f"{ppl[d]:>12.3f}" for d in domains)]))
    for r in records:
        lines.append(f"{r['expert']}: own domain ({r['domain']}) perplexity {r['perplexity']['base'][r['domain']]:.3f} -> "
                     f"{r['perplexity']['expert'][r['domain']]:.3f} ({100 * r['own_domain_reduction']:.1f}% lower)")
    return "\n".join(lines)

"""Architecture map: tensor name -> (layer index, module kind).

Kinds (strings, so configs can name them):

    embed, pos_embed, lm_head,
    attn_q, attn_k, attn_v, attn_qkv (fused), attn_o,
    mlp_gate, mlp_up, mlp_down          (fc_in / c_fc / dense_h_to_4h are `mlp_up`,
                                         fc_out / c_proj / dense_4h_to_h are `mlp_down`),
    norm, other

Groups used by selections: `attn` (all attn_*), `qkv` (q, k, v and fused qkv), `mlp`
(all mlp_*), `norm`, `embed` (embed, pos_embed, lm_head), plus every kind by its own name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from lsmerge.errors import LsMergeError

KINDS = (
    "embed", "pos_embed", "lm_head",
    "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o",
    "mlp_gate", "mlp_up", "mlp_down",
    "norm", "other",
)  # fmt: skip

GROUPS: dict[str, frozenset[str]] = {
    "attn": frozenset({"attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o"}),
    "qkv": frozenset({"attn_q", "attn_k", "attn_v", "attn_qkv"}),
    "mlp": frozenset({"mlp_gate", "mlp_up", "mlp_down"}),
    "norm": frozenset({"norm"}),
    "embed": frozenset({"embed", "pos_embed", "lm_head"}),
    "all": frozenset(KINDS),
}

# Module-name suffixes (the part after the layer prefix, without .weight/.bias) -> kind.
_LLAMA_LIKE = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_o",
    "self_attn.q_norm": "norm",
    "self_attn.k_norm": "norm",
    "mlp.gate_proj": "mlp_gate",
    "mlp.up_proj": "mlp_up",
    "mlp.down_proj": "mlp_down",
    "input_layernorm": "norm",
    "post_attention_layernorm": "norm",
    "pre_feedforward_layernorm": "norm",
    "post_feedforward_layernorm": "norm",
}
_GPT2 = {
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_o",
    "mlp.c_fc": "mlp_up",
    "mlp.c_proj": "mlp_down",
    "ln_1": "norm",
    "ln_2": "norm",
}
_GPT_NEOX = {
    "attention.query_key_value": "attn_qkv",
    "attention.dense": "attn_o",
    "mlp.dense_h_to_4h": "mlp_up",
    "mlp.dense_4h_to_h": "mlp_down",
    "input_layernorm": "norm",
    "post_attention_layernorm": "norm",
}
# Used for user-supplied layer patterns and as a fallback inside known families.
_GENERIC = {
    **_LLAMA_LIKE,
    **_GPT2,
    **_GPT_NEOX,
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_o",
    "qkv_proj": "attn_qkv",
    "out_proj": "attn_o",
    "gate_proj": "mlp_gate",
    "up_proj": "mlp_up",
    "down_proj": "mlp_down",
    "fc_in": "mlp_up",
    "fc_out": "mlp_down",
    "fc1": "mlp_up",
    "fc2": "mlp_down",
}


@dataclass(frozen=True)
class Family:
    """How one architecture family names its tensors."""

    name: str
    layer_re: re.Pattern
    modules: dict[str, str]
    embed: tuple[str, ...]
    pos_embed: tuple[str, ...]
    final_norm: tuple[str, ...]
    lm_head: tuple[str, ...]


_LLAMA_FAMILY = dict(
    layer_re=re.compile(r"(?:^|\.)layers\.(?P<layer>\d+)\."),
    modules=_LLAMA_LIKE,
    embed=("embed_tokens",),
    pos_embed=(),
    final_norm=("norm",),
    lm_head=("lm_head",),
)
FAMILIES: dict[str, Family] = {
    **{t: Family(t, **_LLAMA_FAMILY) for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text")},
    "gpt2": Family(
        "gpt2",
        layer_re=re.compile(r"(?:^|\.)h\.(?P<layer>\d+)\."),
        modules=_GPT2,
        embed=("wte",),
        pos_embed=("wpe",),
        final_norm=("ln_f",),
        lm_head=("lm_head",),
    ),
    "gpt_neox": Family(
        "gpt_neox",
        layer_re=re.compile(r"(?:^|\.)layers\.(?P<layer>\d+)\."),
        modules=_GPT_NEOX,
        embed=("embed_in",),
        pos_embed=(),
        final_norm=("final_layer_norm",),
        lm_head=("embed_out",),
    ),
}
SUPPORTED = tuple(FAMILIES)


@dataclass(frozen=True)
class TensorRole:
    """Where a tensor sits in the model: `layer` is None outside the decoder blocks."""

    layer: int | None
    kind: str
    module: str  # the module path inside the layer (or the top-level module), without .weight/.bias


def _module_of(name: str) -> str:
    return re.sub(r"\.(weight|bias)$", "", name)


class ArchitectureMap:
    """Maps tensor names of one architecture to `TensorRole`s.

    Args:
        model_type: `config.json`'s `model_type` (see `SUPPORTED`), or None with `layer_pattern`.
        layer_pattern: a regex with a named group `layer` (and optionally `module`) matching
            decoder-block tensor names, for architectures lsmerge does not know, e.g.
            `blocks\\.(?P<layer>\\d+)\\.(?P<module>.+)\\.(weight|bias)$`.
        tie_word_embeddings: whether lm_head shares the embedding matrix.
    """

    def __init__(self, model_type: str | None, layer_pattern: str | None = None, tie_word_embeddings: bool = False):
        self.tie_word_embeddings = tie_word_embeddings
        if layer_pattern:
            try:
                rx = re.compile(layer_pattern)
            except re.error as e:
                raise LsMergeError(f"layer_pattern {layer_pattern!r} is not a valid regex ({e}).") from None
            if "layer" not in rx.groupindex:
                raise LsMergeError(f"layer_pattern {layer_pattern!r} needs a named group (?P<layer>\\d+).")
            self.family = Family(model_type or "custom", rx, _GENERIC, ("embed_tokens", "wte", "embed_in"),
                                 ("wpe",), ("norm", "ln_f", "final_layer_norm"), ("lm_head", "embed_out"))
        elif model_type in FAMILIES:
            self.family = FAMILIES[model_type]
        else:
            raise LsMergeError(
                f"unknown architecture {model_type!r}. Supported: {', '.join(SUPPORTED)}. For another "
                "architecture pass a layer pattern, e.g. --layer_pattern 'blocks\\.(?P<layer>\\d+)\\.(?P<module>.+)\\.(weight|bias)$'."
            )

    @classmethod
    def from_config(cls, config: dict, layer_pattern: str | None = None, where=None) -> "ArchitectureMap":
        """Build from a parsed `config.json` (text config of multimodal models included); `where`,
        the checkpoint folder, names it in the error when the config says no model_type."""
        if not layer_pattern and not (config.get("model_type") or (config.get("text_config") or {}).get("model_type")):
            folder = f"the checkpoint folder {where}" if where is not None else "the checkpoint folder"
            what = "has no config.json" if not config else "has a config.json without model_type"
            raise LsMergeError(f"{folder} {what}, so its architecture is unknown. Copy config.json from the model it "
                               "came from (save_pretrained writes it; for a Hub model download config.json), or pass "
                               "--layer_pattern with a (?P<layer>\\d+) group.")
        text = config.get("text_config") or {}
        model_type = config.get("model_type")
        if model_type not in FAMILIES and text.get("model_type") in FAMILIES:
            model_type = text["model_type"]
        tie = config.get("tie_word_embeddings", text.get("tie_word_embeddings", model_type in ("gemma", "gemma2", "gemma3", "gemma3_text")))
        return cls(model_type, layer_pattern=layer_pattern, tie_word_embeddings=bool(tie))

    def role(self, name: str) -> TensorRole:
        fam = self.family
        m = fam.layer_re.search(name)
        if m:
            layer = int(m.group("layer"))
            module = m.groupdict().get("module") or _module_of(name[m.end() :])
            kind = fam.modules.get(module) or _GENERIC.get(module) or _GENERIC.get(module.rsplit(".", 1)[-1])
            if kind is None and "norm" in module.rsplit(".", 1)[-1]:
                kind = "norm"
            return TensorRole(layer, kind or "other", module)
        module = _module_of(name)
        last = module.rsplit(".", 1)[-1]
        for kind, names in (("embed", fam.embed), ("pos_embed", fam.pos_embed), ("lm_head", fam.lm_head), ("norm", fam.final_norm)):
            if last in names:
                return TensorRole(None, kind, module)
        return TensorRole(None, "other", module)

    def roles(self, names: Iterable[str]) -> dict[str, TensorRole]:
        return {n: self.role(n) for n in names}

    def num_layers(self, names: Iterable[str]) -> int:
        """Number of decoder blocks seen in `names` (max layer index + 1)."""
        layers = [r.layer for r in self.roles(names).values() if r.layer is not None]
        return max(layers) + 1 if layers else 0


def expand_kinds(selection: Iterable[str]) -> frozenset[str]:
    """Turn kinds and group names (`attn`, `qkv`, `mlp`, ...) into a set of kinds."""
    out: set[str] = set()
    for s in selection:
        if s in GROUPS:
            out |= GROUPS[s]
        elif s in KINDS:
            out.add(s)
        else:
            raise LsMergeError(f"unknown module kind {s!r}. Use one of {sorted(GROUPS)} or {list(KINDS)}.")
    return frozenset(out)

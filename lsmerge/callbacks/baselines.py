"""`BaselineMerges`: the baselines beside the weight VAE while it trains, by held-out perplexity.

Every `every_n_validations`-th validation run (sanity checks excluded, global rank 0 only,
only with a TensorBoard logger attached) one base / expert pair (same architecture) is merged
by the configured methods and every result is scored on the same held-out text:

    base, expert                    the two inputs alone (reference rows)
    weight_lerp_t<t>                weight space: (1 - t) W_base + t W_expert   (`linear`)
    weight_slerp_t<t>               weight space: SLERP in float32               (`slerp`)
    weight_ties_d<density>          weight space: TIES of the expert's task vector (`ties`)
    hidden_<op>_L<layer>_b<beta>    representation space: residual stream at `mix_layer`
                                    mixed as op(h_base, h_expert, beta) at every position
    latent_lerp_l<lambda>           the VAE being trained: W = D((1 - lam) E(W_base) + lam E(W_expert))
                                    for the tensors it covers; the rest from weight LERP at lam

The formulas are those of `lsmerge.merge.weight` (registry methods), `lsmerge.merge.hidden`
and `lsmerge.merge.latent` (`VAECodec` around the LightningModule); perplexity is
`lsmerge.evaluate.perplexity.perplexity_of_ids` (sliding windows of `max_length`, `stride`).
Only the latent row changes while the VAE trains: the other rows are computed at the first
due validation and logged again with it each time.

Logged with the TensorBoard experiment (``self.log`` is not allowed in `on_validation_end`):
scalars ``baselines/ppl/<row>`` at the global step and a text table ``baselines/table``.

The pair, its text and the merges are a `lsmerge.evaluate.pair_bench.PairBench`, loaded once in
`setup`; this module holds the configuration checks and the Lightning lifecycle. Lightning hands `on_validation_end` a module in eval mode and restores training mode itself
afterwards; the callback puts every submodule of the VAE back in the mode it found it in.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L

from lsmerge.callbacks.figures import tensorboard_writer
from lsmerge.errors import LsMergeError
from lsmerge.evaluate.pair_bench import BYTES, PairBench, format_table
from lsmerge.evaluate.perplexity import check_window
from lsmerge.io.compat import check_same_architecture, model_family
from lsmerge.io.hf import TOKENIZER_FILES, resolve_model
from lsmerge.io.store import CheckpointStore, open_checkpoint
from lsmerge.io.text import EncodingErrors, read_text
from lsmerge.merge.hidden import MixSpec, check_mix_layer
from lsmerge.merge.hidden.base import operator_names
from lsmerge.merge.latent import check_lambda
from lsmerge.merge.weight import get_method
from lsmerge.merge.weight.base import in_unit_interval
from lsmerge.torch_options import resolve_device, resolve_dtype

WEIGHT_METHODS = ("lerp", "slerp", "ties")
HIDDEN_OPERATORS = operator_names("one")  # the registry's operators on exactly one expert: lerp, slerp


@dataclass
class WeightBaseline:
    """A weight-space merge: `method` lerp | slerp (position `t`, 0 = base) | ties (`density` of
    the expert's task vector kept, weight 1, lambda 1)."""

    method: str = "lerp"
    t: float = 0.5
    density: float = 0.5

    @property
    def name(self) -> str:
        return f"weight_ties_d{self.density:g}" if self.method == "ties" else f"weight_{self.method}_t{self.t:g}"


@dataclass
class HiddenBaseline:
    """Hidden-state mixing of the residual stream entering decoder layer `mix_layer` (0..N):
    `operator` lerp | slerp with ratio `beta` (0 = base), at every position."""

    operator: str = "lerp"
    mix_layer: int = 0
    beta: float = 0.5

    @property
    def name(self) -> str:
        return f"hidden_{self.operator}_L{self.mix_layer}_b{self.beta:g}"


def decoder_layer_count(store: CheckpointStore) -> int:
    """N decoder layers from config.json (`num_hidden_layers`, text config included), else from names."""
    cfg = store.config
    n = cfg.get("num_hidden_layers", (cfg.get("text_config") or {}).get("num_hidden_layers"))
    if n is None:
        from lsmerge.io.archmap import ArchitectureMap

        n = ArchitectureMap.from_config(cfg).num_layers(store.names)
    return int(n)


@contextmanager
def vae_codec(pl_module: L.LightningModule):
    """The LightningModule being trained as a `VAECodec` (which sets eval mode); on exit every
    submodule is back in the training mode it had."""
    from lsmerge.codecs.vae import VAECodec

    if not getattr(pl_module, "tensors", None):
        raise LsMergeError(
            f"latent_lambda is set but {type(pl_module).__name__} names no trained tensors (not a WeightVAE?). "
            "Set latent_lambda: null to leave the latent row out."
        )
    modes = {m: m.training for m in pl_module.modules()}
    try:
        yield VAECodec(pl_module, device=pl_module.device)
    finally:
        for m, training in modes.items():
            m.training = training


class BaselineMerges(L.Callback):
    """Weight / hidden-state / latent merges of a model pair scored by perplexity (see module doc).

    Args:
        base: base checkpoint folder (`tiny:<dir>` / `tiny@<seed>:<dir>` create a tiny Llama).
            For the latent row the VAE must have been trained on this architecture's tensors.
        expert: expert checkpoint folder of the same architecture (same `tiny` forms).
        text: held-out plain-text file.
        tokenizer: tokenizer folder; None = the base's own; `bytes` = UTF-8 bytes as token ids.
        max_tokens: tokens of the text scored (a prefix).
        max_length: sliding-window length in tokens.
        stride: shift between windows (<= max_length).
        batch_size: windows per forward pass.
        every_n_validations: run on every n-th validation (1 = each).
        weight: weight-space baselines; None = lerp and slerp at t 0.5, ties at density 0.5.
        hidden: hidden-state baselines (mix_layer validated against the base's layer count).
        latent_lambda: lambda of the VAE's latent LERP; None leaves the latent row out.
        dtype: dtype of the evaluated models.
        device: where they run; None = the VAE's device.
        encoding_errors: strict (a held-out text that is not UTF-8 is an error, at configuration
            time) or replace (bad bytes become U+FFFD).
    """

    def __init__(
        self,
        base: str,
        expert: str,
        text: str,
        tokenizer: str | None = None,
        max_tokens: int = 2048,
        max_length: int = 512,
        stride: int = 256,
        batch_size: int = 4,
        every_n_validations: int = 1,
        weight: list[WeightBaseline] | None = None,
        hidden: list[HiddenBaseline] | None = None,
        latent_lambda: float | None = 0.5,
        dtype: str = "float32",
        device: str | None = None,
        encoding_errors: EncodingErrors = "strict",
    ):
        if isinstance(every_n_validations, bool) or not isinstance(every_n_validations, int) or every_n_validations < 1:
            raise LsMergeError(f"every_n_validations={every_n_validations!r} must be an integer >= 1 (1 = every validation run).")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise LsMergeError(f"max_tokens={max_tokens!r} must be an integer >= 1, e.g. 2048.")
        if batch_size < 1:
            raise LsMergeError(f"batch_size={batch_size} must be >= 1.")
        check_window(max_length, stride)
        self.dtype = resolve_dtype(dtype)
        self.device = None if device is None else resolve_device(device)
        self.latent_lambda = None if latent_lambda is None else check_lambda(latent_lambda, "latent_lambda")

        self.base_path, self.expert_path = str(resolve_model(base)), str(resolve_model(expert))
        for what, path in (("base", self.base_path), ("expert", self.expert_path)):
            if not (Path(path) / "config.json").is_file():
                raise LsMergeError(
                    f"{what} model {path} is not a checkpoint folder with config.json. Check the path, or use "
                    "tiny:<dir> for a tiny test model."
                )
        self.base_store, self.expert_store = open_checkpoint(self.base_path), open_checkpoint(self.expert_path)
        check_same_architecture([self.base_store, self.expert_store], "The baselines merge one architecture; give an expert "
                                "fine-tuned from the base.")
        self.n_layers = decoder_layer_count(self.base_store)

        self.text = Path(text).expanduser()
        if not self.text.is_file() or not self.text.read_bytes().strip():
            raise LsMergeError(f"held-out text {self.text} does not exist or is empty. Give a plain-text file.")
        read_text(self.text, "held-out text", encoding_errors)  # refuse a non-UTF-8 text before training
        self.tokenizer = tokenizer
        if tokenizer != BYTES:
            folder = Path(tokenizer or self.base_path)
            if not any((folder / f).exists() for f in TOKENIZER_FILES):
                raise LsMergeError(
                    f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)}). Give `tokenizer` a tokenizer "
                    "folder, or `tokenizer: bytes` for a tiny test model with an ASCII text."
                )
        self.max_tokens, self.max_length, self.stride, self.batch_size = max_tokens, max_length, stride, batch_size
        self.every_n_validations = every_n_validations

        if weight is None:
            weight = [WeightBaseline("lerp", 0.5), WeightBaseline("slerp", 0.5), WeightBaseline("ties", density=0.5)]
        self.weight = [self._weight_plan(w if isinstance(w, WeightBaseline) else WeightBaseline(**w)) for w in weight]
        self.hidden = [h if isinstance(h, HiddenBaseline) else HiddenBaseline(**h) for h in hidden or []]
        for h in self.hidden:
            if h.operator not in HIDDEN_OPERATORS:
                raise LsMergeError(f"hidden operator {h.operator!r} is not a baseline here; use one of {', '.join(HIDDEN_OPERATORS)}.")
            check_mix_layer(h.mix_layer, self.n_layers, what=f"the base model {self.base_path}")
            MixSpec(h.operator, h.mix_layer, h.beta, "all")  # checks beta
        names = [w[0].name for w in self.weight] + [h.name for h in self.hidden]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise LsMergeError(f"baseline {dup[0]} is configured twice; remove the duplicate.")

        self.validations = 0
        self.last: dict[str, float] = {}  # row -> perplexity of the latest evaluation
        self._fixed: dict[str, float] | None = None
        self.bench = PairBench(self.base_store, self.expert_store, self.text, tokenizer, max_tokens=max_tokens,
                               max_length=max_length, stride=stride, batch_size=batch_size,
                               dtype=str(self.dtype).removeprefix("torch."), encoding_errors=encoding_errors)

    def _weight_plan(self, w: WeightBaseline):
        """(baseline, registry method, resolved parameters), checked by the method itself."""
        if w.method not in WEIGHT_METHODS:
            raise LsMergeError(f"weight method {w.method!r} is not a baseline here; use one of {', '.join(WEIGHT_METHODS)}.")
        if w.method == "lerp":
            problem = in_unit_interval(w.t)
            if problem:
                raise LsMergeError(f"weight lerp: t={w.t!r} {problem} (0 = base, 1 = expert). Fix it in the config.")
            method, params = get_method("linear"), {"weight": [1.0 - w.t, w.t], "normalize": True}
        elif w.method == "slerp":
            method, params = get_method("slerp"), {"t": w.t}
        else:
            method, params = get_method("ties"), {"weight": [1.0], "density": [w.density], "lambda": 1.0}
        params = {**{p.name: p.default for p in method.params}, **params}  # the method's defaults for the rest
        method.check_params(params, f"baseline {w.name}")
        return w, method, params

    # -- lifecycle -------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.latent_lambda is not None:
            with vae_codec(pl_module) as codec:
                codec.check_model(model_family(self.base_store.config), {n: self.base_store.shape(n) for n in self.base_store.names})
        if trainer.is_global_zero and self.bench.models is None:
            self._load()

    def _load(self) -> None:
        self.bench.load()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        if self.validations % self.every_n_validations or not trainer.is_global_zero:
            return
        tb = tensorboard_writer(trainer)
        if tb is None:
            return
        rows = self.evaluate(pl_module)
        step = trainer.global_step
        for name, ppl in rows.items():
            tb.add_scalar(f"baselines/ppl/{name}", ppl, step)
        tb.add_text("baselines/table", format_table(rows, int(self.bench.ids.numel()) - 1), step)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(base=self.base_path, expert=self.expert_path, text=str(self.text))

    def state_dict(self) -> dict:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict) -> None:
        self.validations = int(state_dict.get("validations", 0))

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Perplexity of every row (see module doc) in order: base, expert, weight, hidden, latent."""
        if self.bench.models is None:
            self._load()
        device = self.device or pl_module.device
        self.bench.to(device)
        if self._fixed is None:  # these inputs do not change while the VAE trains
            rows = self.bench.inputs(device)
            for w, method, params in self.weight:
                rows[w.name] = self.bench.weight_merge(method, params, device)
            for h in self.hidden:
                rows[h.name] = self.bench.hidden_mix(MixSpec(h.operator, h.mix_layer, h.beta, "all"), device)
            self._fixed = rows
        rows = dict(self._fixed)
        if self.latent_lambda is not None:
            with vae_codec(pl_module) as codec:
                rows[f"latent_lerp_l{self.latent_lambda:g}"] = self.bench.latent_lerp(codec, self.latent_lambda, device)
        self.last = rows
        return rows

"""`VAECodec`: the trained `WeightVAE` behind the `Codec` protocol (lsmerge.codecs.base).

encode(name, W):  norm = (mean, std) of W;  x = normalise(W);  chunks (n, c) in the trained
layout;  fixed windows of T chunks (as in training);  z = mu (n, latent_dim), logvar likewise.
decode(name, latent): windows of z -> decoder -> chunks -> unchunk -> denormalise with
`latent.norm` (merged statistics when the operator combined them).
sample(name, W, n, temperature): n posterior draws z = mu + temperature * exp(logvar/2) * eps.

Loading is pickle-free: the Lightning `.ckpt` is read by `lsmerge.io.ckpt` (local files only,
``torch.load(weights_only=True)``; the hyper-parameters are plain dicts, lists, numbers and
strings; a URL, a missing, truncated or foreign file is one LsMergeError), the model is rebuilt
from `hyper_parameters` and its `state_dict` loaded; no class is unpickled.
"""

from __future__ import annotations

import os

import torch

from lsmerge.codecs.base import TensorLatent
from lsmerge.data import chunking
from lsmerge.errors import LsMergeError
from lsmerge.io.archmap import KINDS
from lsmerge.io.ckpt import load_lightning_checkpoint
from lsmerge.models.weight_vae import WeightVAE

_NOT_INIT_ARGS = ("_instantiator", "_class_path")


VAE_HPARAMS = ("chunk_size", "tokens_per_sample", "num_layers", "tensors", "latent_dim")
_WRITER = "`lsmerge fit` (a WeightVAE)"


def read_vae_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", what: str = "VAE checkpoint") -> dict:
    """The dict of the WeightVAE Lightning checkpoint at `path` (local file, weights-only load;
    `lsmerge.io.ckpt`), or one LsMergeError saying what is wrong with it."""
    ckpt = load_lightning_checkpoint(path, map_location, hparams=VAE_HPARAMS, what=what, model=_WRITER)
    cls = ckpt["hyper_parameters"].get("_class_path")
    if cls is not None and str(cls).rsplit(".", 1)[-1] != WeightVAE.__name__:
        raise LsMergeError(f"{what} {path} is a checkpoint of {cls}, not of a WeightVAE. Pass a checkpoint written by {_WRITER}.")
    return ckpt


def load_weight_vae(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> WeightVAE:
    """Rebuild a `WeightVAE` from a Lightning checkpoint with `torch.load(weights_only=True)`."""
    return weight_vae_from(read_vae_checkpoint(path, map_location))


def weight_vae_from(ckpt: dict) -> WeightVAE:
    """The `WeightVAE` of a checkpoint dict read by `read_vae_checkpoint` (in eval mode)."""
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if k not in _NOT_INIT_ARGS}
    model = WeightVAE(**hp)
    model.load_state_dict(ckpt["state_dict"])
    if "beta_curriculum" in ckpt:
        model.curriculum.load_state_dict(ckpt["beta_curriculum"])
    return model.eval()


class VAECodec:
    """A trained weight VAE as a `Codec`.

    Args:
        model: the trained `WeightVAE` (its hparams name the tensors it was trained on).
        batch_windows: windows per forward pass when encoding / decoding a tensor.
        device: where to run the model.
    """

    def __init__(self, model: WeightVAE, batch_windows: int = 256, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.batch_windows = batch_windows
        hp = model.hparams
        self.chunk_size, self.T = hp.chunk_size, hp.tokens_per_sample
        self.layout, self.normalization, self.kappa = hp.layout, hp.normalization, hp.slog_kappa
        self.family = hp.family
        self.specs = {t["name"]: t for t in model.tensors}
        self._positions: dict[tuple[str, int], torch.Tensor] = {}  # (enc|dec, n_windows) -> (n_windows, T, D)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kw) -> "VAECodec":
        return cls(load_weight_vae(path), device=device, **kw)

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def __repr__(self) -> str:
        return (f"VAECodec(family={self.family!r}, tensors={len(self.specs)}, chunk_size={self.chunk_size}, "
                f"latent_dim={self.model.hparams.latent_dim})")

    def covers(self, name: str) -> bool:
        return name in self.specs

    def check_model(self, model_type: str | None, shapes: dict[str, tuple[int, ...]]) -> None:
        """Raise LsMergeError naming every mismatch between the VAE's trained tensors and a model
        (its `config.json` model_type and its {name: shape})."""
        problems = []
        if self.family and model_type and model_type != self.family:
            problems.append(f"family {model_type!r} (the VAE was trained on {self.family!r})")
        for name, spec in self.specs.items():
            if name not in shapes:
                problems.append(f"{name} missing")
            elif list(shapes[name]) != list(spec["shape"]):
                problems.append(f"{name} has shape {list(shapes[name])}, trained on {spec['shape']}")
        if problems:
            shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
            raise LsMergeError(
                f"the VAE was not trained on this model's tensors: {shown}. Fit a VAE on this model "
                "(lsmerge fit with data.checkpoints pointing at it)."
            )

    def _spec(self, name: str, shape: tuple[int, ...] | None = None) -> dict:
        spec = self.specs.get(name)
        if spec is None:
            raise LsMergeError(f"tensor {name} was not in the VAE's training selection; merge it in weight space or refit the VAE.")
        if shape is not None and list(shape) != list(spec["shape"]):
            raise LsMergeError(f"tensor {name} has shape {list(shape)}, but the VAE was trained on shape {spec['shape']}.")
        return spec

    def _cond(self, which: str, spec: dict, n_win: int, s: slice) -> torch.Tensor:
        """Conditioning (b, T, D) of windows `s` of a tensor with `n_win` windows; `which` is
        `enc` or `dec`. The chunk-index term, the costly part, is cached per (which, n_win):
        every tensor with the same chunk count (all MLP tensors of a model) shares it. The codec
        treats the model as frozen; the cache is not invalidated if its weights change."""
        module = self.model.enc_cond if which == "enc" else self.model.dec_cond
        key = (which, n_win)
        if key not in self._positions:
            if len(self._positions) >= 4:
                del self._positions[next(iter(self._positions))]
            all_index = torch.arange(n_win * self.T, device=self.device).view(n_win, self.T)
            self._positions[key] = module.position(all_index)
        position = self._positions[key][s]
        chunk_index = torch.arange(s.start * self.T, (s.start + position.shape[0]) * self.T, device=self.device)
        layer = self.model.hparams.num_layers if spec["layer"] is None else spec["layer"]
        layer = torch.tensor([layer], device=self.device)
        kind = torch.tensor([KINDS.index(spec["kind"])], device=self.device)
        return module(layer, kind, chunk_index.view(-1, self.T), position=position)

    def _batches(self, token_mask: torch.Tensor):
        """Yield (slice of windows, key mask (b, T) or None when every token of the batch is real)."""
        for i in range(0, token_mask.shape[0], self.batch_windows):
            s = slice(i, i + self.batch_windows)
            yield s, (None if bool(token_mask[s].all()) else token_mask[s])

    def _encode(self, name: str, weight: torch.Tensor) -> TensorLatent:
        spec = self._spec(name, tuple(weight.shape))
        chunks, _, norm = chunking.tensor_to_tokens(weight, self.chunk_size, self.layout, self.normalization, self.kappa)
        n = chunks.shape[0]
        windows, token_mask = chunking.to_windows(chunks, self.T)  # padding values are zero already
        windows, token_mask = windows.to(self.device), token_mask.to(self.device)
        n_win, d = windows.shape[0], self.model.hparams.latent_dim
        mu = torch.empty(n_win, self.T, d)  # outside inference mode: callers may edit them in place
        logvar = torch.empty(n_win, self.T, d)
        with torch.inference_mode():
            for s, key_mask in self._batches(token_mask):
                m, lv = self.model.encode_tokens(windows[s], self._cond("enc", spec, n_win, s), key_mask)
                mu[s] = m
                logvar[s] = lv
        return TensorLatent(
            z=mu.view(-1, d)[:n], norm=norm.to(torch.float32), shape=tuple(weight.shape),
            logvar=logvar.view(-1, d)[:n],
        )

    def encode(self, name: str, weight: torch.Tensor) -> TensorLatent:
        """weight -> TensorLatent(z=(n_chunks, latent_dim) means, logvar, norm=(mean, std), shape)."""
        return self._encode(name, weight)

    def decode(self, name: str, latent: TensorLatent) -> torch.Tensor:
        """TensorLatent -> float32 tensor of `latent.shape` (denormalised with `latent.norm`)."""
        spec = self._spec(name, tuple(latent.shape))
        n = latent.z.shape[0]
        zw, token_mask = chunking.to_windows(latent.z.to(torch.float32), self.T)
        zw, token_mask = zw.to(self.device), token_mask.to(self.device)
        n_win = zw.shape[0]
        out = torch.empty(n_win, self.T, self.chunk_size)
        with torch.inference_mode():
            for s, key_mask in self._batches(token_mask):
                out[s] = self.model.decode_tokens(zw[s], self._cond("dec", spec, n_win, s), key_mask)
        chunks = out.view(-1, self.chunk_size)[:n]
        return chunking.tokens_to_tensor(chunks, latent.shape, latent.norm, self.layout, self.normalization, self.kappa)

    def sample(self, name: str, weight: torch.Tensor, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> list[TensorLatent]:
        """`n` posterior samples z = mu + temperature * exp(logvar / 2) * eps (eps ~ N(0, I))."""
        base = self._encode(name, weight)
        std = torch.exp(0.5 * base.logvar)
        return [
            base.with_z(base.z + temperature * std * torch.randn(base.z.shape, generator=generator)) for _ in range(n)
        ]

    def reconstruct(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """decode(encode(W)) in W's dtype."""
        return self.decode(name, self.encode(name, weight)).to(weight.dtype)

"""Plain `nn.Module` building blocks of the weight VAE (no Lightning here).

Shapes: B batch, T tokens per sample (chunks of one tensor), D model width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention`.

    x (B, T, D), key_mask (B, T) bool (True = real token) -> (B, T, D).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (GELU MLP)."""

    def __init__(self, d_model: int, n_heads: int, ff_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, ff_mult * d_model), nn.GELU(), nn.Linear(ff_mult * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of pre-norm blocks with a final LayerNorm: (B, T, D) -> (B, T, D)."""

    def __init__(self, d_model: int, n_heads: int, n_layers: int, ff_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_heads, ff_mult, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)


def sinusoidal(positions: torch.Tensor, dim: int, max_period: float = 1e5) -> torch.Tensor:
    """Fixed sinusoidal features of integer positions: (...,) -> (..., dim) float32.

    ``f_i = 1 / max_period^(2i/dim)``, features ``[sin(p f), cos(p f)]``; used for the absolute
    chunk index inside its tensor, which can run to tens of thousands of chunks.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32).unsqueeze(-1) * freqs
    out = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return F.pad(out, (0, dim - 2 * half))


class TokenConditioning(nn.Module):
    """Position information added to every token (encoder and decoder alike).

    ``e = E_layer[layer] + E_kind[kind] + E_slot[t] + W_pos sin(chunk_index) (+ E_source[source])``
    with layer (B,), kind (B,), source (B,), chunk_index (B, T) -> (B, T, D). Layer index
    `num_layers` is reserved for tensors outside the decoder blocks (embeddings, final norm).
    """

    def __init__(self, d_model: int, num_layers: int, num_kinds: int, tokens_per_sample: int, num_sources: int = 0):
        super().__init__()
        self.layer = nn.Embedding(num_layers + 1, d_model)
        self.kind = nn.Embedding(num_kinds, d_model)
        self.slot = nn.Embedding(tokens_per_sample, d_model)
        self.pos = nn.Linear(d_model, d_model, bias=False)
        self.source = nn.Embedding(num_sources, d_model) if num_sources > 0 else None
        self.d_model = d_model

    def position(self, chunk_index: torch.Tensor) -> torch.Tensor:
        """The chunk-index term ``W_pos sin(chunk_index)``: (B, T) -> (B, T, D)."""
        return self.pos(sinusoidal(chunk_index, self.d_model))

    def forward(
        self,
        layer: torch.Tensor,
        kind: torch.Tensor,
        chunk_index: torch.Tensor,
        source: torch.Tensor | None = None,
        position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`position` (B or 1, T, D): a precomputed `self.position(chunk_index)` (the codec reuses
        it across tensors with the same chunk count); layer / kind / source may be (1,) to
        broadcast over the batch."""
        t = chunk_index.shape[1]
        e = (self.layer(layer) + self.kind(kind))[:, None, :] + self.slot.weight[:t][None]
        e = e + (self.position(chunk_index) if position is None else position)
        if self.source is not None and source is not None:
            e = e + self.source(source)[:, None, :]
        return e


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last dim: ``-1/2 sum(1 + lv - mu^2 - e^lv)``."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)

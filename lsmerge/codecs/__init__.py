"""Codecs: invertible-ish maps between weight tensors and latent codes (VAE, PCA)."""

from lsmerge.codecs.base import Codec, TensorLatent

__all__ = ["Codec", "TensorLatent"]

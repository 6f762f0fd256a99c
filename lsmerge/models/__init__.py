"""The weight VAE (LightningModule) and its plain nn.Module parts."""

from lsmerge.models.weight_vae import WeightVAE

__all__ = ["WeightVAE"]

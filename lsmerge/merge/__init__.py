"""Merging: weight-space baselines (`weight`), LS-Merge in latent space (`latent`, `ot`),
and representation-space mixing (`hidden`). Submodules are imported on use."""

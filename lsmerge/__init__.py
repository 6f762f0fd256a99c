"""lsmerge: compose language models in weight, latent and representation space."""

from lsmerge.errors import LsMergeError

__version__ = "0.1.0"

__all__ = ["LsMergeError", "__version__"]

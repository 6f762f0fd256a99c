"""Lightning callbacks of the weight VAE: baseline merges beside training, TensorBoard figures."""

from lsmerge.callbacks.baselines import BaselineMerges, HiddenBaseline, WeightBaseline
from lsmerge.callbacks.figures import WeightFigures

__all__ = ["BaselineMerges", "HiddenBaseline", "WeightBaseline", "WeightFigures"]

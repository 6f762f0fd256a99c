"""Lightning callbacks of the weight VAE: baseline merges beside training, TensorBoard figures, progress lines."""

from lsmerge.callbacks.baselines import BaselineMerges, HiddenBaseline, WeightBaseline
from lsmerge.callbacks.figures import WeightFigures
from lsmerge.callbacks.progress import ProgressLines

__all__ = ["BaselineMerges", "HiddenBaseline", "ProgressLines", "WeightBaseline", "WeightFigures"]

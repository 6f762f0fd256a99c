"""Lightning callbacks and schedules of the weight VAE."""

from lsmerge.callbacks.baselines import BaselineMerges, HiddenBaseline, WeightBaseline
from lsmerge.callbacks.curriculum import BetaCurriculum
from lsmerge.callbacks.figures import WeightFigures

__all__ = ["BaselineMerges", "BetaCurriculum", "HiddenBaseline", "WeightBaseline", "WeightFigures"]

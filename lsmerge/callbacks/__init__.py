"""Lightning callbacks and schedules of the weight VAE."""

from lsmerge.callbacks.curriculum import BetaCurriculum
from lsmerge.callbacks.figures import WeightFigures

__all__ = ["BetaCurriculum", "WeightFigures"]

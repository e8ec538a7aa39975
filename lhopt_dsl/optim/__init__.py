"""The inner optimizer CIAO and the statistics it reports for the policy's features."""

from .ciao import CIAO, DEFAULTS, HYPERPARAMETERS
from .stats import STAT_NAMES, StepStats

__all__ = ["CIAO", "DEFAULTS", "HYPERPARAMETERS", "STAT_NAMES", "StepStats"]

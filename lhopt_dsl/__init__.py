"""lhopt: learned hyperparameter optimizers for PyTorch.

The library is pure computation (no tracking, no files besides reading specs and data):
spec -> sample -> compile -> environment -> policy. Runners own the side effects.
"""

from .rows import TABLE1_ROWS, table1_row
from .sample import SpaceSize, TaskConfig, enumerate_settings, sample, sample_initial_hparams, space_size
from .spec import ExperimentSpec, SpecError, TaskDistribution, load_spec

__version__ = "0.1.0"
__all__ = [
    "ExperimentSpec", "SpaceSize", "SpecError", "TABLE1_ROWS", "TaskConfig", "TaskDistribution",
    "enumerate_settings", "load_spec", "sample", "sample_initial_hparams", "space_size", "table1_row",
]  # fmt: skip

"""lhopt: learned hyperparameter optimizers for PyTorch.

The library is pure computation (no tracking, no files besides reading specs and data):
spec -> sample -> compile -> environment -> policy. Runners own the side effects.
"""

from .evaluation.rows import TABLE1_ROWS, table1_row
from .spec import ExperimentSpec, SpecError, TaskDistribution, load_spec
from .spec.sample import SpaceSize, TaskConfig, enumerate_settings, sample, sample_initial_hparams, space_size

__version__ = "0.1.0"

#: Names imported on first use (PEP 562): the drop-in optimizer needs torch, which validating a
#: spec does not, so ``import lhopt_dsl`` stays light.
_LAZY = {"LHOPT": "controller", "ScheduleReplay": "controller", "load_schedule": "controller",
         "read_schedule": "controller", "save_schedule": "controller", "Schedule": "spec.schedule"}  # fmt: skip


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LHOPT", "Schedule", "ScheduleReplay", "load_schedule", "read_schedule", "save_schedule", "ExperimentSpec", "SpaceSize", "SpecError", "TABLE1_ROWS", "TaskConfig", "TaskDistribution",
    "enumerate_settings", "load_spec", "sample", "sample_initial_hparams", "space_size", "table1_row",
]  # fmt: skip

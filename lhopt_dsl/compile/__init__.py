"""Compile concrete task configs into real torch tasks: models, data on the device, losses."""

from .compiler import TaskCost, compile_task, derive_seed, estimate_cost, resolve_device
from .datafiles import DataNotFoundError, find_file, search_dirs
from .task import InnerTask

__all__ = [
    "DataNotFoundError", "InnerTask", "TaskCost", "compile_task", "derive_seed",
    "estimate_cost", "find_file", "resolve_device", "search_dirs",
]  # fmt: skip

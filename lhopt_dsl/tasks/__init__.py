"""The inner tasks: concrete configs built into torch tasks (models, data on the device, losses,
cost estimates; :mod:`.compiler`), and runs on them: fixed-schedule training (:mod:`.training`),
K runs of one architecture as one batched model (:mod:`.population`) and the AdamW baselines
(:mod:`.baselines`)."""

from .compiler import TaskCost, compile_task, derive_seed, estimate_cost, resolve_device
from .datafiles import DataNotFoundError, find_file, search_dirs
from .task import InnerTask

__all__ = [
    "DataNotFoundError", "InnerTask", "TaskCost", "compile_task", "derive_seed",
    "estimate_cost", "find_file", "resolve_device", "search_dirs",
]  # fmt: skip

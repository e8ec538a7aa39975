"""Per-task jobs, the one way runners do them: run a function over many jobs, in this process or
spread over spawned worker processes, yielding each result as it finishes so that the caller saves
it at once (a killed run loses only the jobs that were running), and write what it saves as strict
JSON, atomically (a reader, or a resumed run, never sees half a file).

``lhopt eval`` (per-task records), ``lhopt eval-ood`` (per-run baselines, each stored in the
baseline cache) and ``lhopt imitate`` (per-task demonstrations) run their jobs through
:func:`each_finished`; meta-training keeps one
:func:`~runners.lifeline.worker_pool` for the whole run, as its iterations are synchronous.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from .lifeline import worker_pool

J = TypeVar("J")
R = TypeVar("R")


def each_finished(fn: Callable[[J], R], jobs: Sequence[J], workers: int,
                  initializer: Callable[..., Any] | None = None, initargs: tuple = ()) -> Iterator[tuple[J, R]]:  # fmt: skip
    """Yield ``(job, fn(job))`` as each job finishes.

    With ``workers`` <= 1 or a single job, in this process and in order (``initializer(*initargs)``
    runs first, as it would in a worker); otherwise over ``workers`` spawned processes that die with
    this one, in the order they finish. ``fn`` and the jobs must then be picklable (a module-level
    function and plain data). An error raised by a job, or by the caller while it handles a result
    (Ctrl-C, SIGTERM turned into an interrupt), ends the workers at once and propagates.
    """
    if workers <= 1 or len(jobs) <= 1:
        if jobs and initializer is not None:
            initializer(*initargs)
        for job in jobs:
            yield job, fn(job)
        return
    pool = worker_pool(workers, initializer, initargs)
    try:
        for i, result in pool.imap_unordered(_call, [(fn, i, job) for i, job in enumerate(jobs)]):
            yield jobs[i], result
    finally:
        pool.terminate()  # at once: an interrupted run does not wait for the jobs still running


def _call(args: tuple[Callable[[Any], Any], int, Any]) -> tuple[int, Any]:
    fn, i, job = args
    return i, fn(job)


def strict_json(obj: Any) -> Any:
    """Plain JSON data: non-finite floats become null (NaN is not JSON; other tools reject it),
    numpy scalars plain numbers, tuples lists and keys strings."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(path: Path, data: Any, indent: int | None = 1) -> None:
    """Write ``data`` as strict JSON (:func:`strict_json`) atomically: through a temporary file of
    this process's own, renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(strict_json(data), indent=indent))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""Meta-training across processes and machines on ``torch.distributed`` (decentralised PPO, as in DD-PPO).

Launched by ``torchrun`` (or ``lhopt train SPEC --nproc M``, which runs torchrun on this machine),
every process of the job is a *rank* that runs the same loop of :func:`runners.meta_train.train`:

* each iteration's ``tasks_per_iteration`` tasks are split into contiguous shares, one per rank
  (:func:`share`), so ranks sample disjoint seeds and the job samples the tasks one process would;
* ranks exchange their finished episodes (:meth:`Group.gather`): a few MB per iteration, against
  minutes of inner training, and then every rank holds the whole batch in the order one process
  would have it, so advantage statistics, the feature normalisers and the self-play EMA update
  identically everywhere without further messages;
* each PPO minibatch is split among the ranks, each computes the gradient of its share of the
  minibatch's loss, and the gradients are summed (:meth:`Group.all_reduce`, one collective per
  minibatch): every rank takes the same optimizer step, the one a single process would take;
* rank 0 alone logs to MLflow, shows progress and writes checkpoints. A checkpoint holds the whole
  job's state, so ``--resume`` works with any number of ranks (rank 0 reads it and sends it to the
  others, which need no shared file system).

gloo carries the messages on CPUs, NCCL on GPUs. When a rank dies, the others fail in their next
collective (:class:`RankLost`), and the job stops having lost at most the iteration in progress;
retries belong to torchrun (``--max-restarts``) or to the scheduler, with ``--resume``.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

#: How long a rank waits in a collective before declaring the job broken: longer than the slowest
#: rank's rollouts of one iteration (minutes on large tasks). ``LHOPT_DIST_TIMEOUT_S`` sets it.
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("LHOPT_DIST_TIMEOUT_S", "1800")))


class RankLost(RuntimeError):
    """A collective failed: another rank of the job died or cannot be reached."""


def launched() -> bool:
    """Whether this process was started by torchrun as one rank of a job of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Group:
    """This process's place in the job; one process alone is rank 0 of 1, and every method works."""

    rank: int = 0
    world: int = 1
    backend: str | None = None
    comm_seconds: float = 0.0  # time spent in collectives so far (waiting for the slowest rank included)

    @property
    def main(self) -> bool:
        """Whether this rank logs, shows progress and writes checkpoints."""
        return self.rank == 0

    def share(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items (see :func:`share`)."""
        return share(n, self.rank, self.world)

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's ``items``, concatenated in rank order (picklable data from trusted peers)."""
        if self.world == 1:
            return items
        out: list[Any] = [None] * self.world
        self._collective(dist.all_gather_object, out, items)
        return [x for part in out for x in part]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.main else None]
        self._collective(dist.broadcast_object_list, box, 0)
        return box[0]

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place."""
        if self.world > 1:
            self._collective(dist.all_reduce, tensor)
        return tensor

    def _collective(self, fn: Any, *args: Any) -> None:
        started = time.perf_counter()
        try:
            fn(*args)
            self.comm_seconds += time.perf_counter() - started
        except (RuntimeError, dist.DistError) as e:  # gloo: connection closed / timed out; NCCL: watchdog
            raise RankLost(
                f"rank {self.rank} of {self.world} lost the job in {fn.__name__}: another rank died or "
                f"cannot be reached ({str(e).splitlines()[0][:200]}). The last checkpoint is intact: "
                "rerun with --resume, with any number of ranks."
            ) from e

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def share(n: int, rank: int, world: int) -> range:
    """The items of rank ``rank`` among ``n`` split into ``world`` contiguous shares whose sizes
    differ by at most one; rank order is item order, so concatenated shares are ``range(n)``."""
    small, extra = divmod(n, world)
    start = rank * small + min(rank, extra)
    return range(start, start + small + (rank < extra))


def setup(device: str = "cpu") -> Group:
    """Join the job torchrun started (gloo on CPU, NCCL on CUDA), or return the group of one process."""
    if not launched():
        return Group()
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    return Group(dist.get_rank(), dist.get_world_size(), backend)


def grads_vector(params: Sequence[torch.nn.Parameter], extra: Sequence[float] = ()) -> torch.Tensor:
    """The parameters' gradients (zeros where there are none) and ``extra`` numbers as one float64 vector."""
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double() for p in params]
    return torch.cat([*parts, torch.tensor(list(extra), dtype=torch.float64)])


def set_grads(params: Sequence[torch.nn.Parameter], vector: torch.Tensor) -> list[float]:
    """Write :func:`grads_vector`'s layout back into the gradients; return its ``extra`` numbers."""
    at = 0
    for p in params:
        n = p.numel()
        p.grad = vector[at : at + n].reshape(p.shape).to(p.dtype).clone()
        at += n
    return vector[at:].tolist()


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """torchrun on this machine with ``nproc`` ranks, running ``python -m runners.cli`` with ``argv``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "runners.cli", *argv]  # fmt: skip

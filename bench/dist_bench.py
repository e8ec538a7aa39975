"""(e) Distributed meta-training: episodes per hour with 1 and 2 ranks, and the communication share.

    LHOPT_DATA_DIR=../shared/data python bench/dist_bench.py [--spec task_specs/smoke.yaml]
        [--iterations 6] [--tasks 8]

Runs the same meta-training (the spec with ``--tasks`` tasks per iteration, ``--iterations``
iterations, no worker pools, tracking off) once as one process and once as two ranks under
``torchrun`` on this machine (gloo over loopback), one torch thread per process, and prints each
run's episodes per hour over its iterations after the first (the first pays imports and
first-touch costs), the scaling efficiency (2-rank rate over twice the 1-rank rate), and the share
of an iteration the 2-rank run spends in collectives (gathering episodes, summing gradients,
waiting for the slower rank). From those it estimates iterations per hour for 64 ranks on 8
machines, each rank keeping its 2-rank share of tasks (so an iteration has 32x the episodes) and
``minibatch_episodes`` scaled by 32 with them (so the number of PPO steps, and of gradient
collectives, stays the same), with communication time growing with log2 of the ranks (ring and
tree collectives): a rough guide, not a measurement.

Both runs sample the same tasks (ranks split each iteration's tasks), so the comparison is like
for like; on a shared machine run it while nothing else is busy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lhopt_dsl import load_spec  # noqa: E402
from lhopt_dsl.agent.policy import load_checkpoint  # noqa: E402


def _run(spec: Path, run_dir: Path, iterations: int, ranks: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MLFLOW_DISABLE_TELEMETRY": "true"}
    args = ["train", str(spec), "--iterations", str(iterations), "--workers", "0", "--run-dir", str(run_dir),
            "--tracking-uri", "http://127.0.0.1:9", "--threads", "1"]  # fmt: skip
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "runners.cli", *args]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "runners.cli", *args]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return load_checkpoint(run_dir / "checkpoint.pt", "training checkpoint")["history"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "task_specs" / "smoke.yaml"))
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=8, help="tasks per iteration (split among the ranks)")
    args = ap.parse_args()
    spec = load_spec(args.spec)
    mt = spec.meta_train.model_copy(update={"tasks_per_iteration": args.tasks, "workers": 0})
    spec = spec.model_copy(update={"meta_train": mt})
    rates, comm = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        for ranks in (1, 2):
            history = _run(path, Path(tmp) / f"r{ranks}", args.iterations, ranks)[1:]
            seconds = sum(mt.tasks_per_iteration * mt.rollouts_per_task / h["speed/episodes_per_s"] for h in history)
            rates[ranks] = len(history) * mt.tasks_per_iteration * mt.rollouts_per_task / seconds * 3600
            comm[ranks] = sum(h["speed/comm_share"] for h in history) / len(history)
    efficiency = rates[2] / (2 * rates[1])
    per_iteration = mt.tasks_per_iteration * mt.rollouts_per_task / rates[2] * 3600  # seconds, 2 ranks
    comm_s = comm[2] * per_iteration
    compute_2 = per_iteration - comm_s
    estimate_64 = 3600 / (compute_2 + comm_s * math.log2(64) / math.log2(2))
    print(json.dumps({"spec": spec.name, "tasks_per_iteration": args.tasks, "iterations_timed": args.iterations - 1,
                      "episodes_per_hour": {str(k): round(v) for k, v in rates.items()},
                      "scaling_efficiency_2_ranks": round(efficiency, 3),
                      "comm_share": {str(k): round(v, 4) for k, v in comm.items()},
                      "iterations_per_hour_2_ranks": round(3600 / per_iteration, 1),
                      "estimate_iterations_per_hour_64_ranks_8_machines": round(estimate_64, 1),
                      "estimate_episodes_per_hour_64_ranks": round(estimate_64 * 32 * mt.tasks_per_iteration
                                                                   * mt.rollouts_per_task)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

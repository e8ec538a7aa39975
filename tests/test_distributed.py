"""Meta-training on torch.distributed: two "nodes" on one machine over loopback equal one process."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lhopt_dsl import load_spec
from lhopt_dsl.agent.policy import load_checkpoint
from runners.distributed import Group, share
from runners.meta_train import Settings, train

from .conftest import ROOT, SPECS

OFFLINE = "http://127.0.0.1:9"  # nothing listens there: tracking is skipped quickly


def test_shares_split_the_tasks_contiguously_and_evenly():
    for n in range(0, 12):
        for world in range(1, 5):
            parts = [share(n, r, world) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    one = Group()
    assert one.main and one.gather([1, 2]) == [1, 2] and one.broadcast("x") == "x" and one.share(3) == range(3)


def _spec_file(tmp_path: Path) -> Path:
    spec = load_spec(SPECS / "smoke.yaml")
    mt = spec.meta_train.model_copy(update={"tasks_per_iteration": 4, "rollouts_per_task": 2, "hidden_size": 16,
                                            "minibatch_episodes": 4, "workers": 0})  # fmt: skip
    tasks = spec.tasks.model_copy(update={"families": [f for f in spec.tasks.families if f.family in ("nqm", "rnn")]})
    spec = spec.model_copy(update={"meta_train": mt, "tasks": tasks})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(spec: Path, run_dir: Path, iterations: int, nodes: int = 2) -> None:
    """``nodes`` torchrun invocations of one rank each, meeting at a c10d rendezvous on 127.0.0.1."""
    port = _free_port()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", "--nproc-per-node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=lhopt-test", "--max-restarts=0",
           "-m", "runners.cli", "train", str(spec), "--iterations", str(iterations), "--workers", "0",
           "--run-dir", str(run_dir), "--tracking-uri", OFFLINE]  # fmt: skip
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(nodes)]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["policy"]["weights"]


def _one_process(spec: Path, run_dir: Path, iterations: int, resume: bool = False) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (torchrun sets OMP_NUM_THREADS=1): the same float reductions
    try:
        with pytest.warns(UserWarning, match="tracking disabled"):
            return train(load_spec(spec), Settings(iterations=iterations, workers=0, resume=resume,
                                                   tracking_uri=OFFLINE, run_dir=run_dir, quiet=True))  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def _assert_same_policy(a: Path, b: Path, start: Path) -> None:
    wa, wb, w0 = _weights(a), _weights(b), _weights(start)
    moved = max(float((wa[k] - w0[k]).abs().max()) for k in wa)
    assert moved > 1e-3  # PPO changed the policy: agreeing below is not agreeing on nothing
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=2e-5, msg=k)


def test_two_nodes_take_the_update_of_one_process_and_resume_on_one(tmp_path):
    """2 ranks x 2 tasks give the PPO update of 1 process x 4 tasks; the 2-rank checkpoint resumes on 1."""
    spec = _spec_file(tmp_path)
    start = _one_process(spec, tmp_path / "start", iterations=0)  # the untrained policy, for scale
    one = _one_process(spec, tmp_path / "one", iterations=1)
    _nodes(spec, tmp_path / "two", iterations=1)
    _assert_same_policy(one, tmp_path / "two" / "policy.pt", start)
    history = load_checkpoint(tmp_path / "two" / "checkpoint.pt", "training checkpoint")["history"]
    assert history[-1]["speed/ranks"] == 2 and 0 <= history[-1]["speed/comm_share"] < 1
    reference = load_checkpoint(tmp_path / "one" / "checkpoint.pt", "training checkpoint")["history"]
    for key in ("reward/mean", "reward/vs_initial_hparams", "ppo/policy_loss", "ppo/value_loss", "ppo/entropy"):
        assert history[-1][key] == pytest.approx(reference[-1][key], rel=1e-3, abs=1e-5), key

    # The job's checkpoint holds the whole job's state: one process continues it.
    one_more = _one_process(spec, tmp_path / "one", iterations=2, resume=True)
    resumed = _one_process(spec, tmp_path / "two", iterations=2, resume=True)
    assert load_checkpoint(tmp_path / "two" / "checkpoint.pt", "training checkpoint")["iteration"] == 2
    _assert_same_policy(one_more, resumed, start)


def test_lhopt_train_nproc_runs_the_ranks_through_torchrun(tmp_path):
    from runners.cli import main

    spec = _spec_file(tmp_path)
    env = {"GLOO_SOCKET_IFNAME": "lo", "MLFLOW_DISABLE_TELEMETRY": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        code = main(["train", str(spec), "--nproc", "2", "--iterations", "1", "--workers", "0",
                     "--run-dir", str(tmp_path / "run"), "--tracking-uri", OFFLINE])  # fmt: skip
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert code == 0
    history = load_checkpoint(tmp_path / "run" / "checkpoint.pt", "training checkpoint")["history"]
    assert [h["speed/ranks"] for h in history] == [2]
    assert (tmp_path / "run" / "policy.pt").exists()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def test_a_rank_that_dies_stops_the_job_and_the_checkpoint_resumes(tmp_path):
    """Killing one node mid-run stops the other (no hang), and what was checkpointed resumes on one process."""
    spec = _spec_file(tmp_path)
    port = _free_port()
    run_dir = tmp_path / "run"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "LHOPT_DIST_TIMEOUT_S": "30"}  # an iteration takes seconds here
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=lhopt-kill", "--max-restarts=0",
           "-m", "runners.cli", "train", str(spec), "--iterations", "50", "--workers", "0",
           "--run-dir", str(run_dir), "--tracking-uri", OFFLINE]  # fmt: skip
    logs = [open(tmp_path / f"node{i}.log", "w+") for i in range(2)]  # files: a full pipe would stall a node
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoint.pt").exists():  # at least one iteration done
            assert time.monotonic() < deadline and all(n.poll() is None for n in nodes), "the job never got going"
            time.sleep(0.5)
        for pid in [nodes[1].pid, *_descendants(nodes[1].pid)]:  # one node, torchrun and its rank, gone at once
            os.kill(pid, signal.SIGKILL)  # (torchrun starts its ranks in sessions of their own)
        nodes[0].wait(timeout=240)
    finally:
        for n in nodes:
            for pid in [*_descendants(n.pid), n.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            n.wait()
    out = (tmp_path / "node0.log").read_text()
    assert nodes[0].returncode != 0, out[-2000:]
    # Our message when the survivor's collective fails first; torchrun's when its rendezvous store was on the dead node.
    assert "lost the job" in out or "RendezvousConnectionError" in out, out[-2000:]
    done = load_checkpoint(run_dir / "checkpoint.pt", "training checkpoint")["iteration"]
    assert 1 <= done < 50
    resumed = _one_process(spec, run_dir, iterations=done + 1, resume=True)
    assert load_checkpoint(run_dir / "checkpoint.pt", "training checkpoint")["iteration"] == done + 1
    assert resumed.exists()

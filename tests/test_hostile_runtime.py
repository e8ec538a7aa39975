"""A command killed however it is killed leaves nothing running and nothing doubled.

* ``kill -9`` of a command with a worker pool (``lhopt eval --workers 2``), of ``lhopt ui`` or of
  ``lhopt train --nproc 2``: no worker, resource tracker, server, torchrun or rank survives it
  (runners/lifeline.py);
* every runner starts its pools through that one helper;
* ``lhopt train`` killed between writing an iteration's metrics row and its checkpoint: the
  resumed run's ``metrics.jsonl`` has every iteration once.

(SIGTERM of ``train`` and ``imitate``, exit 143 with their pools gone, is tested beside their other
behaviour: tests/test_meta_train.py and tests/test_imitation.py.)
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT, SPECS
from .test_ui import _descendants, _free_port, _listening, _stat, _wait_until

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
OFFLINE = "http://127.0.0.1:9"  # nothing listens there: tracking is skipped quickly


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _rss_mib(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def _alive(recorded: dict[int, tuple[int, int]]) -> list[int]:
    """The recorded processes still running (same pid and start time: not a reused pid)."""
    return sorted(pid for pid, (_, start) in recorded.items() if (st := _stat(pid)) is not None and st[3] == start)


def _kill_9_and_wait(proc: subprocess.Popen, recorded: dict[int, tuple[int, int]], seconds: float = 10) -> list[int]:
    """SIGKILL ``proc`` (the command) alone, and return what of ``recorded`` is still alive after ``seconds``."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + seconds
    while _alive(recorded) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(recorded)


def _cleanup(proc: subprocess.Popen, recorded: dict[int, tuple[int, int]]) -> None:
    """Never leak a process from a failing run."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in _alive(recorded):
        os.kill(pid, signal.SIGKILL)


def _smoke_policy(path: Path) -> Path:
    from lhopt_dsl import load_spec
    from lhopt_dsl.agent.policy import ActorCritic, save_checkpoint
    from runners.meta_train import policy_shape

    spec = load_spec(SPECS / "smoke.yaml")
    save_checkpoint({"policy": ActorCritic(policy_shape(spec)).to_checkpoint(), "spec": spec.model_dump(mode="json")},
                    path)  # fmt: skip
    return path


def test_kill_9_of_an_evaluation_leaves_no_worker_and_no_resource_tracker(tmp_path):
    cmd = [sys.executable, "-m", "runners.cli", "eval", str(SPECS / "smoke.yaml"),
           "--policy", str(_smoke_policy(tmp_path / "policy.pt")), "--tasks", "4", "--workers", "2",
           "--out", str(tmp_path / "eval"), "--storage", f"sqlite:///{tmp_path / 'baselines.db'}",
           "--tracking-uri", OFFLINE]  # fmt: skip
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(tmp_path / "eval.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    recorded: dict[int, tuple[int, int]] = {}
    try:
        deadline = time.monotonic() + 180
        while True:  # both workers started and past importing torch (their initializers run next), the tracker up
            recorded = _descendants(proc.pid)
            workers = [p for p in recorded if "spawn_main" in _cmdline(p)]
            trackers = [p for p in recorded if "resource_tracker" in _cmdline(p)]
            if len(workers) == 2 and trackers and all(_rss_mib(p) > 150 for p in workers):
                break
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "eval.log").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
        recorded = _descendants(proc.pid)
        assert len(recorded) >= 3, recorded
        survivors = _kill_9_and_wait(proc, recorded)
        assert survivors == [], [(p, _cmdline(p)) for p in survivors]
    finally:
        _cleanup(proc, recorded)


def test_kill_9_of_the_ui_takes_its_server_down(tmp_path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "runners.cli", "ui", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts", str(tmp_path / "artifacts")]
    with open(tmp_path / "ui.log", "wb") as log:
        ui = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    recorded: dict[int, tuple[int, int]] = {}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert ui.poll() is None and time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
            time.sleep(0.25)
        recorded = _descendants(ui.pid)
        # the supervisor, `mlflow server` and the uvicorn worker that serves the port
        assert len(recorded) >= 3, {p: _cmdline(p) for p in recorded}
        survivors = _kill_9_and_wait(ui, recorded)
        assert survivors == [], [(p, _cmdline(p)) for p in survivors]
        # /proc shows a process as a zombie once its main thread has exited; its other threads may still
        # be ending and holding the socket for a moment, so the port gets a few seconds to close
        _wait_until(lambda: not _listening(port), 10)
        assert not _listening(port)
    finally:
        _cleanup(ui, recorded)


WATCHED_CHILD = """
import sys, time
from runners import lifeline
if sys.argv[1] == "fallback":
    lifeline.set_death_signal = lambda sig: False  # as where there is no prctl: the watchdog thread alone
    lifeline.POLL_SECONDS = 0.1
lifeline.die_with_parent(int(sys.argv[2]))
print("armed", flush=True)
time.sleep(120)
"""

PARENT = """
import subprocess, sys, os, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1], str(os.getpid())], stdout=subprocess.PIPE)
assert child.stdout.readline().strip() == b"armed"
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("how", ["death signal", "fallback"])
def test_a_child_tied_to_its_parent_dies_with_it(how):
    """die_with_parent, in both of its ways: the kernel's death signal and the portable watchdog."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, how.split()[0], WATCHED_CHILD], cwd=ROOT,
                              stdout=subprocess.PIPE)  # fmt: skip
    child = int(parent.stdout.readline())
    recorded = {child: (0, _stat(child)[3])}
    try:
        assert _alive(recorded) == [child]
        assert _kill_9_and_wait(parent, recorded, seconds=5) == []
    finally:
        _cleanup(parent, recorded)


def test_every_runner_starts_its_pools_through_the_lifeline():
    """A pool started directly would outlive a killed command again; only runners/lifeline.py may."""
    pattern = re.compile(r"ProcessPoolExecutor\(|\.Pool\(|get_context\(|multiprocessing\.Process\(")
    offenders = [f"{path.name}:{i}" for path in sorted((ROOT / "runners").glob("*.py")) if path.name != "lifeline.py"
                 for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]  # fmt: skip
    assert offenders == []


def test_a_kill_between_the_metrics_row_and_the_checkpoint_leaves_no_duplicate_row(tmp_path, monkeypatch):
    import runners.meta_train as mt
    from lhopt_dsl import load_spec
    from lhopt_dsl.agent.policy_file import load_training_checkpoint

    spec = load_spec(SPECS / "smoke.yaml")
    spec = spec.model_copy(update={
        "meta_train": spec.meta_train.model_copy(update={"tasks_per_iteration": 1, "rollouts_per_task": 1,
                                                          "hidden_size": 8}),
        "tasks": spec.tasks.model_copy(update={"families": [f for f in spec.tasks.families if f.family == "nqm"]}),
    })  # fmt: skip
    settings = mt.Settings(iterations=2, workers=0, tracking_uri=OFFLINE, run_dir=tmp_path, quiet=True)
    with pytest.warns(UserWarning, match="tracking disabled"):
        mt.train(spec, settings)
    save = mt.save_atomic

    def killed_at_the_third_checkpoint(obj, path):
        if obj.get("iteration") == 3:  # its metrics row is written; the kill comes before the checkpoint
            raise KeyboardInterrupt("killed")
        save(obj, path)

    monkeypatch.setattr(mt, "save_atomic", killed_at_the_third_checkpoint)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="tracking disabled"):
        mt.train(spec, mt.Settings(iterations=4, workers=0, tracking_uri=OFFLINE, run_dir=tmp_path, resume=True,
                                   quiet=True))  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # the situation a kill leaves: a row past the checkpoint
    assert load_training_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2

    monkeypatch.setattr(mt, "save_atomic", save)
    with pytest.warns(UserWarning, match="tracking disabled"):
        mt.train(spec, mt.Settings(iterations=4, workers=0, tracking_uri=OFFLINE, run_dir=tmp_path, resume=True,
                                   quiet=True))  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    history = load_training_checkpoint(tmp_path / "checkpoint.pt")["history"]
    assert [h["iteration"] for h in history] == [1, 2, 3, 4]
    assert rows[2]["reward/mean"] == history[2]["reward/mean"]  # the row of the iteration the checkpoint holds


def test_kill_9_of_a_multi_process_training_ends_torchrun_and_its_ranks(tmp_path):
    """`lhopt train --nproc 2` runs torchrun, which starts its ranks in sessions of their own: told
    SIGTERM by the kernel when lhopt dies, torchrun stops them."""
    from .test_distributed import _spec_file

    cmd = [sys.executable, "-m", "runners.cli", "train", str(_spec_file(tmp_path)), "--nproc", "2",
           "--iterations", "50", "--run-dir", str(tmp_path / "run"), "--tracking-uri", OFFLINE]  # fmt: skip
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(tmp_path / "train.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    recorded: dict[int, tuple[int, int]] = {}
    try:
        deadline = time.monotonic() + 180
        while True:  # torchrun and both ranks up, past importing torch
            recorded = _descendants(proc.pid)
            ranks = [p for p in recorded if "runners.cli train" in _cmdline(p) and "--nproc" not in _cmdline(p)]
            if len(ranks) == 2 and all(_rss_mib(p) > 150 for p in ranks):
                break
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.2)
        recorded = _descendants(proc.pid)
        survivors = _kill_9_and_wait(proc, recorded, seconds=60)
        assert survivors == [], [(p, _cmdline(p)) for p in survivors]
    finally:
        _cleanup(proc, recorded)

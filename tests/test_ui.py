"""`lhopt ui` takes the MLflow server's whole process tree down when it is stopped by a signal."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start time) of a live process, None once it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    state, ppid, pgid, start = fields[0], int(fields[1]), int(fields[2]), int(fields[19])
    return None if state in ("Z", "X") else (state, ppid, pgid, start)


def _processes() -> dict[int, tuple[str, int, int, int]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            found[int(entry)] = st
    return found


def _descendants(root: int) -> dict[int, tuple[int, int]]:
    """Every live process below root: pid -> (pgid, start time), so a reused pid is not mistaken for it."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out[pid] = (procs[pid][2], procs[pid][3])
        todo.extend(children.get(pid, []))
    return out


def _survivors(recorded: dict[int, tuple[int, int]], pgids: set[int]) -> list[int]:
    """Recorded processes still alive, and anything left in their process groups."""
    alive = [pid for pid, (_, start) in recorded.items() if (st := _stat(pid)) is not None and st[3] == start]
    in_groups = [pid for pid, (_, _, pgid, _) in _processes().items() if pgid in pgids]
    return sorted(set(alive) | set(in_groups))


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_until(done, seconds: float) -> None:
    """Poll ``done()`` every 0.1 s until it is true or ``seconds`` have passed (the caller asserts)."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind; TIME_WAIT is no owner
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_takes_its_server_tree_down_on_a_signal(tmp_path, sig):
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "runners.cli", "ui", "--port", str(port), "--backend-store-uri", store,
           "--artifacts", str(tmp_path / "artifacts")]  # fmt: skip
    with open(tmp_path / "ui.log", "wb") as log:
        ui = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    recorded: dict[int, tuple[int, int]] = {}
    try:
        deadline = time.monotonic() + 120  # ~5 s on an idle machine
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if ui.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the MLflow UI did not come up:\n{(tmp_path / 'ui.log').read_text()[-3000:]}")
            time.sleep(0.25)
        recorded = _descendants(ui.pid)
        pgids = {pgid for pgid, _ in recorded.values()}
        # `mlflow server` and the uvicorn worker it forks: the worker is what used to be left behind.
        assert len(recorded) >= 2, f"expected the server and its worker below lhopt ui, found {recorded}"
        # its own group, which is also what makes watching that group below safe (it is not ours)
        assert os.getpgid(ui.pid) not in pgids, "the server should run in a process group of its own"

        ui.send_signal(sig)
        assert ui.wait(timeout=15) == 128 + sig
        _wait_until(lambda: not (_survivors(recorded, pgids) or _listening(port)), 5)
        assert _survivors(recorded, pgids) == []
        assert not _listening(port)
        assert _bindable(port)
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()
        for pid, (_, start) in recorded.items():  # never leak a server from a failing run
            if (st := _stat(pid)) is not None and st[3] == start:
                os.kill(pid, signal.SIGKILL)

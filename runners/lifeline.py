"""Child processes that end when the command that started them ends, however it ends.

A command's worker pool or server must not outlive it: after ``kill -9`` of ``lhopt eval``, its
workers would go on computing for minutes with nobody to read their results, holding the terminal's
output pipe and the multiprocessing resource tracker (which exits once every holder of its pipe is
gone); after ``kill -9`` of ``lhopt ui``, the MLflow server would keep its port. Signals handlers
cannot help (SIGKILL is not delivered to the dying process), so the children watch for it:

* pool workers: :func:`process_pool` and :func:`worker_pool` start every worker with
  :func:`die_with_parent`, which on Linux asks the kernel to SIGKILL the worker when its parent
  dies (``prctl(PR_SET_PDEATHSIG)``) and elsewhere runs a watchdog thread that polls the parent;
* servers: :func:`guarded` wraps a command in this module's own small supervisor, which leads the
  command's process group and kills the whole group when its parent dies (the MLflow server forks
  a uvicorn worker that a signal to the server alone would leave behind);
* a child that cleans up after itself on a signal (torchrun stops its ranks on SIGTERM):
  :func:`death_signal_on_exec` has the kernel send it that signal when its parent dies (Linux).

The kernel's death signal follows the thread that started the child, so a pool must be started by
a thread that lives as long as the pool (every runner starts its pools in the main thread).

This file is also the supervisor's program, run as a script by path with only the standard library
(``python -I lifeline.py PARENT_PID -- COMMAND...``), so it runs whatever ``runners`` is on the path.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import multiprocessing.pool
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.5  # how often the fallback watchdog looks at its parent
_KILL = getattr(signal, "SIGKILL", signal.SIGTERM)


def set_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; whether it could (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc with prctl (e.g. a static or unusual runtime)
        return False


def death_signal_on_exec(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` for a child that cleans up after itself on ``sig`` (``torchrun`` ends its ranks
    on SIGTERM): the kernel sends it ``sig`` when this process dies, kept across ``exec``. None where
    there is no such signal (then pass nothing). prctl is looked up here, so that the forked child,
    where little is safe to run, only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # died before the signal was armed
            os._exit(128 + int(sig))

    return arm


def _end_self(sig: int) -> None:
    try:
        os.kill(os.getpid(), sig)
    finally:
        os._exit(128 + int(sig))  # where the signal does not end the process at once (or cannot be sent)


def _watch(parent: int, on_death: Callable[[], None]) -> None:
    """Call ``on_death`` once this process's parent is no longer ``parent`` (it died and the process
    was handed to init or a subreaper)."""
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    on_death()


def die_with_parent(parent: int, sig: int = _KILL) -> None:
    """In a child process: end it with ``sig`` when ``parent`` (the pid that started it) dies.

    The kernel's parent-death signal where there is one, else a daemon watchdog thread. A parent that
    died before the signal was armed is caught by comparing ``os.getppid()`` after arming it.
    """
    armed = set_death_signal(sig)
    if os.getppid() != parent:
        _end_self(sig)
    if not armed:
        threading.Thread(target=_watch, args=(parent, lambda: _end_self(sig)), daemon=True, name="lifeline").start()


def _start_worker(parent: int, initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    """A pool worker's initializer: tie the worker's life to ``parent``, then run the caller's own."""
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def process_pool(workers: int, initializer: Callable[..., Any] | None = None,
                 initargs: tuple = ()) -> cf.ProcessPoolExecutor:  # fmt: skip
    """A ``ProcessPoolExecutor`` of ``workers`` spawned processes (a fresh interpreter each: forking a
    process that has run torch can deadlock) that die with this process."""
    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_start_worker, initargs=(os.getpid(), initializer, initargs))  # fmt: skip


def worker_pool(workers: int, initializer: Callable[..., Any] | None = None,
                initargs: tuple = ()) -> multiprocessing.pool.Pool:  # fmt: skip
    """A ``multiprocessing`` pool of ``workers`` spawned processes that die with this process."""
    return multiprocessing.get_context("spawn").Pool(workers, initializer=_start_worker,
                                                     initargs=(os.getpid(), initializer, initargs))  # fmt: skip


# --- servers: a supervisor that takes the whole process group down --------------------------------


def guarded(command: list[str]) -> list[str]:
    """``command`` run under the supervisor of this module, which ends it and everything it starts when
    the calling process dies. Start the result as the leader of a new session (``start_new_session``)."""
    return [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), "--", *command]


def _kill_group(child: subprocess.Popen | None) -> None:
    if hasattr(os, "killpg"):
        os.killpg(os.getpgrp(), _KILL)  # the supervisor leads the group: itself, the command and its children
    if child is not None:
        child.kill()
    os._exit(128 + int(_KILL))


def supervise(parent: int, command: list[str]) -> int:
    """Run ``command`` and return its exit status (128 + N when signal N ended it); kill this process
    group when ``parent`` dies. Signals sent to the group (how ``lhopt ui`` stops its server) reach the
    command directly; the supervisor only waits for it to finish."""
    child: subprocess.Popen | None = None
    death = getattr(signal, "SIGUSR1", None)
    if death is not None and set_death_signal(death):
        signal.signal(death, lambda _signum, _frame: _kill_group(child))
    for sig in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, sig):  # a handler, not SIG_IGN: the command must not inherit an ignored signal
            signal.signal(getattr(signal, sig), lambda _signum, _frame: None)
    if os.getppid() != parent:  # died before the death signal was armed
        _kill_group(None)
    child = subprocess.Popen(command)
    while True:
        try:
            code = child.wait(timeout=POLL_SECONDS)
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:  # where there is no death signal, and as a second line where there is
                _kill_group(child)
            continue
        return code if code >= 0 else 128 - code


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: lifeline.py PARENT_PID -- COMMAND [ARGS...]")
    sys.exit(supervise(int(sys.argv[1]), sys.argv[3:]))

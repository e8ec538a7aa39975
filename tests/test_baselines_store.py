"""The one baseline cache (runners.baselines.BaselineStore): a task's grid and eval-ood's runs in one
storage, written by several processes at once, surviving a killed writer, exported and imported as one."""

import gzip
import json
import multiprocessing as mp
import os
import signal

import pytest
import torch

import runners.baselines as bl
from runners.baselines import BaselineStore, run_grid, study_name

from .test_baselines import NQM

SCOPE = f"{bl.SCOPES['ood'][0]}program-0123456789abcdef0123"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(i: int) -> dict:
    return {"steps": [0, 1], "valid_loss": [2.0, 1.0 / (i + 1)], "test_loss": [2.0, None], "train_loss": [1.5],
            "seconds": 0.1, "diverged_at": None, "history": []}  # fmt: skip


def _writer(url: str, name: str, count: int, queue) -> None:
    """Store ``count`` eval-ood entries one by one, saying after each that it is stored."""
    store = BaselineStore(url)
    for i in range(count):
        store.put(SCOPE, (f"{name}-{i}", 1), 1.0 / (i + 1), {"run": _run(i)}, {"kind": "ood", "program": "program"})
        queue.put((name, i))


def test_writers_in_several_processes_and_a_killed_one_leave_every_stored_entry(tmp_path):
    url = bl.default_storage(tmp_path)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(url, name, 8, queue)) for name in ("a", "b")]
    doomed = ctx.Process(target=_writer, args=(url, "killed", 10_000, queue))
    for p in [*writers, doomed]:
        p.start()
    grid = run_grid(NQM, url, names=["adamw-constant-lr0.01", "prodigy"], horizons=(1,))  # meanwhile, a task's grid
    acknowledged = set()
    while sum(n == "killed" for n, _ in acknowledged) < 3 or len({a for a in acknowledged if a[0] != "killed"}) < 16:
        acknowledged.add(queue.get(timeout=120))
    os.kill(doomed.pid, signal.SIGKILL)  # mid-write, as a killed run would be
    doomed.join(timeout=30)
    for p in writers:
        p.join(timeout=60)
        assert p.exitcode == 0
    while not queue.empty():
        acknowledged.add(queue.get())

    store = BaselineStore(url)
    entries = store.entries(SCOPE)
    assert {(f"{n}-{i}", 1) for n, i in acknowledged} <= set(entries)  # nothing stored was lost
    assert all(entries[(f"{n}-{i}", 1)]["run"] == _run(i) for n, i in acknowledged)
    assert store.scopes() == sorted([SCOPE, study_name(NQM)])
    assert set(grid) == {("adamw-constant-lr0.01", 1), ("prodigy", 1)}
    assert bl.cached_curve(url, NQM, "prodigy", NQM.task.inner_steps) is not None

    # Both kinds go out and come back in as one cache.
    out = tmp_path / "export"
    counts = store.export(out)
    assert counts["written"] == 2 and counts["runs"] == len(entries) + 2
    other = BaselineStore(bl.default_storage(tmp_path / "other"))
    assert other.import_(out) == {"tasks": 2, "runs": len(entries) + 2, "present": 0}
    assert other.entries(SCOPE) == entries
    assert bl.cached_curve(other.url, NQM, "prodigy", NQM.task.inner_steps) is not None
    ood = json.loads(gzip.decompress((out / f"{SCOPE}.json.gz").read_bytes()))
    assert ood["kind"] == "ood" and ood["user_attrs"] == {"kind": "ood", "program": "program"}


def test_the_store_reads_the_earliest_usable_entry_and_writes_only_eval_ood_scopes(tmp_path):
    store = BaselineStore(bl.default_storage(tmp_path))
    assert store.entries(SCOPE) == {} and not (tmp_path / "baselines.db").exists()  # looking creates nothing
    store.put(SCOPE, ("x", 1), 1.0, {"run": "broken"})
    store.put(SCOPE, ("x", 1), 0.5, {"run": _run(1)})
    store.put(SCOPE, ("x", 1), 0.25, {"run": _run(3)})
    assert store.get(SCOPE, ("x", 1)) == {"run": "broken"}
    assert store.get(SCOPE, ("x", 1), lambda a: isinstance(a["run"], dict)) == {"run": _run(1)}
    with pytest.raises(ValueError, match="run_grid writes grids"):
        store.put(study_name(NQM), ("prodigy", 1), 1.0, {"curve": {}})
    bad = tmp_path / "bad"
    bad.mkdir()
    data = {"format": bl.EXPORT_FORMAT, "kind": "ood", "ood_version": 99, "study": SCOPE, "user_attrs": {}, "runs": []}
    (bad / "x.json.gz").write_bytes(gzip.compress(json.dumps(data).encode()))
    with pytest.raises(ValueError, match="version 99.*run lhopt eval-ood again"):
        store.import_(bad)
    data = {**data, "ood_version": bl.OOD_VERSION, "runs": [{"baseline": "x", "horizon": 1, "value": 1.0,
                                                             "user_attrs": {"run": {"steps": 3}}}]}  # fmt: skip
    (bad / "x.json.gz").write_bytes(gzip.compress(json.dumps(data).encode()))
    with pytest.raises(ValueError, match="x.json.gz: a malformed run"):
        store.import_(bad)


def test_a_committed_grid_file_imports_and_exports_back_byte_for_byte(tmp_path):
    """The task grids shipped in results/baselines (exported before the cache held eval-ood runs)
    load into the one cache, and come out as the same bytes: their format is unchanged."""
    from .conftest import ROOT

    shipped = sorted((ROOT / "results" / "baselines").glob("baselines-v2-*.json.gz"))[0]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / shipped.name).write_bytes(shipped.read_bytes())
    store = BaselineStore(bl.default_storage(tmp_path))
    runs = len(json.loads(gzip.decompress(shipped.read_bytes()))["runs"])
    assert store.import_(tmp_path / "in") == {"tasks": 1, "runs": runs, "present": 0}
    assert store.export(tmp_path / "out") == {"written": 1, "unchanged": 0, "runs": runs}
    assert (tmp_path / "out" / shipped.name).read_bytes() == shipped.read_bytes()

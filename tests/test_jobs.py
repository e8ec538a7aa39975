"""runners.jobs: the one way runners run per-task jobs and write what they save."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from runners.jobs import each_finished, strict_json, write_json


def square(x: int) -> int:
    return x * x


def pid_and_fail(x: int) -> int:
    if x == 3:
        raise RuntimeError("job 3 failed")
    return os.getpid()


_SEEN: list[int] = []


def remember(tag: int) -> None:
    _SEEN.append(tag)


@pytest.mark.parametrize("workers", [1, 2])
def test_each_finished_pairs_every_job_with_its_own_result(workers: int) -> None:
    jobs = list(range(7))
    got = dict(each_finished(square, jobs, workers))
    assert got == {x: x * x for x in jobs}


def test_in_process_jobs_run_in_order_after_the_initializer() -> None:
    _SEEN.clear()
    order = [job for job, _ in each_finished(square, [3, 1, 2], 1, remember, (42,))]
    assert order == [3, 1, 2] and _SEEN == [42]
    _SEEN.clear()
    assert list(each_finished(square, [], 1, remember, (42,))) == [] and _SEEN == []  # nothing to run: no set-up


def test_workers_are_other_processes_and_a_failing_job_stops_the_run() -> None:
    with pytest.raises(RuntimeError, match="job 3 failed"):
        for _job, pid in each_finished(pid_and_fail, [0, 1, 2, 3], 2):
            assert pid != os.getpid()


def test_write_json_is_strict_and_leaves_no_temporary_file(tmp_path) -> None:
    data = {"a": math.nan, "b": [1.5, math.inf, np.float32(2.0)], 3: np.int64(4), "t": (np.bool_(True),)}
    path = tmp_path / "out.json"
    write_json(path, data)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.5, None, 2.0], "3": 4, "t": [True]}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert strict_json([-math.inf]) == [None]


def test_write_json_of_unserialisable_data_keeps_the_old_file(tmp_path) -> None:
    path = tmp_path / "out.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]

"""runners.tracking: a run resumed against another tracking store goes on in a new MLflow run."""

from __future__ import annotations

import pytest

from runners.tracking import Tracker


def test_a_checkpoints_run_id_unknown_to_the_store_continues_in_a_new_run_that_names_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = Tracker(uri, "resume-test", "run", tmp_path / "a")
    assert first.enabled and first.run_id
    first.end()
    again = Tracker(uri, "resume-test", "run", tmp_path / "a", run_id=first.run_id)  # the same store: the same run
    assert again.run_id == first.run_id
    again.end()
    other = f"sqlite:///{tmp_path / 'other.db'}"  # the checkpoint copied to a machine with another store
    with pytest.warns(UserWarning, match="not in"):
        moved = Tracker(other, "resume-test", "run", tmp_path / "b", run_id=first.run_id)
    assert moved.enabled and moved.run_id != first.run_id
    assert moved.client.get_run(moved.run_id).data.tags["lhopt.resumed_from"] == first.run_id
    moved.log_metrics({"x": 1.0}, step=1)
    moved.end()

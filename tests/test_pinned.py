"""Behaviour pinned (tests/pinned.py): every kind of policy's evaluation episodes, the meta-training
rollouts, imitation's demonstrations and the drop-in optimizer take the same actions and
hyperparameters, and give the same floats to round-off, as when the record was written."""

from __future__ import annotations

import json

import pytest
import torch

from . import pinned


@pytest.fixture(scope="module")
def record():
    return json.loads(pinned.RECORD.read_text())


@pytest.mark.parametrize("section", list(pinned.SECTIONS))
def test_behaviour_is_unchanged(section, record):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the record was written
    try:
        now = pinned.plain(pinned.SECTIONS[section]())
    finally:
        torch.set_num_threads(threads)
    assert (diff := pinned.same(record[section], now, section)) is None, diff


def test_the_comparison_passes_round_off_and_catches_a_change_of_behaviour():
    """Round-off passes; a chosen hyperparameter or action that moves at all, or a computed float
    that moves beyond round-off, is reported with where it is."""
    rec = {"ep": {"hparams": [{"lr": 0.01}], "actions": [[1, 2]], "logprobs": [-4.2000852227211], "rewards": [0.013]}}
    near = {"ep": {"hparams": [{"lr": 0.01}], "actions": [[1, 2]], "logprobs": [-4.200085163116455], "rewards": [0.0131]}}
    assert pinned.same(rec, near) is None
    lr = {"ep": {**near["ep"], "hparams": [{"lr": 0.01 * (1 + 1e-12)}]}}
    assert "hparams[0]/lr" in pinned.same(rec, lr)
    assert "actions[0][1]" in pinned.same(rec, {"ep": {**near["ep"], "actions": [[1, 3]]}})
    assert "logprobs[0]" in pinned.same(rec, {"ep": {**near["ep"], "logprobs": [-4.201]}})
    assert "rewards[0]" in pinned.same(rec, {"ep": {**near["ep"], "rewards": [0.015]}})

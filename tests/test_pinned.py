"""Behaviour pinned exactly (tests/pinned.py): every kind of policy's evaluation episodes, the
meta-training rollouts, imitation's demonstrations and the drop-in optimizer give the same floats
as when the record was written."""

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

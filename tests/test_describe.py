"""lhopt_dsl.agent.describe: what an optimizer can see of its model before the first step."""

import math

import numpy as np
import pytest
import torch

from lhopt_dsl.agent.describe import DESCRIPTOR_NAMES, model_descriptor
from lhopt_dsl.tasks.compiler import compile_task, parameter_shapes

from .test_population import smoke


def test_the_descriptor_reads_size_build_and_run_length():
    lstm = torch.nn.LSTM(8, 16)  # weight_ih (64, 8), weight_hh (64, 16): the hh stack is 4x its columns
    d = dict(zip(DESCRIPTOR_NAMES, model_descriptor([p.shape for p in lstm.parameters()], 1000, 50)))
    total = 64 * 8 + 64 * 16 + 64 + 64
    assert d["log_params"] == pytest.approx(math.log(total)) and d["log_tensors"] == pytest.approx(math.log(4))
    assert d["share_gates4"] == pytest.approx(64 * 16 / total) and d["share_gates3"] == 0.0
    assert d["share_rank1"] + d["share_rank2"] + d["share_rank3plus"] == pytest.approx(1.0)
    assert d["log_steps"] == pytest.approx(math.log(1000)) and d["log_decisions"] == pytest.approx(math.log(50))
    conv = model_descriptor([(16, 3, 3, 3), (16,), ()], 10, 2)  # a scalar parameter counts as one element
    assert conv[DESCRIPTOR_NAMES.index("share_rank3plus")] == pytest.approx(432 / 449)
    assert np.isfinite(conv).all() and len(conv) == len(DESCRIPTOR_NAMES)
    with pytest.raises(ValueError, match="at least one parameter"):
        model_descriptor([], 10, 2)
    assert (model_descriptor([(0, 3), (16, 3, 3, 3), (16,), ()], 10, 2) == conv).all()  # an empty parameter adds nothing
    with pytest.raises(ValueError, match="at least one parameter with elements"):
        model_descriptor([(0, 3)], 10, 2)


@pytest.mark.parametrize("family", ["mlp", "rnn", "transformer", "nqm"])
def test_parameter_shapes_are_the_compiled_models_without_building_it(family):
    cfg = smoke(family, outer_steps=4)
    assert parameter_shapes(cfg.task) == [tuple(p.shape) for p in compile_task(cfg, "cpu").params]

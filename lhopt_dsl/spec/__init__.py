"""The typed YAML task DSL: distributions, task families, hyperparameter space, experiments.

Beside the models: :mod:`.sample` draws concrete :class:`~lhopt_dsl.spec.sample.TaskConfig` s from a
spec, and :mod:`.schedule` is the grammar of schedule names (``linear-lr0.03``) that specs, baselines
and the drop-in share.
"""

from .distributions import Choice, IntRange, LogIntRange, LogUniform, Uniform
from .experiment import EvaluationSpec, ExperimentSpec, MetaTrainSpec, TaskDistribution, TrackingSpec
from .families import (
    FAMILY_SPECS,
    LM_ALGO_DATASETS,
    LM_DATASETS,
    LM_OOD_DATASETS,
    LM_TEXT_DATASETS,
    LM_TRAIN_DATASETS,
    CNNSpec,
    CNNTask,
    Layers,
    MLPSpec,
    MLPTask,
    NQMSpec,
    NQMTask,
    RegressionSpec,
    RegressionTask,
    RNNSpec,
    RNNTask,
    TextRNNSpec,
    TextRNNTask,
    TransformerSpec,
    TransformerTask,
)
from .hparams import (
    HPARAM_NAMES,
    AdamWInitial,
    AdamWSpace,
    CIAOInitial,
    CIAOSpace,
    HParam,
    HyperparameterSpace,
    InitialHParams,
    validate_space,
)
from .loader import SpecError, load_spec

__all__ = [
    "Choice", "IntRange", "LogIntRange", "LogUniform", "Uniform",
    "EvaluationSpec", "ExperimentSpec", "MetaTrainSpec", "TaskDistribution", "TrackingSpec",
    "FAMILY_SPECS", "LM_ALGO_DATASETS", "LM_DATASETS", "LM_OOD_DATASETS", "LM_TEXT_DATASETS", "LM_TRAIN_DATASETS",
    "Layers",
    "CNNSpec", "CNNTask", "MLPSpec", "MLPTask", "NQMSpec", "NQMTask", "RegressionSpec", "RegressionTask", "RNNSpec", "RNNTask",
    "TextRNNSpec", "TextRNNTask", "TransformerSpec", "TransformerTask",
    "HPARAM_NAMES", "AdamWInitial", "AdamWSpace", "CIAOInitial", "CIAOSpace", "HParam", "HyperparameterSpace",
    "InitialHParams", "validate_space",
    "SpecError", "load_spec",
]  # fmt: skip

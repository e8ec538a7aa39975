"""The typed YAML task DSL: distributions, task families, hyperparameter space, experiments."""

from .distributions import Choice, IntRange, LogIntRange, LogUniform, Uniform
from .experiment import EvaluationSpec, ExperimentSpec, MetaTrainSpec, TaskDistribution, TrackingSpec
from .families import (
    FAMILY_SPECS,
    LM_OOD_DATASETS,
    LM_TRAIN_DATASETS,
    CNNSpec,
    CNNTask,
    Layers,
    MLPSpec,
    MLPTask,
    NQMSpec,
    NQMTask,
    RNNSpec,
    RNNTask,
    TextRNNSpec,
    TextRNNTask,
    TransformerSpec,
    TransformerTask,
)
from .hparams import HPARAM_NAMES, HParam, HyperparameterSpace, InitialHParams
from .loader import SpecError, load_spec

__all__ = [
    "Choice", "IntRange", "LogIntRange", "LogUniform", "Uniform",
    "EvaluationSpec", "ExperimentSpec", "MetaTrainSpec", "TaskDistribution", "TrackingSpec",
    "FAMILY_SPECS", "LM_OOD_DATASETS", "LM_TRAIN_DATASETS", "Layers",
    "CNNSpec", "CNNTask", "MLPSpec", "MLPTask", "NQMSpec", "NQMTask", "RNNSpec", "RNNTask",
    "TextRNNSpec", "TextRNNTask", "TransformerSpec", "TransformerTask",
    "HPARAM_NAMES", "HParam", "HyperparameterSpace", "InitialHParams",
    "SpecError", "load_spec",
]  # fmt: skip

"""Task families (tag ``family:``): randomized descriptions of small inner training tasks.

Each family comes in two shapes:

* a *spec* (``MLPSpec``, ...) whose fields are fixed values or distributions, as users write it;
* a concrete *task* (``MLPTask``, ...) with one value per field, as the compiler consumes it.

Only fields that change the compiled task are declared, so the size of a family's space is the
product of its fields' supports (see :mod:`lhopt_dsl.spec.space`). The families follow the
paper's Appendix H: MLPs and CNNs on MNIST-like images, RNNs on algorithmic tasks, RNNs on SST-2
sentence classification, Transformer language models on simple datasets, and the noisy quadratic
model; beyond the paper, MLPs fitting synthetic regression targets.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from .distributions import (
    LogUniform,
    StrictModel,
    Uniform,
    choice_dist,
    first_outside,
    float_dist,
    int_dist,
    is_distribution,
    sample_value,
    support_bounds,
    support_of,
)
from .space import Axis, LayerAxis

# --- vocabularies shared by specs and concrete tasks -------------------------------------------

ImageDataset = Literal["mnist", "kmnist", "fashion_mnist", "digits"]
Activation = Literal["relu", "leaky_relu", "very_leaky_relu", "elu", "prelu"]
Norm = Literal["none", "batch", "layer"]
MLPLoss = Literal["cross_entropy", "mae", "mse", "huber"]
Pooling = Literal["max", "avg", "stride"]
Cell = Literal["rnn", "lstm", "gru"]
AlgoTask = Literal["parity", "binary_addition"]
TextDataset = Literal["sst2"]
NormPosition = Literal["pre", "post"]
RegressionTarget = Literal["linear", "sine", "teacher"]
RegressionActivation = Literal["relu", "tanh", "gelu", "elu"]
RegressionLoss = Literal["mse", "mae", "huber"]
Positional = Literal["learned", "sinusoidal"]

#: Text-like language-modelling datasets of the transformer family, the ones training distributions
#: draw from (paper Appendix H: "language modeling over 31 different simple datasets"): stochastic
#: languages generated on the fly, and small real corpora available offline.
LM_TEXT_DATASETS: tuple[str, ...] = (
    # stochastic symbol streams
    "markov1", "markov2", "markov3", "markov4", "markov_dense", "markov_mixture", "lagged_markov",
    "hmm", "pfa", "random_walk", "ar_series", "noisy_periodic", "runs", "unigram_zipf",
    "unigram_dirichlet",
    # words and sentences
    "zipf_words", "noisy_words", "syllable_words", "morphology", "records", "bigram_grammar", "pcfg",
    "bigram_words", "trigram_words", "class_hmm", "lda_topics", "pitman_yor_words",
    "phrase_repetition",
    # small real corpora
    "sst2_chars", "sst2_words", "stdlib_docstrings", "stdlib_source",
)  # fmt: skip
#: Algorithmic datasets: sequences that follow a deterministic rule (transductions, arithmetic,
#: formal languages, counting). Held out of every training distribution: they make the paper's
#: "Algo + Transformer" row of Table 1, on which the policy is evaluated but never trained.
LM_ALGO_DATASETS: tuple[str, ...] = (
    "copy", "reverse", "sort", "count", "addition", "multiplication", "modular_addition",
    "cumulative_sum", "parity_stream", "dyck1", "dyck2", "anbn", "palindrome", "duplicate",
    "interleave", "caesar", "successor", "fibonacci", "periodic", "associative_recall", "majority",
    "histogram", "arithmetic_expressions",
)  # fmt: skip
#: Datasets a training distribution may use: the text-like ones.
LM_TRAIN_DATASETS: tuple[str, ...] = LM_TEXT_DATASETS
#: Real corpora reserved for out-of-distribution evaluation: never part of a training distribution.
LM_OOD_DATASETS: tuple[str, ...] = ("tinyshakespeare",)
#: Every language-modelling dataset the DSL knows: text, algorithmic, out-of-distribution.
LM_DATASETS: tuple[str, ...] = LM_TEXT_DATASETS + LM_ALGO_DATASETS + LM_OOD_DATASETS
LMDataset = Literal[LM_DATASETS]  # type: ignore[valid-type]

MAX_OUTER_STEPS = 128
MIN_OUTER_STEPS = 2

# Caps on every value a task field can take. They are what the platform can run on one machine
# (the shipped families stay 10 to 1,000 times below them: T <= 1,024, widths <= 256, at most 4
# layers, sequences <= 64, batches <= 256), and they keep checking and counting a spec cheap: no
# check, count or sample costs time or memory in proportion to a number a user writes.
#: Inner steps T of one run: a million steps of the smallest task already take hours.
MAX_INNER_STEPS = 1_000_000
#: Examples per inner step: more than any dataset of the families holds (MNIST has 60,000).
MAX_BATCH_SIZE = 65_536
#: Layers of a stack (MLP hidden layers, CNN convolutions, recurrent and Transformer layers).
MAX_LAYERS = 32
#: Units, channels, hidden, embedding and model widths, attention heads: a 65,536-wide square
#: layer alone holds 4.3 billion weights.
MAX_WIDTH = 65_536
#: Tokens or bits per example (attention memory grows with its square).
MAX_SEQ_LEN = 8_192
#: Words kept by a text-RNN vocabulary (SST-2 has about 15,000 distinct words).
MAX_VOCAB_SIZE = 1_000_000
#: Feed-forward width as a multiple of d_model.
MAX_FF_MULT = 64
#: Dimensions of a noisy quadratic model (each is a float of state per tensor; 10**8 is 400 MB).
MAX_NQM_DIM = 100_000_000
#: Input features of a regression task (each example is a float per feature).
MAX_REGRESSION_INPUTS = 4_096
#: Training examples of a regression task (at most 1.6 GB of inputs at the widest).
MAX_EXAMPLES = 100_000
#: Label noise (its standard deviation) of a regression task.
MAX_NOISE = 100.0


# --- concrete tasks ------------------------------------------------------------------------------

# A task file (`lhopt schedule export --task`, task_specs/transfer/) is read without a spec, so a
# concrete task carries the same caps as the families that sample it.
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Depth = Annotated[int, Field(ge=1, le=MAX_LAYERS)]
SeqLen = Annotated[int, Field(ge=2, le=MAX_SEQ_LEN)]


class TaskBase(StrictModel):
    """Settings every concrete task has."""

    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE, description="Examples per inner step.")]
    inner_steps: Annotated[int, Field(ge=1, le=MAX_INNER_STEPS, description="Inner training steps T.")]
    outer_steps: Annotated[
        int,
        Field(
            ge=MIN_OUTER_STEPS,
            le=MAX_OUTER_STEPS,
            description="Times the policy acts during the run (2 to 128), spread over the T inner steps.",
        ),
    ]


class MLPTask(TaskBase):
    family: Literal["mlp"] = "mlp"
    dataset: ImageDataset
    hidden: Annotated[tuple[Width, ...], Field(max_length=MAX_LAYERS)]
    activation: Activation
    norm: Norm
    loss: MLPLoss


class CNNTask(TaskBase):
    family: Literal["cnn"] = "cnn"
    dataset: ImageDataset
    channels: Annotated[tuple[Width, ...], Field(max_length=MAX_LAYERS)]
    kernel_size: Annotated[int, Field(ge=1, le=7)]
    pooling: Pooling
    activation: Activation
    norm: Norm


class RNNTask(TaskBase):
    family: Literal["rnn"] = "rnn"
    task: AlgoTask
    cell: Cell
    hidden_size: Width
    num_layers: Depth
    seq_len: SeqLen


class TextRNNTask(TaskBase):
    family: Literal["text_rnn"] = "text_rnn"
    dataset: TextDataset
    cell: Cell
    embed_dim: Width
    hidden_size: Width
    num_layers: Depth
    bidirectional: bool
    max_len: Annotated[int, Field(ge=1, le=MAX_SEQ_LEN)]
    vocab_size: Annotated[int, Field(ge=2, le=MAX_VOCAB_SIZE)]


class TransformerTask(TaskBase):
    family: Literal["transformer"] = "transformer"
    dataset: LMDataset
    d_model: Width
    num_layers: Depth
    num_heads: Width
    ff_mult: Annotated[int, Field(ge=1, le=MAX_FF_MULT)]
    seq_len: SeqLen
    norm_position: NormPosition
    positional: Positional


class NQMTask(TaskBase):
    family: Literal["nqm"] = "nqm"
    dim: Annotated[int, Field(ge=1, le=MAX_NQM_DIM)]
    spectrum_decay: Annotated[float, Field(ge=0)]
    noise_scale: Annotated[float, Field(ge=0)]


class RegressionTask(TaskBase):
    family: Literal["regression"] = "regression"
    inputs: Annotated[int, Field(ge=1, le=MAX_REGRESSION_INPUTS)]
    target: RegressionTarget
    noise: Annotated[float, Field(ge=0, le=MAX_NOISE)]
    examples: Annotated[int, Field(ge=2, le=MAX_EXAMPLES)]  # a batch of one would break batch norm
    hidden: Annotated[tuple[Width, ...], Field(max_length=MAX_LAYERS)]
    activation: RegressionActivation
    norm: Norm
    loss: RegressionLoss


Task = Annotated[
    Union[MLPTask, CNNTask, RNNTask, TextRNNTask, TransformerTask, NQMTask, RegressionTask],
    Field(discriminator="family"),
]


# --- specs ---------------------------------------------------------------------------------------


class Layers(StrictModel):
    """A stack of layers whose depth and sizes are sampled."""

    depth: Annotated[
        int_dist(), Field(description=f"Number of layers (every value 1 to {MAX_LAYERS}).")  # type: ignore[valid-type]
    ]
    width: Annotated[
        int_dist(),  # type: ignore[valid-type]
        Field(description=f"Size of each layer (units or channels; every value 1 to {MAX_WIDTH:,})."),
    ]
    independent: Annotated[
        bool,
        Field(description="Each layer draws its own size (true) or all layers share one (false)."),
    ] = True

    @field_validator("depth", "width")
    @classmethod
    def _within_caps(cls, v: Any, info: ValidationInfo) -> Any:
        _check_support(v, info.field_name, 1, MAX_LAYERS if info.field_name == "depth" else MAX_WIDTH)
        return v

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        depth = sample_value(self.depth, rng)
        if self.independent:
            return tuple(sample_value(self.width, rng) for _ in range(depth))
        return (sample_value(self.width, rng),) * depth

    def axis(self) -> LayerAxis:
        return LayerAxis(_axis_values(self.depth), _axis_values(self.width), self.independent)


def _axis_values(value: Any) -> Axis:
    """The values of a field as a counting axis: a range stays a lazy range, never a set of its values."""
    support = support_of(value)
    return support if isinstance(support, range) else frozenset(support)


def _check_support(value: Any, name: str, low: float | None, high: float | None) -> None:
    if isinstance(value, (Uniform, LogUniform)) and value.bins is None:
        raise ValueError(
            f"a continuous '{value.dist}' distribution inside a task family must declare how it is "
            "counted: add 'bins: N' (samples snap to N evenly spaced values)"
        )
    if low is None and high is None:
        return
    bad = first_outside(value, low, high)
    if bad is not None:
        rng = f"[{low:,}, {high:,}]" if high is not None else f">= {low}"
        fix = f"; lower it to at most {high:,}" if high is not None and bad > high else ""
        raise ValueError(f"every value of {name} must be {rng}; got {_number(bad)}{fix}")


def _number(x: Any) -> str:
    """A value as quoted in a message: a huge integer by its size, not its thousands of digits."""
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) >= 10**15:
        return f"{float(x):.3g}" if abs(x) < 10**300 else f"an integer of {x.bit_length():,} bits"
    return str(x)


class FamilySpec(StrictModel):
    """Fields shared by every family; subclasses add their own choices."""

    #: Fields that are not task choices.
    NOT_SAMPLED: ClassVar[frozenset[str]] = frozenset({"family", "weight"})
    #: Per-field bounds checked on every value a field can take: name -> (low, high).
    LIMITS: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "batch_size": (1, MAX_BATCH_SIZE),
        "inner_steps": (1, MAX_INNER_STEPS),
        "outer_steps": (MIN_OUTER_STEPS, MAX_OUTER_STEPS),
    }
    task_cls: ClassVar[type[TaskBase]]

    weight: Annotated[
        float,
        Field(gt=0, description="Relative weight of this entry in the mixture (finite; need not sum to 1)."),
    ] = 1.0
    batch_size: Annotated[
        int_dist(), Field(description=f"Examples per inner step (1 to {MAX_BATCH_SIZE:,}).")  # type: ignore[valid-type]
    ]
    inner_steps: Annotated[
        int_dist(), Field(description=f"Inner training steps T of a run (1 to {MAX_INNER_STEPS:,}).")  # type: ignore[valid-type]
    ]
    outer_steps: Annotated[
        int_dist(),  # type: ignore[valid-type]
        Field(description="Outer steps (policy decisions) per run, 2 to 128; never more than inner_steps."),
    ]

    @field_validator("*")
    @classmethod
    def _check_field(cls, v: Any, info: ValidationInfo) -> Any:
        if info.field_name in cls.NOT_SAMPLED or isinstance(v, Layers):
            return v
        low, high = cls.LIMITS.get(info.field_name, (None, None))
        _check_support(v, info.field_name, low, high)
        return v

    @model_validator(mode="after")
    def _outer_within_inner(self) -> "FamilySpec":
        most_outer, least_inner = support_bounds(self.outer_steps)[1], support_bounds(self.inner_steps)[0]
        if most_outer > least_inner:
            raise ValueError(
                f"outer_steps can be {most_outer} but inner_steps can be as small as {least_inner}; "
                "every outer step needs at least one inner step"
            )
        return self

    def space_fields(self) -> list[str]:
        """Task choices: the family's own fields first, then the training ones every family has."""
        own = [n for n in type(self).model_fields if n not in FamilySpec.model_fields and n not in self.NOT_SAMPLED]
        return own + [n for n in FamilySpec.model_fields if n not in self.NOT_SAMPLED]

    def axes(self) -> dict[str, Axis]:
        """One axis per task choice; the entry's settings are their product."""
        out: dict[str, Axis] = {}
        for name in self.space_fields():
            value = getattr(self, name)
            out[name] = value.axis() if isinstance(value, Layers) else _axis_values(value)
        return out

    def sample(self, rng: np.random.Generator) -> TaskBase:
        values = {}
        for name in self.space_fields():
            value = getattr(self, name)
            values[name] = value.sample(rng) if isinstance(value, Layers) else sample_value(value, rng)
        return self.task_cls(**values)

    def is_random(self, name: str) -> bool:
        value = getattr(self, name)
        return isinstance(value, Layers) or is_distribution(value)


class MLPSpec(FamilySpec):
    """Multi-layer perceptron classifying MNIST-like images (Appendix H: MNISTs + MLP)."""

    task_cls: ClassVar[type[TaskBase]] = MLPTask
    family: Literal["mlp"] = "mlp"
    dataset: Annotated[choice_dist(ImageDataset), Field(description="Image dataset.")]  # type: ignore[valid-type]
    hidden: Annotated[Layers, Field(description="Hidden layers: depth and units per layer.")]
    activation: Annotated[choice_dist(Activation), Field(description="Hidden activation.")]  # type: ignore[valid-type]
    norm: Annotated[choice_dist(Norm), Field(description="Normalization after each hidden layer.")]  # type: ignore[valid-type]
    loss: Annotated[
        choice_dist(MLPLoss),  # type: ignore[valid-type]
        Field(description="Training loss; MAE, MSE and Huber (delta 0.1) compare softmax outputs with one-hot targets."),
    ]


class CNNSpec(FamilySpec):
    """Convolutional classifier on MNIST-like images (Appendix H: MNISTs + CNN)."""

    task_cls: ClassVar[type[TaskBase]] = CNNTask
    LIMITS = {**FamilySpec.LIMITS, "kernel_size": (1, 7)}
    family: Literal["cnn"] = "cnn"
    dataset: Annotated[choice_dist(ImageDataset), Field(description="Image dataset.")]  # type: ignore[valid-type]
    channels: Annotated[Layers, Field(description="Convolution layers: depth and channels per layer.")]
    kernel_size: Annotated[
        int_dist(), Field(description="Odd convolution kernel size, 1 to 7.")  # type: ignore[valid-type]
    ]
    pooling: Annotated[
        choice_dist(Pooling),  # type: ignore[valid-type]
        Field(description="Downsampling after each convolution: max pool, average pool, or stride 2."),
    ]
    activation: Annotated[choice_dist(Activation), Field(description="Activation after each convolution.")]  # type: ignore[valid-type]
    norm: Annotated[choice_dist(Norm), Field(description="Normalization after each convolution.")]  # type: ignore[valid-type]

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: Any) -> Any:
        support = support_of(v)
        if isinstance(support, range):  # of two neighbours one is even: the first two values decide
            support = support[:2]
        even = next((k for k in support if k % 2 == 0), None)
        if even is not None:
            raise ValueError(f"kernel sizes must be odd (same padding); got {_number(even)}")
        return v


class RNNSpec(FamilySpec):
    """Recurrent network on an algorithmic sequence task (Appendix H: Algo + RNN)."""

    task_cls: ClassVar[type[TaskBase]] = RNNTask
    LIMITS = {
        **FamilySpec.LIMITS,
        "hidden_size": (1, MAX_WIDTH),
        "num_layers": (1, MAX_LAYERS),
        "seq_len": (2, MAX_SEQ_LEN),
    }
    family: Literal["rnn"] = "rnn"
    task: Annotated[
        choice_dist(AlgoTask),  # type: ignore[valid-type]
        Field(description="parity: running XOR of a bit stream; binary_addition: sum of two binary numbers."),
    ]
    cell: Annotated[choice_dist(Cell), Field(description="Recurrent cell.")]  # type: ignore[valid-type]
    hidden_size: Annotated[
        int_dist(), Field(description=f"Hidden units per layer (1 to {MAX_WIDTH:,}).")  # type: ignore[valid-type]
    ]
    num_layers: Annotated[
        int_dist(), Field(description=f"Stacked recurrent layers (1 to {MAX_LAYERS}).")  # type: ignore[valid-type]
    ]
    seq_len: Annotated[
        int_dist(), Field(description=f"Sequence length (bits per example; 2 to {MAX_SEQ_LEN:,}).")  # type: ignore[valid-type]
    ]


class TextRNNSpec(FamilySpec):
    """Recurrent sentence classifier on SST-2 (Appendix H: Text + RNN)."""

    task_cls: ClassVar[type[TaskBase]] = TextRNNTask
    LIMITS = {
        **FamilySpec.LIMITS,
        "embed_dim": (1, MAX_WIDTH),
        "hidden_size": (1, MAX_WIDTH),
        "num_layers": (1, MAX_LAYERS),
        "max_len": (1, MAX_SEQ_LEN),
        "vocab_size": (2, MAX_VOCAB_SIZE),
    }
    family: Literal["text_rnn"] = "text_rnn"
    dataset: Annotated[choice_dist(TextDataset), Field(description="Sentence classification dataset.")] = "sst2"  # type: ignore[valid-type]
    cell: Annotated[choice_dist(Cell), Field(description="Recurrent cell.")]  # type: ignore[valid-type]
    embed_dim: Annotated[
        int_dist(), Field(description=f"Word embedding size (1 to {MAX_WIDTH:,}).")  # type: ignore[valid-type]
    ]
    hidden_size: Annotated[
        int_dist(), Field(description=f"Hidden units per layer (1 to {MAX_WIDTH:,}).")  # type: ignore[valid-type]
    ]
    num_layers: Annotated[
        int_dist(), Field(description=f"Stacked recurrent layers (1 to {MAX_LAYERS}).")  # type: ignore[valid-type]
    ]
    bidirectional: Annotated[choice_dist(bool), Field(description="Read sentences in both directions.")]  # type: ignore[valid-type]
    max_len: Annotated[
        int_dist(), Field(description=f"Sentences are cut to this many tokens (1 to {MAX_SEQ_LEN:,}).")  # type: ignore[valid-type]
    ]
    vocab_size: Annotated[
        int_dist(),  # type: ignore[valid-type]
        Field(description=f"Most frequent training words kept (2 to {MAX_VOCAB_SIZE:,}); the rest map to an unknown-word token."),
    ]


class TransformerSpec(FamilySpec):
    """Causal Transformer language model on a simple dataset (Appendix H: Text + Transformer).

    Training distributions use the text-like datasets only; the algorithmic ones make the held-out
    Algo + Transformer row of Table 1 and may only appear in an evaluation distribution.
    """

    task_cls: ClassVar[type[TaskBase]] = TransformerTask
    LIMITS = {
        **FamilySpec.LIMITS,
        "d_model": (1, MAX_WIDTH),
        "num_layers": (1, MAX_LAYERS),
        "num_heads": (1, MAX_WIDTH),
        "ff_mult": (1, MAX_FF_MULT),
        "seq_len": (2, MAX_SEQ_LEN),
    }
    family: Literal["transformer"] = "transformer"
    dataset: Annotated[
        choice_dist(LMDataset),  # type: ignore[valid-type]
        Field(
            description=f"Language-modelling dataset. Text-like, for training: {', '.join(LM_TEXT_DATASETS)}. "
            "Algorithmic, held out of training for the Algo+Transformer row of Table 1 (allowed only under "
            f"`evaluation.tasks`): {', '.join(LM_ALGO_DATASETS)}. Out-of-distribution, evaluation only: "
            f"{', '.join(LM_OOD_DATASETS)}."
        ),
    ]
    d_model: Annotated[
        int_dist(), Field(description=f"Model width (1 to {MAX_WIDTH:,}); divisible by every num_heads value.")  # type: ignore[valid-type]
    ]
    num_layers: Annotated[
        int_dist(), Field(description=f"Transformer blocks (1 to {MAX_LAYERS}).")  # type: ignore[valid-type]
    ]
    num_heads: Annotated[
        int_dist(), Field(description=f"Attention heads (1 to {MAX_WIDTH:,}).")  # type: ignore[valid-type]
    ]
    ff_mult: Annotated[
        int_dist(), Field(description=f"Feed-forward width as a multiple of d_model (1 to {MAX_FF_MULT}).")  # type: ignore[valid-type]
    ]
    seq_len: Annotated[
        int_dist(), Field(description=f"Context length in tokens (2 to {MAX_SEQ_LEN:,}).")  # type: ignore[valid-type]
    ]
    norm_position: Annotated[
        choice_dist(NormPosition),  # type: ignore[valid-type]
        Field(description="LayerNorm before (pre) or after (post) each residual branch."),
    ]
    positional: Annotated[
        choice_dist(Positional),  # type: ignore[valid-type]
        Field(description="Learned or sinusoidal position embeddings."),
    ]

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "TransformerSpec":
        for d in support_of(self.d_model):
            for h in support_of(self.num_heads):
                if d % h:
                    raise ValueError(f"d_model {d} is not divisible by num_heads {h}; every pair must divide")
        return self


class NQMSpec(FamilySpec):
    """Noisy quadratic model (Zhang et al., 2019): a diagonal quadratic with gradient noise.

    Curvatures ``h_i = i^-spectrum_decay``; the gradient noise has covariance
    ``noise_scale * H / batch_size``, so larger batches see less noise.
    """

    task_cls: ClassVar[type[TaskBase]] = NQMTask
    LIMITS = {**FamilySpec.LIMITS, "dim": (1, MAX_NQM_DIM), "spectrum_decay": (0, None), "noise_scale": (0, None)}
    family: Literal["nqm"] = "nqm"
    dim: Annotated[
        int_dist(), Field(description=f"Number of parameters (dimensions; 1 to {MAX_NQM_DIM:,}).")  # type: ignore[valid-type]
    ]
    spectrum_decay: Annotated[
        float_dist(),  # type: ignore[valid-type]
        Field(description="Curvature h_i = i^-decay; the condition number is dim^decay."),
    ]
    noise_scale: Annotated[
        float_dist(),  # type: ignore[valid-type]
        Field(description="Gradient-noise covariance is noise_scale * H / batch_size."),
    ]


class RegressionSpec(FamilySpec):
    """Multi-layer perceptron fitting a synthetic regression target (not a family of the paper).

    Inputs are standard normal with ``inputs`` features; the target of each task is drawn from its
    seed: a random linear map (``linear``), the sine of a random projection (``sine``, whose
    argument has spread 3), or a random one-hidden-layer tanh network (``teacher``);
    Gaussian noise of standard deviation ``noise`` is added to the training, validation and test
    targets alike. A fixed training set of ``examples`` examples is reshuffled each epoch, as the
    image families' datasets are.
    """

    task_cls: ClassVar[type[TaskBase]] = RegressionTask
    LIMITS = {
        **FamilySpec.LIMITS,
        "inputs": (1, MAX_REGRESSION_INPUTS),
        "noise": (0, MAX_NOISE),
        "examples": (2, MAX_EXAMPLES),
    }
    family: Literal["regression"] = "regression"
    inputs: Annotated[
        int_dist(), Field(description=f"Input features (1 to {MAX_REGRESSION_INPUTS:,}).")  # type: ignore[valid-type]
    ]
    target: Annotated[
        choice_dist(RegressionTarget),  # type: ignore[valid-type]
        Field(description="linear: a random linear map; sine: the sine of a random projection; "
                          "teacher: a random one-hidden-layer tanh network of 32 units."),  # fmt: skip
    ]
    noise: Annotated[
        float_dist(),  # type: ignore[valid-type]
        Field(description=f"Standard deviation of the Gaussian noise on every target (0 to {MAX_NOISE:g})."),
    ]
    examples: Annotated[
        int_dist(), Field(description=f"Training examples (2 to {MAX_EXAMPLES:,}).")  # type: ignore[valid-type]
    ]
    hidden: Annotated[Layers, Field(description="Hidden layers: depth and units per layer.")]
    activation: Annotated[choice_dist(RegressionActivation), Field(description="Hidden activation.")]  # type: ignore[valid-type]
    norm: Annotated[choice_dist(Norm), Field(description="Normalization after each hidden layer.")]  # type: ignore[valid-type]
    loss: Annotated[
        choice_dist(RegressionLoss),  # type: ignore[valid-type]
        Field(description="Training loss on the scalar output: squared error, absolute error, or Huber (delta 1)."),
    ]


Family = Annotated[
    Union[MLPSpec, CNNSpec, RNNSpec, TextRNNSpec, TransformerSpec, NQMSpec, RegressionSpec],
    Field(discriminator="family"),
]
FAMILY_SPECS: dict[str, type[FamilySpec]] = {
    cls.model_fields["family"].default: cls
    for cls in (MLPSpec, CNNSpec, RNNSpec, TextRNNSpec, TransformerSpec, NQMSpec, RegressionSpec)
}

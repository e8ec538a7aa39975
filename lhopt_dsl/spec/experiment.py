"""Task distributions (weighted mixtures of families) and experiment specs."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Literal, NamedTuple, Union

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .distributions import Choice, StrictModel, check_weight_sum, support_of
from .families import LM_ALGO_DATASETS, LM_OOD_DATASETS, Family, FamilySpec, TransformerSpec
from .hparams import CIAOSpace, HyperparameterSpace
from .schedule import SHAPES, Schedule
from .space import MAX_ENTRIES_PER_FAMILY

#: Key of a validation error's context that locates the problem below the validated field: a path
#: within it, which :func:`lhopt_dsl.spec.loader.load_spec` follows to the offending line.
ERROR_PATH = "path_within"

#: Most redraws of a task above its budget: each costs a cost estimate, and a spec whose budget
#: admits nothing must fail in seconds, not loop (the shipped evaluation distributions use 2,000).
MAX_BUDGET_TRIES = 10_000
#: Largest policy network a spec may ask for: 4,096 LSTM units hold 134 million weights per layer.
MAX_POLICY_HIDDEN = 4096
MAX_POLICY_LAYERS = 8
#: Most rollout worker processes.
MAX_WORKERS = 1024


class HeldOutDataset(NamedTuple):
    """A dataset held out of training that a task distribution can draw, and where it names it."""

    dataset: str
    path: tuple[Union[str, int], ...]  # within the distribution, e.g. ("families", 5, "dataset", "values", 3)


class Budget(StrictModel):
    """A cap on the cost of sampled tasks: a draw above it is redrawn from the same mixture entry
    (so the mixture weights are kept), up to ``max_tries`` times."""

    max_params: Annotated[int | None, Field(ge=1, description="Most trainable parameters a task may have.")] = None
    max_gflops_per_run: Annotated[
        float | None,
        Field(gt=0, description="Most GFLOPs a whole run may take (T training steps plus validation passes)."),
    ] = None
    max_tries: Annotated[
        int,
        Field(
            ge=1, le=MAX_BUDGET_TRIES, description=f"Redraws before giving up with an error (1 to {MAX_BUDGET_TRIES:,})."
        ),
    ] = 200

    def admits(self, task: object) -> bool:
        from ..tasks.compiler import estimate_cost  # torch is only needed when a budget is set

        cost = estimate_cost(task)
        if self.max_params is not None and cost.params > self.max_params:
            return False
        return self.max_gflops_per_run is None or cost.flops_per_run <= self.max_gflops_per_run * 1e9


class TaskDistribution(StrictModel):
    """A weighted mixture of task families: each entry is drawn with probability weight / sum."""

    description: Annotated[str, Field(description="Free text shown by `lhopt space`.")] = ""
    families: Annotated[
        list[Family], Field(min_length=1, description="Mixture entries, each tagged with `family:`.")
    ]
    budget: Annotated[
        Budget | None, Field(description="Cap on sampled tasks' size and work; null for no cap.")
    ] = None

    @field_validator("families")
    @classmethod
    def _countable_mixture(cls, families: list[FamilySpec]) -> list[FamilySpec]:
        """Weights that can be normalised, and few enough entries per family to count overlaps exactly."""
        check_weight_sum([f.weight for f in families], "the entries' weights")
        seen: Counter[str] = Counter()
        for i, fam in enumerate(families):
            seen[fam.family] += 1
            if seen[fam.family] > MAX_ENTRIES_PER_FAMILY:
                raise PydanticCustomError(
                    "too_many_entries",
                    f"more than {MAX_ENTRIES_PER_FAMILY} entries of family '{fam.family}': too many to count their "
                    "overlaps exactly; merge entries of one family (a choice can hold what several entries do)",
                    {ERROR_PATH: (i,)},
                )
        return families

    @property
    def weights(self) -> list[float]:
        total = sum(f.weight for f in self.families)
        return [f.weight / total for f in self.families]

    def held_out_datasets(self) -> list[HeldOutDataset]:
        """Datasets held out of training that this mixture can draw: the algorithmic ones of the
        Algo + Transformer row and the out-of-distribution corpora (zero-weight choices excluded)."""
        found = []
        for i, fam in enumerate(self.families):
            if not isinstance(fam, TransformerSpec):
                continue
            drawn = set(support_of(fam.dataset))
            choice = isinstance(fam.dataset, Choice)
            for j, name in enumerate(fam.dataset.values if choice else [fam.dataset]):
                if name in drawn and (name in LM_ALGO_DATASETS or name in LM_OOD_DATASETS):
                    found.append(HeldOutDataset(name, ("families", i, "dataset", *(("values", j) if choice else ()))))
        return found


class ReportingSpec(StrictModel):
    """How often meta-training's runs tell the policy their losses, drawn once per task.

    A user of the drop-in optimizer reports losses when it suits them (every step, every k steps,
    never); a policy that only ever saw every loss reads a missing one as a divergence. Each task
    draws, from its seed, whether its runs report everything (as evaluation does) or follow a
    random cadence: a training loss every ``k`` inner steps, ``k`` log-uniform in
    ``[2, train_every_max]``, or never; a validation loss every ``n`` inner steps, ``n`` a
    log-uniform fraction of the run in ``valid_every_fraction``, or never. Rewards always use the
    losses measured, whatever the policy is told.
    """

    full: Annotated[
        float, Field(ge=0, le=1, description="Probability that a task's runs report every loss (as evaluation does).")
    ] = 0.5
    train_never: Annotated[
        float, Field(ge=0, le=1, description="Otherwise: probability of reporting no training loss at all.")
    ] = 0.2
    train_every_max: Annotated[
        int, Field(ge=2, description="Otherwise: the most inner steps between training-loss reports.")
    ] = 64
    valid_never: Annotated[
        float, Field(ge=0, le=1, description="Otherwise: probability of reporting no validation loss at all.")
    ] = 0.2
    valid_every_fraction: Annotated[
        tuple[float, float],
        Field(description="Otherwise: [low, high] fractions of the run between validation-loss reports."),
    ] = (0.02, 0.5)

    @field_validator("valid_every_fraction")
    @classmethod
    def _ordered_fractions(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"needs 0 < low <= high <= 1, got [{v[0]}, {v[1]}]")
        return v


class MetaTrainSpec(StrictModel):
    """Meta-training settings (PPO over inner runs, paper Section 3.6)."""

    iterations: Annotated[int, Field(ge=1, description="PPO iterations.")] = 100
    workers: Annotated[
        int,
        Field(
            ge=0, le=MAX_WORKERS, description=f"Parallel rollout worker processes (0: in-process; at most {MAX_WORKERS:,})."
        ),
    ] = 1
    tasks_per_iteration: Annotated[int, Field(ge=1, description="Tasks sampled per PPO iteration.")] = 2
    rollouts_per_task: Annotated[
        int, Field(ge=1, description="Policy rollouts per sampled task, sharing one baseline (paper: 4).")
    ] = 4
    baseline: Annotated[
        str,
        Field(
            pattern="^(self_play|fixed|schedule)$",
            description="What each episode's reward is measured against, on the same task (the same initial weights "
                        "and data order): self_play, an EMA of the policy being trained, run greedily; fixed, CIAO at "
                        "the task's initial hyperparameters; schedule, CIAO following the residual base schedule "
                        "(needs `residual`), so that an episode's reward says what its deviations from the schedule won.",
        ),
    ] = "self_play"
    residual: Annotated[
        str | None,
        Field(description="Train a residual policy around this learning-rate schedule (e.g. linear-lr0.03): its "
                          "learning-rate actions scale an offset from the schedule, so 'keep' follows the schedule and "
                          "PPO learns only where to leave it. A run started with --init needs a policy made around "
                          "the same schedule (lhopt imitate --base). None: the actions scale the learning rate itself."),
    ] = None
    critic_warmup: Annotated[
        int,
        Field(ge=0, le=1_000_000,
              description="The first this many iterations of a new run train the critic alone (the actor frozen): a "
                          "policy started from imitation has a critic that has never seen a reward, and its first "
                          "advantages would otherwise be noise the actor follows."),
    ] = 0
    kl_to_start: Annotated[
        float,
        Field(ge=0, description="Weight of a penalty on the KL divergence from the policy the run started from (its "
                                "actor at iteration 0), per decision: keeps a fine-tuned policy near its start until "
                                "the rewards say otherwise. 0: none."),
    ] = 0.0
    init_temperature: Annotated[
        float,
        Field(gt=0, le=100,
              description="A new run started with --init divides the started policy's action logits by this: its "
                          "greedy choices are unchanged, and below 1 the sampled policy leaves its most likely action "
                          "less often, so an episode deviates on a few decisions and its reward says something about "
                          "them (a cloned policy samples a deviation on a large share of decisions, a random walk the "
                          "reward judges only at the end). The KL penalty's start is the sharpened policy. 1: as saved."),
    ] = 1.0
    update_normalisers: Annotated[
        bool,
        Field(description="Update the feature normalisers from each iteration's rollouts. Off keeps the started "
                          "policy's (an imitation policy's normalisers were fit to its own data), so the actor's "
                          "inputs mean what they meant at the start."),
    ] = True
    preset: Annotated[
        Literal["default", "large"] | None,
        Field(description="Policy size preset: default = 1 x 256 LSTM, large = 2 x 512; overrides the two below."),
    ] = None
    hidden_size: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_POLICY_HIDDEN,
            description=f"LSTM units of actor and critic (paper: 256; large: 512; at most {MAX_POLICY_HIDDEN:,}).",
        ),
    ] = 256
    num_layers: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_POLICY_LAYERS,
            description=f"LSTM layers of actor and critic (paper: 1; large: 2; at most {MAX_POLICY_LAYERS}).",
        ),
    ] = 1
    learning_rate: Annotated[float, Field(gt=0, description="Adam learning rate of actor and critic.")] = 3e-4
    keep_bias: Annotated[
        float,
        Field(ge=0, description="Initial logit bonus of the action that keeps each hyperparameter (where one "
              "exists) and of no restart: a new policy starts near 'keep the hyperparameters' (0: uniform)."),
    ] = 0.0
    update_epochs: Annotated[
        int, Field(ge=1, le=4, description="Passes over each iteration's rollouts (paper: reuse at most 4).")
    ] = 4
    minibatch_episodes: Annotated[int, Field(ge=1, description="Whole episodes per PPO minibatch.")] = 4
    clip_coef: Annotated[float, Field(gt=0, description="PPO ratio clipping.")] = 0.2
    entropy_coef: Annotated[float, Field(ge=0, description="Entropy bonus weight.")] = 0.01
    value_coef: Annotated[float, Field(ge=0, description="Value loss weight.")] = 0.5
    max_grad_norm: Annotated[float, Field(gt=0, description="Gradient-norm clip of the PPO update.")] = 0.5
    gae_lambda: Annotated[float, Field(ge=0, le=1, description="GAE lambda (the discount is 1).")] = 0.95
    advantage_norm: Annotated[
        Literal["batch", "task"],
        Field(description="How advantages are normalised before the PPO loss: batch, over all of an iteration's "
                          "episodes (CleanRL's default); task, over each task's own rollouts, so tasks whose "
                          "rewards vary little weigh as much as tasks whose rewards vary a lot."),
    ] = "batch"
    reward_cap: Annotated[
        float,
        Field(gt=1, description="The speedup over the reward's baseline at which the power-law reward saturates "
                                "(a loss the baseline would need this many times its steps to reach, or one below its "
                                "fitted asymptote, earns the most). 100 reads the paper's extrapolation widely; 2 "
                                "matches evaluation, whose speedups stop counting at 2x, so that a rare large win "
                                "(a plateau escaped) weighs no more in the reward than in the judge."),
    ] = 100.0
    reward_reference: Annotated[
        Literal["best", "final"],
        Field(description="What the reward reads a loss against: best, the baseline's best validation loss (the "
                          "paper's: 1 there); final, the baseline's own final loss (1 there), so that a policy that "
                          "runs as its baseline (a residual policy that keeps) earns exactly 1 on every task, "
                          "also where the baseline's run ends above its best (over-fitting tasks)."),
    ] = "best"
    ema_decay: Annotated[
        float, Field(ge=0, lt=1, description="Decay of the EMA of policy weights used as the self-play baseline.")
    ] = 0.9
    max_valid: Annotated[int, Field(ge=1, description="Validation examples evaluated at each outer step.")] = 512
    reporting: Annotated[
        ReportingSpec,
        Field(description="Randomised loss-reporting cadences, so the policy learns what a drop-in user reports."),
    ] = ReportingSpec()
    population: Annotated[
        bool,
        Field(description="Train each task's runs (initial hyperparameters, self-play baseline, rollouts) as one "
              "batched population where the task allows it; false runs them one after another."),
    ] = True
    compile: Annotated[
        bool,
        Field(description="torch.compile the batched populations' steps (compiled once per architecture and "
              "process: pays on long runs and on distributions with few architectures)."),
    ] = False
    run_dir: Annotated[
        str, Field(description="Where checkpoints and local metrics go (relative to the working directory).")
    ] = "runs"
    dev_every: Annotated[
        int,
        Field(ge=0, le=1_000_000,
              description="Every this many iterations (and at the start), evaluate the policy greedily on the first "
                          "dev_tasks held-out dev tasks against the cached AdamW grids and log dev/... metrics: the "
                          "learning curve on held-out tasks. 0: never."),
    ] = 0
    dev_tasks: Annotated[
        int, Field(ge=1, le=10_000, description="Dev tasks of that learning curve (the same ones every time).")
    ] = 24

    @field_validator("residual")
    @classmethod
    def _residual_base(cls, base: str | None) -> str | None:
        if base is None:
            return None
        try:
            schedule = Schedule.from_name(base)
        except ValueError as e:
            raise PydanticCustomError("residual_base", "{why}", {"why": str(e)}) from None
        if schedule.optimizer is not None or schedule.lr is None:
            raise PydanticCustomError(
                "residual_base", "a residual base is a learning-rate schedule followed by the policy's own actions, "
                "named like linear-lr0.03 (no optimizer prefix, not 'keep'); got '{base}'", {"base": base})
        return base

    @model_validator(mode="after")
    def _schedule_baseline_needs_base(self) -> "MetaTrainSpec":
        if self.baseline == "schedule" and self.residual is None:
            raise PydanticCustomError(
                "schedule_baseline", "baseline: schedule measures each episode against the residual base schedule's "
                "run; set meta_train.residual (e.g. residual: linear-lr0.03) or choose baseline self_play or fixed", {})
        return self


#: The imitation grid's default learning rates: CIAO learning rates (a fraction of each layer's norm
#: per step, under LAMB's trust ratio) from 1e-4 to the bound 0.1, in half-decades ...
DEFAULT_IMITATION_LRS: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
#: ... times three decays.
DEFAULT_IMITATION_SHAPES: tuple[str, ...] = ("constant", "cosine", "linear")


class ImitationSpec(StrictModel):
    """Imitation warm-start settings (`lhopt imitate`): demonstrations from a grid of learning-rate
    schedules on training tasks, then behaviour cloning. Each of `lhopt imitate`'s options overrides
    the value here."""

    tasks: Annotated[int, Field(ge=1, le=1_000_000, description="Training tasks to demonstrate on.")] = 100
    workers: Annotated[
        int | None,
        Field(ge=0, le=MAX_WORKERS, description="Worker processes (0 or 1: in-process); null: meta_train.workers."),
    ] = None
    epochs: Annotated[
        int, Field(ge=1, le=1_000_000, description="Cloning epochs; the epoch of the best held-out loss is kept.")
    ] = 300
    lrs: Annotated[
        tuple[Annotated[float, Field(gt=0)], ...],
        Field(min_length=1, description="Peak learning rates of the grid of target schedules (each with every shape)."),
    ] = DEFAULT_IMITATION_LRS
    shapes: Annotated[
        tuple[str, ...],
        Field(min_length=1, description=f"Decays of the grid of target schedules; known: {', '.join(SHAPES)}."),
    ] = DEFAULT_IMITATION_SHAPES
    dagger: Annotated[
        int,
        Field(ge=0, le=1_000, description="Rounds of DAgger: run the cloned policy on the same tasks, label its own "
                                          "decisions with each task's schedule, clone again (one run per task and round)."),
    ] = 0
    initial: Annotated[
        Literal["noisy", "default"],
        Field(description="The tasks' initial hyperparameters: noisy, meta-training's noise; default, the space's "
                          "defaults, as a user starts (and evaluation does). Kept apart in demos-default/."),
    ] = "noisy"
    margin: Annotated[
        float | None,
        Field(ge=0, description="Consensus labels: every task follows the one schedule of least mean regret over the "
                                "tasks, unless its own best ends more than this much lower (relative; 0.05 = 5%). "
                                "null: each task's own best schedule."),
    ] = None
    clone_seed: Annotated[
        int | None,
        Field(ge=0, description="Seed of the cloning alone (initial weights, held-out tasks), the tasks kept: how much "
                                "the recipe itself varies. null: the spec's seed."),
    ] = None
    base: Annotated[
        str | None,
        Field(description="Make a residual policy around this learning-rate schedule (e.g. linear-lr0.03): its "
                          "labels are the offsets from the schedule towards each task's. null: a plain policy."),
    ] = None
    run_dir: Annotated[
        str | None,
        Field(description="Directory of the demonstrations and the policy (relative to the working directory); "
                          "null: `<meta_train.run_dir>/<name>-imitation`."),
    ] = None

    @field_validator("shapes")
    @classmethod
    def _known_shapes(cls, shapes: tuple[str, ...]) -> tuple[str, ...]:
        for i, shape in enumerate(shapes):
            if shape not in SHAPES:
                raise PydanticCustomError("unknown_shape", "unknown schedule shape '{shape}'; known: {known}",
                                          {"shape": shape, "known": ", ".join(SHAPES), ERROR_PATH: (i,)})  # fmt: skip
        return shapes

    @field_validator("base")
    @classmethod
    def _residual_base(cls, base: str | None) -> str | None:
        return MetaTrainSpec._residual_base(base)  # the same bases as meta_train.residual's, the same message


class EvaluationSpec(StrictModel):
    """Evaluation settings: held-out tasks against tuned baselines."""

    num_tasks: Annotated[int, Field(ge=1, description="Held-out tasks to evaluate on.")] = 20
    tasks: Annotated[
        TaskDistribution | None,
        Field(description="Evaluation distribution (may use out-of-distribution datasets); default: the training one."),
    ] = None
    compile: Annotated[
        bool,
        Field(description="torch.compile the batched populations' steps (compiled once per architecture and "
              "process: pays on long runs and on distributions with few architectures)."),
    ] = False


class TrackingSpec(StrictModel):
    """Where results go."""

    uri: Annotated[
        str | None,
        Field(description="MLflow tracking URI; default: a SQLite store `mlflow.db` in the working directory."),
    ] = None
    experiment: Annotated[str, Field(min_length=1, description="MLflow experiment name.")] = "lhopt"
    registered_model: Annotated[
        str | None, Field(description="Name under which a trained policy is registered.")
    ] = None


class ExperimentSpec(StrictModel):
    """An experiment: a task distribution, the hyperparameter space, and how to run."""

    name: Annotated[str, Field(min_length=1, description="Experiment name.")]
    description: Annotated[str, Field(description="Free text.")] = ""
    seed: Annotated[int, Field(ge=0, description="Root seed of everything random in the experiment.")] = 0
    device: Annotated[
        str,
        Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="Torch device: auto, cpu, cuda, cuda:N or mps."),
    ] = "cpu"
    data_dir: Annotated[
        str | None,
        Field(description="Directory with datasets (relative to the spec file); default: $LHOPT_DATA_DIR, then a cache."),
    ] = None
    tasks: Annotated[
        TaskDistribution,
        Field(description="The training task distribution, inline or the path of a YAML file holding one."),
    ]
    hparams: Annotated[
        HyperparameterSpace,
        Field(description="Inner optimizer hyperparameters: `space: ciao` (default; paper Tables 7, 8) or `space: adamw`."),
    ] = CIAOSpace()
    meta_train: Annotated[MetaTrainSpec, Field(description="PPO meta-training settings.")] = MetaTrainSpec()
    imitation: Annotated[
        ImitationSpec, Field(description="Imitation warm-start settings (`lhopt imitate`).")
    ] = ImitationSpec()
    evaluation: Annotated[EvaluationSpec, Field(description="Evaluation against tuned baselines.")] = EvaluationSpec()
    tracking: Annotated[TrackingSpec, Field(description="MLflow tracking.")] = TrackingSpec()

    @field_validator("tasks")
    @classmethod
    def _no_held_out_in_training(cls, tasks: TaskDistribution) -> TaskDistribution:
        held_out = tasks.held_out_datasets()
        if not held_out:
            return tasks
        first = held_out[0]
        if first.dataset in LM_ALGO_DATASETS:
            why = (
                f"dataset '{first.dataset}' is algorithmic: it is held out of training for the Algo+Transformer "
                "row of Table 1 and may not be part of the training distribution `tasks`; train on the text-like "
                "datasets and put it under `evaluation.tasks`"
            )
        else:
            why = (
                f"dataset '{first.dataset}' is reserved for out-of-distribution evaluation and may not be part of "
                "the training distribution `tasks`; use it under `evaluation.tasks`"
            )
        others = [h.dataset for h in held_out[1:]]
        if others:
            more = f", and {len(others) - 3} more" if len(others) > 3 else ""
            why += f" (also held out here: {', '.join(others[:3])}{more})"
        raise PydanticCustomError("held_out_dataset", why, {ERROR_PATH: first.path})

"""The typed sections of ``params.yaml`` (frozen dataclasses) and the allowed values of
its choices."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from nntune.config.ensemble_section import EnsembleParams
from nntune.config.metrics import (
    Objective,
    Task,
)
from nntune.errors import NntuneError

Optimizer = Literal["adam", "adamw", "sgd", "rmsprop"]
LrScalingRule = Literal["none", "linear", "sqrt"]
Scaling = Literal["standard", "robust", "quantile"]
SCALINGS: tuple[Scaling, ...] = ("standard", "robust", "quantile")
Schedule = Literal["constant", "cosine", "plateau"]
SCHEDULES: tuple[Schedule, ...] = ("constant", "cosine", "plateau")
Strategy = Literal["none", "mirrored"]
Backend = Literal["tensorflow", "jax"]
MissingPolicy = Literal["error", "drop", "impute"]
MISSING_POLICIES: tuple[MissingPolicy, ...] = ("error", "drop", "impute")
ReconstructionLoss = Literal["reconstruction_crossentropy", "mse"]
RECONSTRUCTION_LOSSES: tuple[ReconstructionLoss, ...] = ("reconstruction_crossentropy", "mse")

OPTIMIZERS: tuple[Optimizer, ...] = ("adam", "adamw", "sgd", "rmsprop")
ACTIVATIONS = ("relu", "elu", "selu", "gelu", "tanh", "sigmoid", "swish", "leaky_relu")
LR_SCALING_RULES: tuple[LrScalingRule, ...] = ("none", "linear", "sqrt")
STRATEGIES: tuple[Strategy, ...] = ("none", "mirrored")
BACKENDS: tuple[Backend, ...] = ("tensorflow", "jax")  # the first is the default
# Why runtime.strategy: mirrored is refused on JAX (the params loader and the train stage).
MIRRORED_ON_JAX = (
    "is TensorFlow's MirroredStrategy; nntune does not map it to Keras' DataParallel on JAX, "
    "which needs every batch to split evenly over the GPUs (an epoch's last batch usually "
    "does not): set runtime.strategy: none (one GPU per trial: nntune run --gpus) or "
    "runtime.backend: tensorflow"
)
DATA_SUFFIXES = (".csv", ".parquet", ".pq")


class ParamsError(NntuneError):
    """Raised with every problem found in a params file, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} invalid parameter(s):\n{lines}")


@dataclass(frozen=True)
class DataParams:
    source: str
    schema: str
    target: str
    task: Task
    test_fraction: float
    val_fraction: float
    split_seed: int
    features: tuple[str, ...] | None = None  # None: every column but the target and exclude
    exclude: tuple[str, ...] = ()  # never features: IDs, leaky columns
    missing: MissingPolicy = "error"
    delimiter: str = "auto"  # CSV only: "auto" sniffs it
    label_fraction: float = 1.0  # share of training rows that keep their label
    # How numeric features are scaled (fitted on the training split): standard (mean / sd),
    # robust (median / interquartile range), quantile (ranks mapped to a normal).
    scaling: Scaling = "standard"
    # One-hot blocks keep at most this many categories, the rarer ones grouped as one
    # "infrequent" input (0 = no cap); values seen fewer than min_frequency times in the
    # training split are grouped there too (1 = none).
    max_categories: int = 0
    min_frequency: int = 1
    # Cross-validation: () = off; (0, 1, ..., k-1) = k folds of the train + validation rows,
    # one DVC stage per fold (dvc.yaml's foreach takes the list), objective = their mean.
    cv_folds: tuple[int, ...] = ()


@dataclass(frozen=True)
class PretrainParams:
    """Autoencoder pretraining of the hidden layers (the seed's reconstruction entropy)."""

    enabled: bool
    epochs: int
    learning_rate: float
    batch_size: int
    patience: int
    loss: ReconstructionLoss
    freeze_epochs: int  # fine-tuning epochs with the pretrained layers frozen
    noise: float  # std of Gaussian noise on the encoder's input (denoising); 0 = none


@dataclass(frozen=True)
class ModelParams:
    hidden_layers: int
    units: tuple[int, ...]  # one entry per hidden layer (an int in the file is repeated)
    activation: str
    dropout: float
    l2: float
    batch_norm: bool = False  # BatchNormalization after each hidden layer's activation


@dataclass(frozen=True)
class EarlyStoppingParams:
    enabled: bool
    monitor: str
    patience: int
    min_delta: float
    restore_best_weights: bool


@dataclass(frozen=True)
class LrScalingParams:
    rule: LrScalingRule
    reference_batch_size: int


@dataclass(frozen=True)
class WarmStartParams:
    """Continue the model a parent experiment saved instead of starting from random
    weights (successive halving's promotions). The md5 is what makes the lineage exact: the
    warmstart stage takes exactly that file from DVC's cache."""

    experiment: str  # "" = train from scratch
    model_md5: str
    epochs: int  # epochs the parent trained: this run continues at that epoch

    @property
    def enabled(self) -> bool:
        return bool(self.experiment)


@dataclass(frozen=True)
class TrainParams:
    optimizer: Optimizer
    learning_rate: float
    momentum: float
    batch_size: int
    max_epochs: int
    early_stopping: EarlyStoppingParams
    lr_scaling: LrScalingParams
    warm_start: WarmStartParams
    # Batches per compiled call of the training loop: "auto" (chosen from the steps per
    # epoch, see nntune.stage.training.steps_per_execution) or a number of batches.
    steps_per_execution: int | Literal["auto"] = "auto"
    weight_decay: float = 0.0  # decoupled weight decay (AdamW's; any optimizer), >= 0
    schedule: Schedule = "constant"  # learning-rate schedule over the epochs
    warmup_epochs: int = 0  # epochs of linear warm-up to the rate, before the schedule
    label_smoothing: float = 0.0  # classification: targets (1 - e) one-hot + e / classes

    @property
    def scheduled(self) -> bool:
        """Whether the rate changes during training (a schedule or a warm-up)."""
        return self.schedule != "constant" or self.warmup_epochs > 0

    @property
    def effective_learning_rate(self) -> float:
        """The rate the optimiser really uses: with ``lr_scaling.rule: linear`` it grows in
        proportion to the batch size (Goyal et al. 2017, "Accurate, Large Minibatch SGD"); with
        ``sqrt`` in proportion to its square root, the rule for Adam-type optimisers (Malladi
        et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms")."""
        ratio = self.batch_size / self.lr_scaling.reference_batch_size
        if self.lr_scaling.rule == "linear":
            return self.learning_rate * ratio
        if self.lr_scaling.rule == "sqrt":
            return self.learning_rate * math.sqrt(ratio)
        return self.learning_rate


@dataclass(frozen=True)
class RuntimeParams:
    seed: int
    deterministic: bool
    device: str  # auto, cpu or gpu:N
    allow_cpu_fallback: bool
    mixed_precision: bool
    strategy: Strategy
    backend: Backend = "tensorflow"  # Keras' backend for train, pretrain and evaluate


@dataclass(frozen=True)
class EvaluateParams:
    objective: Objective


@dataclass(frozen=True)
class Params:
    data: DataParams
    model: ModelParams
    train: TrainParams
    runtime: RuntimeParams
    evaluate: EvaluateParams
    pretrain: PretrainParams
    ensemble: EnsembleParams = field(default_factory=EnsembleParams)

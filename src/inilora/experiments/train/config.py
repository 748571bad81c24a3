"""``TrainConfig``, the one definition of a fine-tuning run's settings: each field carries its default,
its check and its help text, and the command line is generated from it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ... import METHODS
from ...methods import REGISTRY
from ...options import QUANT_TYPES, SOLVERS
from ..models import DTYPES
from ..peft_peers import PEERS

FULL, BASE = "full", "base"  # full fine-tuning; the base model evaluated as it is (no training)
REFERENCES = (FULL, BASE)
FIT_SETTINGS = ("solver", "fit_steps")  # what only a method with a fit (inilora) reads
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")

TRAIN_INFO = "inilora_train.json"  # what a run folder records for `inilora eval`


@dataclass(frozen=True)
class Check:
    """A rule a field's value must follow, shared by ``TrainConfig`` and the command line."""

    accept: Callable[[Any], bool]
    what: str  # completes "expected ...": "a positive integer"
    rule: str  # completes "must be ...": "positive"


def has_fit(method: str) -> bool:
    """Whether ``method`` fits its factors (so a solver applies): inilora; not the references or PEFT's peers."""
    spec = REGISTRY.get(method)
    return spec is not None and spec.has_fit


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


POSITIVE_INT = Check(lambda v: _int(v) and v >= 1, "a positive integer", "positive")
POSITIVE = Check(lambda v: _finite_number(v) and v > 0, "a positive number", "positive")
FRACTION = Check(lambda v: _finite_number(v) and 0 <= v < 1, "a number in [0, 1)", "in [0, 1)")
AT_LEAST_8 = Check(lambda v: _int(v) and v >= 8, "an integer of at least 8", "at least 8")


def setting(default: Any, help: str | None = None, *, check: Check | None = None, choices: tuple | None = None,
            flag: str | None = None, **cli) -> Any:
    """A ``TrainConfig`` field: ``help`` puts it on the command line (``--name``, or ``flag``);
    ``check``/``choices`` are enforced by both; ``cli`` holds extra argparse keywords."""
    metadata = {"help": help, "check": check, "choices": choices, "flag": flag, "cli": cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything that decides a fine-tuning run. Defaults follow the published GLUE setup (lr 3e-4,
    linear schedule, 6% warm-up, AdamW weight decay 0.01, r = alpha = 8, dropout 0, query/value)."""

    # PEFT's own initializations (peft:NAME) are for the API and `inilora bench`, not on the command line
    method: str = setting("inilora", "initialization (full: full fine-tuning, no adapter)",
                          choices=(*METHODS, *REFERENCES, *PEERS), cli_choices=(*METHODS, FULL))
    r: int = setting(8, "LoRA rank", check=POSITIVE_INT)
    alpha: float = setting(8.0, "lora_alpha", check=POSITIVE)
    dropout: float = setting(0.0, "lora_dropout", check=FRACTION)
    targets: list[str] | None = setting(None, "target modules, comma-separated (default: the model's "
                                        "query/value projections)", csv=True)
    solver: str | None = setting(None, "inilora's fit: adam (the default: published, 20,000 steps) or svd (its "
                                 "closed-form optimum); `inilora bench` names the two inilora:adam and inilora:svd. "
                                 "Refused for a method without a fit", choices=(None, *SOLVERS), cli_choices=SOLVERS)
    fit_steps: int | None = setting(None, "Adam fit steps (default: the published 20,000)", check=POSITIVE_INT)
    revision: str | None = setting(None, "the hub model's revision (branch, tag or commit) when --model is "
                                   "org/name", group=None)
    dtype: str = setting("float32", "dtype the base model loads in", choices=tuple(DTYPES), group=None)
    quantize: str | None = setting(None, "store each target's residual in 4 bits (bitsandbytes; the factors come "
                                   "from the full-precision weight): QLoRA with --method lora", choices=QUANT_TYPES,
                                   cli_choices=tuple(q for q in QUANT_TYPES if q))
    seed: int = setting(0, "seed of the factors, the head, the data order", group="training")
    lr: float = setting(3e-4, "learning rate", check=POSITIVE, group="training")
    epochs: float = setting(1.0, "epochs", check=POSITIVE, group="training")
    max_steps: int = setting(-1, "optimizer steps (overrides --epochs)", check=POSITIVE_INT, group="training",
                             unset=-1)
    batch_size: int = setting(16, "per-device batch size", check=POSITIVE_INT, group="training")
    grad_accum: int = setting(1, "gradient accumulation steps", check=POSITIVE_INT, group="training")
    max_len: int = setting(128, "max tokens per example (at least 8)",
                           check=AT_LEAST_8, group="training")
    warmup_ratio: float = setting(0.06, "warm-up fraction", check=FRACTION, group="training")
    scheduler: str = setting("linear", "learning-rate schedule", choices=SCHEDULERS, group="training")
    weight_decay: float = setting(0.01, "AdamW weight decay", group="training")
    eval_batch_size: int = setting(32, check=POSITIVE_INT)
    max_new_tokens: int | None = setting(None)  # greedy decoding; None: longest held-out answer + 8 tokens
    logging_steps: int = setting(5, check=POSITIVE_INT)
    save_steps: int = setting(0, "keep a Trainer checkpoint every N steps", check=POSITIVE_INT, group="training",
                              unset=0)
    bf16: bool = setting(False, "bf16 mixed precision", group="training")
    threads: int | None = setting(None, "torch threads", check=POSITIVE_INT, group="training")
    progress: bool = setting(True, "no progress bars", flag="--quiet", group=None)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta["choices"] and value not in meta["choices"]:
                raise ValueError(f"Unknown {f.name} {value!r}; choose one of {', '.join(meta['choices'])}.")
            unset = (None, meta["cli"].get("unset"))
            skip = value in unset or (f.name == "epochs" and self.max_steps > 0)  # max_steps overrides epochs
            if meta["check"] and not skip and not meta["check"].accept(value):
                raise ValueError(f"{f.name} must be {meta['check'].rule}, got {value!r}.")
        if not has_fit(self.method):
            for name in FIT_SETTINGS:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}={getattr(self, name)!r} sets inilora's fit; method {self.method!r} has "
                                     "no fit, so it would be ignored (drop it, or use --method inilora).")
        if self.quantize and self.method in REFERENCES:
            raise ValueError(f"quantize={self.quantize!r} stores an adapter's frozen residual in 4 bits; method "
                             f"{self.method!r} has no adapter (use --method lora for QLoRA).")

    @classmethod
    def from_saved(cls, saved: dict) -> "TrainConfig":
        """A config as a run folder recorded it. Folders written before the solver was refused for methods
        without a fit hold ``solver: "adam"`` for every method: it meant nothing there and is dropped."""
        saved = dict(saved)
        if not has_fit(saved.get("method", cls.method)):
            for name in FIT_SETTINGS:
                saved.pop(name, None)
        return cls(**saved)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("progress", "threads")}


@dataclass
class RunResult:
    metrics: dict
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    train_seconds: float = 0.0
    trainable_params: int = 0
    init: dict = field(default_factory=dict)  # initialization summary: max drift, digest of the factors
    trained_digest: str = ""  # a hash of the trainable parameters after training
    validation: dict = field(default_factory=dict)  # {metric, loss, n} on the validation split, at the end
    val_curve: list[tuple[int, float, float | None]] = field(default_factory=list)  # (step, loss, accuracy)
    predictions: list = field(default_factory=list)  # per held-out example: class index or generated answer

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

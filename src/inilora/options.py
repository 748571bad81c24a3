"""The options of an initialization, defined once: ``InitOptions`` with a small frozen sub-config per
solver, validated on construction, mapped from the flat keywords of ``get_peft_model`` in one place
and recorded with the adapter."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .errors import InitError, UnknownOptionError

# the registered methods' names (inilora.methods.REGISTRY: a test keeps the two alike)
MethodName = Literal["lora", "pissa", "milora", "inilora", "inilora-alpha", "inilora-beta"]
SOLVERS = ("adam", "svd", "svd_randomized")
SVD_BASES = ("adam-like", "singular")
QUANT_TYPES = (None, "nf4", "fp4")
RUNTIME_ONLY = ("progress", "cache", "cache_dir", "chunk_mb", "shard_fit")  # do not change the factors; not recorded


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise InitError(f"Option {name} must be {allowed}, got {value!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_ints(config, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        _require(_is_int(value) and value > 0, config.PREFIX + name, value, "a positive integer")


@dataclass(frozen=True)
class AdamSchedule:
    """The published fit's schedule: Adam, lr 5e-4, 20,000 steps, learning rate × 0.9 every 5,000
    steps; the early stop (opt-in) ends when the loss improves by less than ``early_stop_tol``
    (relative) over ``early_stop_every`` steps."""

    PREFIX: ClassVar[str] = ""  # its flat keywords: steps=, lr=, ...

    steps: int = 20_000
    lr: float = 5e-4
    lr_decay: float = 0.9
    lr_decay_every: int = 5_000
    early_stop_tol: float | None = None
    early_stop_every: int = 500

    def __post_init__(self) -> None:
        _check_positive_ints(self, ("steps", "lr_decay_every", "early_stop_every"))
        _require(isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr), "lr", self.lr,
                 "a positive number")
        _require(isinstance(self.lr_decay, (int, float)) and 0 < self.lr_decay <= 1, "lr_decay", self.lr_decay,
                 "in (0, 1]")
        if self.early_stop_tol is not None:
            _require(isinstance(self.early_stop_tol, (int, float)) and 0 <= self.early_stop_tol < 1,
                     "early_stop_tol", self.early_stop_tol, "None or a relative improvement in [0, 1)")
            _require(self.early_stop_every <= self.steps, "early_stop_every", self.early_stop_every,
                     f"at most steps={self.steps} (the loss is checked every early_stop_every steps)")


@dataclass(frozen=True)
class RandomizedSVD:
    """The randomized solver ``solver="svd_randomized"``: block Krylov with blocks of ``min(r, block)`` columns
    from a per-layer seeded start, each layer grown until its error is estimated within 5e-5 × the optimum, or
    for at most ``niter`` blocks after the first (fit.krylov_triplets). Blocks of 16 columns: CPU GEMM kernels run
    16-wide products about as fast as narrower ones, and a narrower block stops closer to the needed space."""

    PREFIX: ClassVar[str] = "randomized_"  # its flat keywords: randomized_block=, randomized_niter=

    block: int = 16
    niter: int = 60

    def __post_init__(self) -> None:
        _check_positive_ints(self, ("block", "niter"))


SUB_CONFIGS = {"adam": AdamSchedule, "randomized": RandomizedSVD}  # InitOptions field -> its class
SOLVER_SETTINGS = {"adam": "adam", "svd_randomized": "randomized"}  # solver -> the sub-config it reads
# flat keyword -> (sub-config field, its field): steps -> (adam, steps), randomized_niter -> (randomized, niter)
FLAT = {cls.PREFIX + f.name: (sub, f.name) for sub, cls in SUB_CONFIGS.items() for f in dataclasses.fields(cls)}
# options that only the IniLoRA fit reads: refused when given for a method without a fit
FIT_OPTIONS = frozenset({"solver", "fit_scaled", "svd_basis", *SUB_CONFIGS, *FLAT})


@dataclass(frozen=True)
class InitOptions:
    """Everything besides the ``LoraConfig`` that decides the initial factors.

    Defaults reproduce the published IniLoRA procedure (docs/methods.md): Adam, lr 5e-4, 20,000 steps,
    learning rate × 0.9 every 5,000 steps, factors drawn with the per-module σ rule.
    """

    method: MethodName = "inilora"
    seed: int = 0
    # IniLoRA fit
    solver: str = "adam"
    adam: AdamSchedule = field(default_factory=AdamSchedule)
    fit_scaled: bool = True  # fit s·B0·A0 ≈ W; False: fit B0·A0 ≈ W as published (same when s = 1)
    # how the closed-form optimum is factored: "adam-like" (as the published Adam fit ends: a seeded random
    # basis, entries of equal RMS size in both factors) or "singular" (PiSSA's: singular basis, √S each side)
    svd_basis: str = "adam-like"
    randomized: RandomizedSVD = field(default_factory=RandomizedSVD)
    chunk_mb: float | None = None  # fp32 weight copies per fit batch; None: 5% of the model, at most 256 MiB
    cache: bool = True  # reuse fitted factors from the disk cache (inilora only)
    shard_fit: bool = True  # under torch.distributed, split the fit over ranks (same factors, less time)
    # residual
    residual_fp32: bool = False  # keep the frozen residual in fp32 even when the base is bf16/fp16
    drift_warn_threshold: float = 1e-2  # warn when a layer's relative weight drift exceeds this
    # quantized residual (bitsandbytes 4-bit): "nf4" or "fp4"; None keeps full precision (a 4-bit model stays 4-bit)
    quantize: str | None = None
    quant_double: bool = True  # double quantization of the 4-bit block scales (QLoRA's recipe)
    quant_iters: int = 0  # LoftQ-style refits of the factors to W − deq(Q(W − s·B0·A0)) (pissa, inilora)
    # user experience
    progress: bool = True
    cache_dir: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _require(isinstance(self.method, str), "method", self.method, "a registered method's name")
        _require(self.solver in SOLVERS, "solver", self.solver, f"one of {', '.join(SOLVERS)} (lower-case)")
        _require(self.svd_basis in SVD_BASES, "svd_basis", self.svd_basis, f"one of {', '.join(SVD_BASES)}")
        for name, cls in SUB_CONFIGS.items():
            value = getattr(self, name)
            _require(isinstance(value, cls), name, value, f"a {cls.__name__}")
        _require(_is_int(self.seed), "seed", self.seed, "an int")
        if self.chunk_mb is not None:  # None: sized from the model
            _require(isinstance(self.chunk_mb, (int, float)) and self.chunk_mb > 0, "chunk_mb", self.chunk_mb,
                     "None or a positive number of MiB")
        _require(isinstance(self.drift_warn_threshold, (int, float)) and self.drift_warn_threshold >= 0,
                 "drift_warn_threshold", self.drift_warn_threshold, "a non-negative number")
        _require(self.quantize in QUANT_TYPES, "quantize", self.quantize, "None, 'nf4' or 'fp4'")
        _require(_is_int(self.quant_iters) and self.quant_iters >= 0, "quant_iters", self.quant_iters,
                 "a non-negative int")
        _require(not self.quant_iters or self.quantize is not None, "quant_iters", self.quant_iters,
                 "0 unless quantize='nf4' or 'fp4' is set (it refines a quantized residual)")

    @classmethod
    def from_kwargs(cls, method: str, options: dict) -> "InitOptions":
        """The options of ``get_peft_model(model, config, method, **options)``: flat keywords
        (``steps=``, ``randomized_niter=``) or sub-configs (``adam=AdamSchedule(...)``). The method's name is
        checked where it is resolved (:func:`inilora.methods.resolve`), which also refuses the fit's options
        for a method without a fit."""
        cls.check_keywords(options)
        return cls.from_record({"method": method, **options})

    @classmethod
    def check_keywords(cls, options: dict) -> None:
        """Refuse a keyword that is no option (:class:`UnknownOptionError`); the values are checked later."""
        if "method" in options:
            raise UnknownOptionError("Option method is get_peft_model's third argument, not an option.")
        cls._check_known(options)

    @classmethod
    def from_record(cls, record: dict) -> "InitOptions":
        """Options from flat keywords (as :meth:`to_dict` writes them, or as a user passes them)."""
        cls._check_known(record)
        direct = {k: v for k, v in record.items() if k not in FLAT}
        for name in SUB_CONFIGS:
            flat = {field_name: record[key] for key, (sub, field_name) in FLAT.items() if sub == name and key in record}
            if flat:
                base = direct.get(name, SUB_CONFIGS[name]())
                _require(isinstance(base, SUB_CONFIGS[name]), name, base, f"a {SUB_CONFIGS[name].__name__}")
                direct[name] = dataclasses.replace(base, **flat)
        return cls(**direct)

    @classmethod
    def _check_known(cls, options: dict) -> None:
        known = {f.name for f in dataclasses.fields(cls)} - {"method"} | set(FLAT)
        unknown = sorted(set(options) - known - {"method"})
        if unknown:
            raise UnknownOptionError(f"Unknown option(s) {', '.join(unknown)}; known options: "
                                     f"{', '.join(sorted(known))}.")

    def solver_settings(self) -> dict:
        """The chosen solver's own settings, as a flat dict (the fit cache key hashes it)."""
        name = SOLVER_SETTINGS.get(self.solver)
        return dataclasses.asdict(getattr(self, name)) if name else {}

    def to_dict(self) -> dict:
        """The recorded options: flat keywords, every one that decides the factors."""
        record = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SUB_CONFIGS:
                record.update({value.PREFIX + k: v for k, v in dataclasses.asdict(value).items()})
            elif f.name not in RUNTIME_ONLY:
                record[f.name] = value
        return record

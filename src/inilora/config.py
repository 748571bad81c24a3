"""The options of an initialization, validated once and recorded with the adapter."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .methods import METHODS

SOLVERS = ("adam", "svd", "svd_randomized")
SVD_BASES = ("adam-like", "singular")
RUNTIME_ONLY = ("progress", "cache", "cache_dir", "chunk_mb")  # do not change the factors; not recorded


@dataclass(frozen=True)
class InitOptions:
    """Everything besides the ``LoraConfig`` that decides the initial factors.

    Defaults reproduce the published IniLoRA procedure (SPEC.md): Adam, lr 5e-4, 20,000 steps,
    learning rate × 0.9 every 5,000 steps, factors drawn with the per-module σ rule.
    """

    method: str = "inilora"
    seed: int = 0
    # IniLoRA fit
    solver: str = "adam"
    steps: int = 20_000
    lr: float = 5e-4
    lr_decay: float = 0.9
    lr_decay_every: int = 5_000
    fit_scaled: bool = True  # fit s·B0·A0 ≈ W; False: fit B0·A0 ≈ W as published (same when s = 1)
    early_stop_tol: float | None = None  # opt-in: stop when the loss improves by less than this (relative)
    early_stop_every: int = 500
    # how the closed-form optimum is factored: "adam-like" (as the published Adam fit ends: a seeded random
    # basis, entries of equal RMS size in both factors) or "singular" (PiSSA's: singular basis, √S each side)
    svd_basis: str = "adam-like"
    randomized_oversample: int = 64  # measured: within 1e-5 of the optimum on MiniLM/SmolLM2 q/v, r 8 and 32
    randomized_niter: int = 6
    chunk_mb: float | None = None  # fp32 weight copies per fit batch; None: 5% of the model, at most 256 MiB
    cache: bool = True  # reuse fitted factors from the disk cache (inilora only)
    # residual
    residual_fp32: bool = False  # keep the frozen residual in fp32 even when the base is bf16/fp16
    drift_warn_threshold: float = 1e-2  # warn when a layer's relative weight drift exceeds this
    # user experience
    progress: bool = True
    cache_dir: str | None = field(default=None, compare=False)
    # quantized residual (bitsandbytes 4-bit): "nf4" or "fp4"; None keeps full precision (a 4-bit model stays 4-bit)
    quantize: str | None = None
    quant_double: bool = True  # double quantization of the 4-bit block scales (QLoRA's recipe)
    quant_iters: int = 0  # LoftQ-style refits of the factors to W − deq(Q(W − s·B0·A0)) (pissa, inilora)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if self.solver not in SOLVERS:
            raise ValueError(f"Unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}.")
        if self.svd_basis not in SVD_BASES:
            raise ValueError(f"Unknown svd_basis {self.svd_basis!r}; choose one of {', '.join(SVD_BASES)}.")
        positive = {"steps": self.steps, "lr": self.lr, "lr_decay_every": self.lr_decay_every,
                    "early_stop_every": self.early_stop_every}
        if self.chunk_mb is not None:  # None: sized from the model
            positive["chunk_mb"] = self.chunk_mb
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"Option {name} must be positive, got {value!r}.")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"Option lr_decay must be in (0, 1], got {self.lr_decay!r}.")
        if self.quantize not in (None, "nf4", "fp4"):
            raise ValueError(f"Unknown quantize {self.quantize!r}; choose nf4, fp4 or None.")
        if not isinstance(self.quant_iters, int) or self.quant_iters < 0:
            raise ValueError(f"Option quant_iters must be a non-negative int, got {self.quant_iters!r}.")
        if self.quant_iters and self.quantize is None:
            raise ValueError("Option quant_iters refines a quantized residual; set quantize='nf4' or 'fp4' too.")
        if not isinstance(self.seed, int):
            raise ValueError(f"Option seed must be an int, got {self.seed!r}.")

    @classmethod
    def from_kwargs(cls, method: str, options: dict) -> "InitOptions":
        known = {f.name for f in dataclasses.fields(cls)} - {"method"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"Unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}.")
        return cls(method=method, **options)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_ONLY}

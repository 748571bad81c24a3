"""One :class:`Method` per initialization, in one registry: every other module asks the object
(residual? rank-limited? which solvers?), never compares the name. Adding a method is one entry."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..errors import InitError
from .base import Factors, Method, MethodName, Target, layer_generator
from .inilora import INILORA
from .random import INILORA_ALPHA, INILORA_BETA, LORA
from .svd import MILORA, PISSA

if TYPE_CHECKING:
    from ..cache import FitCache
    from ..options import InitOptions

REGISTRY: dict[str, Method] = {m.name: m for m in (LORA, PISSA, MILORA, INILORA, INILORA_ALPHA, INILORA_BETA)}
METHODS: tuple[MethodName, ...] = tuple(REGISTRY)

__all__ = ["METHODS", "REGISTRY", "Factors", "Method", "MethodName", "Target", "compute_factors", "get_method",
           "layer_generator"]


def get_method(name: str) -> Method:
    """The registered method called ``name``; :class:`InitError` naming the allowed values otherwise."""
    method = REGISTRY.get(name) if isinstance(name, str) else None
    if method is None:
        raise InitError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    return method


def compute_factors(targets: list[Target], options: InitOptions, model_bytes: int | None = None,
                    cache: FitCache | None = None, bar: tqdm | None = None) -> dict[str, Factors]:
    """Initial factors (fp32, on each weight's device) for every target, in the targets' order; a fit
    reuses and fills ``cache`` when one is given. ``bar``: the caller's progress bar (default: a new one)."""
    own = bar is None
    if own:
        bar = tqdm(total=len(targets), desc=f"{options.method} init", unit="matrix", disable=not options.progress)
    with torch.no_grad(), bar if own else contextlib.nullcontext():
        result = get_method(options.method).compute(targets, options, bar, model_bytes, cache)
    return {t.name: result[t.name] for t in targets}

"""One :class:`Method` per initialization, in one registry: every other module asks the object
(residual? rank-limited? which solvers?), never compares the name. Adding a method is one entry."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..errors import InitError
from ..options import FIT_OPTIONS, InitOptions, MethodName
from .base import Factors, Method, Target, layer_generator
from .inilora import INILORA
from .random import INILORA_ALPHA, INILORA_BETA, LORA
from .svd import MILORA, PISSA

if TYPE_CHECKING:
    from ..cache import FitCache

REGISTRY: dict[str, Method] = {m.name: m for m in (LORA, PISSA, MILORA, INILORA, INILORA_ALPHA, INILORA_BETA)}
METHODS: tuple[MethodName, ...] = tuple(REGISTRY)

__all__ = ["METHODS", "REGISTRY", "Factors", "Method", "MethodName", "Target", "compute_factors", "get_method",
           "layer_generator", "resolve"]


def get_method(name: str) -> Method:
    """The registered method called ``name``; :class:`InitError` naming the allowed values otherwise."""
    method = REGISTRY.get(name) if isinstance(name, str) else None
    if method is None:
        raise InitError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    return method


def resolve(method: str | None, init_options: InitOptions | None, options: dict) -> tuple[Method, InitOptions]:
    """The :class:`Method` and one ``InitOptions``, from either ``init_options=`` or keyword options, never
    both: the method is looked up here, once, and passed on as the object. The fit's options are refused
    for a method without a fit (they would be ignored)."""
    if init_options is None:
        InitOptions.check_keywords(options)
    elif not isinstance(init_options, InitOptions):
        raise InitError(f"init_options must be an inilora.InitOptions, got {type(init_options).__name__}.")
    elif options:
        raise InitError(f"Pass the options either as init_options=InitOptions(...) or as keywords, not both "
                        f"(got init_options and {', '.join(sorted(options))}).")
    elif method is not None and method != init_options.method:
        raise InitError(f"method={method!r} contradicts init_options.method={init_options.method!r}; "
                        "set the method in one place.")
    spec = get_method(method or "inilora" if init_options is None else init_options.method)
    if init_options is None:
        ignored = sorted(set(options) & FIT_OPTIONS)
        if ignored and not spec.has_fit:
            with_fit = [m.name for m in REGISTRY.values() if m.has_fit]
            raise InitError(f"Option(s) {', '.join(ignored)} configure the IniLoRA fit, which method {spec.name!r} "
                            f"does not run, so they would be ignored; drop them or use a method with a fit "
                            f"({', '.join(with_fit)}).")
        init_options = InitOptions.from_record({"method": spec.name, **options})
    return spec, init_options


def compute_factors(method: Method, targets: list[Target], options: InitOptions, model_bytes: int | None = None,
                    cache: FitCache | None = None, bar: tqdm | None = None) -> dict[str, Factors]:
    """``method``'s initial factors (fp32, on each weight's device) for every target, in the targets' order; a fit
    reuses and fills ``cache`` when one is given. ``bar``: the caller's progress bar (default: a new one)."""
    own = bar is None
    if own:
        bar = tqdm(total=len(targets), desc=f"{method.name} init", unit="matrix", disable=not options.progress)
    with torch.no_grad(), bar if own else contextlib.nullcontext():
        result = method.compute(targets, options, bar, model_bytes, cache)
    return {t.name: result[t.name] for t in targets}

"""``get_peft_model``: find the target layers, compute each method's initial factors, then let PEFT
wrap the layers and install the factors and the fp32-computed residual. Everything that can fail on
bad input is checked before the model is touched."""

from __future__ import annotations

import logging
import time
import warnings
from functools import partial

import peft
import torch
from peft import LoraConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from . import zero3
from .cache import FitCache
from .errors import InitError
from .memory import release_freed_memory
from .methods import METHODS, Factors, Method, compute_factors, get_method
from .options import InitOptions
from .peft_glue import collect_targets, lora_layers, mark_residual, resolve_config, set_residual, weight_view
from .quantize import QuantizedTargets, needs_quantization, quantize_targets
from .report import InitReport, LayerReport
from .state import InitState, LayerState, fingerprint

logger = logging.getLogger("inilora")


class InitDriftWarning(UserWarning):
    """The initialized model differs from the base by more than the stated threshold (rounding of a
    low-precision residual); ``residual_fp32=True`` removes it."""


def install_layer(layer: BaseTunerLayer, adapter_name: str, name: str, A0: torch.Tensor, B0: torch.Tensor,
                  method: Method, keep_fp32: bool, optimum: float | None,
                  quantized: QuantizedTargets | None = None, nonzero: bool | None = None) -> LayerReport:
    """Subtract ``s·B0·A0`` (factors as stored, product in fp32) from the base weight of one layer and
    measure what that did. The adapter's own A/B are not touched. A 4-bit residual was installed before
    PEFT wrapped the layer (``quantized``): only its report is made here. ``nonzero``: the weight is known to
    have a non-zero entry (plain LoRA's error, ‖W − 0‖/‖W‖, is then 1 without reading the weight again)."""
    base = layer.get_base_layer()
    s = layer.scaling[adapter_name]
    if quantized is not None:
        mark_residual(layer, method.name)
        return quantized.records[name].report(name, (B0.shape[0], A0.shape[1]), A0.shape[0], s, optimum)
    if not method.residual and not B0.any():  # plain LoRA: a zero product, the weight untouched: nothing moved
        weight = weight_view(base).detach()
        return LayerReport(name, tuple(weight.shape), layer.r[adapter_name], s, float(bool(nonzero or weight.any())),
                           optimum, 0.0, 0.0)
    W = weight_view(base).detach().to(torch.float32, copy=True)  # the original, kept while the weight is overwritten
    product = s * (B0.to(W.device).float() @ A0.to(W.device).float())
    norm = float(torch.linalg.matrix_norm(W)) or 1.0
    difference = W - product
    init_error = float(torch.linalg.matrix_norm(difference)) / norm
    if method.residual:
        set_residual(layer, difference, method.name, keep_fp32)
    # drift: what the layer now holds, plus the product, against the original
    torch.add(weight_view(base).detach().float(), product, out=difference).sub_(W)
    report = LayerReport(name, tuple(W.shape), layer.r[adapter_name], s, init_error, optimum,
                         float(torch.linalg.matrix_norm(difference)) / norm, float(difference.abs().max()))
    del W, product, difference
    release_freed_memory()
    return report


def _unchanged_fingerprint(layer: BaseTunerLayer, name: str) -> str:
    """The fingerprint of a base weight the initialization did not change, taken when a save needs it."""
    if layer.merged:
        raise InitError(f"Layer {name!r} has its adapter merged into the base weight, so the original weight's "
                        "fingerprint cannot be taken from it; unmerge before saving.")
    return fingerprint(weight_view(layer.get_base_layer()))


def _wrapped_layer_names(peft_model: PeftModel, adapter_name: str) -> set[str]:
    """The layers PEFT wrapped: the names it records as targeted (a fresh model holds one adapter; each is
    checked to be a LoRA layer by :func:`lora_layers`), else a walk over the modules."""
    targeted = getattr(peft_model.base_model, "targeted_module_names", None)
    if targeted and len(peft_model.peft_config) == 1:
        return set(targeted)
    return {name for name, module in peft_model.base_model.model.named_modules()
            if isinstance(module, BaseTunerLayer) and adapter_name in getattr(module, "lora_A", {})}


def warn_on_drift(report: InitReport) -> None:
    drifting = report.drifting_layers()
    if drifting:
        worst = max(drifting, key=lambda layer: layer.drift)
        warnings.warn(
            f"{report.method}: {len(drifting)} layer(s) drift from the base model by more than "
            f"{report.drift_warn_threshold:g} (relative Frobenius norm; worst {worst.name!r}: {worst.drift:.3g}). "
            "The residual lost precision in the model's dtype; pass residual_fp32=True to keep it in fp32.",
            InitDriftWarning, stacklevel=3)


def new_report(options: InitOptions) -> InitReport:
    """An empty report for ``options``; the fit columns are shown for the methods defined through the
    SVD optimum, the only ones whose factors approximate ``W``."""
    method = get_method(options.method)
    return InitReport(options.method, options.drift_warn_threshold, solver=options.solver if method.has_fit else None,
                      approximates_weight=method.rank_limited)


def resolve_options(method: str | None, init_options: InitOptions | None, options: dict) -> InitOptions:
    """One ``InitOptions`` from either ``init_options=`` or keyword options, never both."""
    if init_options is None:
        return InitOptions.from_kwargs(method or "inilora", options)
    if not isinstance(init_options, InitOptions):
        raise InitError(f"init_options must be an inilora.InitOptions, got {type(init_options).__name__}.")
    if options:
        raise InitError(f"Pass the options either as init_options=InitOptions(...) or as keywords, not both "
                        f"(got init_options and {', '.join(sorted(options))}).")
    if method is not None and method != init_options.method:
        raise InitError(f"method={method!r} contradicts init_options.method={init_options.method!r}; "
                        "set the method in one place.")
    return init_options


def get_peft_model(model: nn.Module, lora_config: LoraConfig, adapter_name: str = "default", *,
                   method: str | None = None, init_options: InitOptions | None = None, **options) -> PeftModel:
    """Wrap ``model`` with PEFT LoRA layers initialized by ``method`` (default ``"inilora"``).

    The positional arguments are ``peft.get_peft_model``'s: ``(model, config, adapter_name)``.
    ``method`` is one of ``lora``, ``pissa``, ``milora``, ``inilora``, ``inilora-alpha``,
    ``inilora-beta``. Options (see :class:`inilora.InitOptions`), either as keywords or as one
    ``init_options=InitOptions(...)``: ``seed``; for ``inilora`` ``solver`` (``"adam"``, the
    published procedure, or ``"svd"``, its closed-form optimum), ``steps``, ``lr``, ``fit_scaled``;
    ``residual_fp32``; ``progress``; ``quantize="nf4"``/``"fp4"`` (needs bitsandbytes): the factors
    come from the full-precision ``W`` and the residual is stored as a 4-bit ``Linear4bit`` that PEFT
    wraps with its bnb LoRA layer (``quant_double``, ``quant_iters`` for LoftQ-style refits). Targets
    that are already 4-bit are dequantized, fitted and re-quantized as they were.

    Residual methods replace each target's base weight by ``W − s·B0·A0`` (computed in fp32 from the
    factors as stored), so the returned model computes what ``model`` computed. ``model`` is modified
    in place, as with ``peft.get_peft_model``; on any error it is left untouched. The per-layer
    :class:`~inilora.InitReport` is at ``peft_model.inilora.report``. A model partitioned by DeepSpeed
    ZeRO-3 is initialized one gathered weight at a time, on every rank (:mod:`inilora.zero3`).
    """
    start = time.perf_counter()
    if method is None and init_options is None and adapter_name in METHODS:
        warnings.warn(f"get_peft_model(model, config, {adapter_name!r}): the third positional argument is "
                      f"adapter_name, as in PEFT; it is taken as method={adapter_name!r} for now, and will be "
                      f"an adapter name in a later release. Pass method={adapter_name!r}.",
                      FutureWarning, stacklevel=2)
        method, adapter_name = adapter_name, "default"
    opts = resolve_options(method, init_options, options)
    method = opts.method
    spec = get_method(method)
    config = resolve_config(lora_config, model)
    # a weight the initialization leaves as it was (plain LoRA, not quantized) is fingerprinted when a save asks
    deferred = not spec.residual and opts.quantize is None
    targets = collect_targets(model, config, method, rank_limited=spec.rank_limited, residual=spec.residual,
                              gather_partitioned=True, fingerprints=not deferred)
    fingerprints = {t.name: t.fingerprint for t in targets}
    dtypes = {t.name: t.weight.dtype for t in targets}
    nonzero = {t.name: t.nonzero for t in targets}
    partitioned = zero3.partitioned_names(model, targets)
    if partitioned:
        zero3.refuse_unsupported(partitioned, opts, targets)
    # what sizes the fit's chunks (a method without a fit does not read it)
    model_bytes = (sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in model.parameters())
                   if spec.has_fit else None)
    cache = FitCache(opts.cache_dir) if opts.cache else None
    factors: dict[str, Factors] = (zero3.factors_one_at_a_time(model, targets, opts, cache) if partitioned
                                   else compute_factors(targets, opts, model_bytes, cache))

    # the model changes from here on (4-bit residual layers swapped in first: PEFT wraps them with its bnb layers)
    quantized = quantize_targets(model, targets, factors, opts) if needs_quantization(targets, opts) else None
    del targets  # dequantized copies of 4-bit weights are freed here
    try:
        peft_model = peft.get_peft_model(model, config, adapter_name=adapter_name)
    except Exception:
        if quantized:
            quantized.restore()
        raise
    wrapped = _wrapped_layer_names(peft_model, adapter_name)
    if wrapped != set(fingerprints):
        peft_model.unload()
        if quantized:
            quantized.restore()
        raise InitError(f"PEFT wrapped {sorted(wrapped ^ set(fingerprints))} differently from inilora's target "
                        "matching; this is a bug in inilora, please report it with your LoraConfig.")
    state = InitState(opts, adapter_name, report=new_report(opts))
    if quantized:
        factors = quantized.factors  # refitted when quant_iters > 0
    with torch.no_grad():
        for name, layer in lora_layers(peft_model, list(fingerprints)).items():
            lora_A, lora_B = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
            lora_A.copy_(factors[name].A0)
            lora_B.copy_(factors[name].B0)
            A0, B0 = lora_A.detach().cpu().clone(), lora_B.detach().cpu().clone()
            with zero3.gathered(layer.get_base_layer(), modify=True):  # a ZeRO-3 weight: alone, rank 0's write kept
                state.report.layers.append(install_layer(layer, adapter_name, name, A0, B0, spec,
                                                         opts.residual_fp32, factors[name].optimum, quantized,
                                                         nonzero[name]))
            state.report.layers[-1].fitted_by_rank = factors[name].fitted_by_rank
            state.layers[name] = LayerState(A0, B0, layer.scaling[adapter_name], fingerprints[name] or None,
                                            dtypes[name], opts.residual_fp32, partial(_unchanged_fingerprint, layer, name))
    state.report.seconds = time.perf_counter() - start
    state.report.cache_hits = cache.hits if cache is not None and state.report.solver is not None else None
    from .persistence import attach  # persistence imports this module

    attach(peft_model, state)
    logger.info("%s", state.report)
    warn_on_drift(state.report)
    return peft_model

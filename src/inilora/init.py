"""``get_peft_model``: find the target layers, compute each method's initial factors, then let PEFT
wrap the layers and install the factors and the fp32-computed residual. Everything that can fail on
bad input is checked before the model is touched."""

from __future__ import annotations

import logging
import time
import warnings

import peft
import torch
from peft import LoraConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from . import zero3
from .cache import FitCache
from .errors import InitError
from .memory import release_freed_memory
from .methods import METHODS, Factors, Method, compute_factors, resolve
from .options import InitOptions
from . import layouts
from .peft_glue import (collect_targets, layer_fingerprint, layer_keys, layer_layout, layer_matrices, lora_layers,
                        mark_residual, resolve_config, set_residual)
from .quantize import QuantizedTargets, needs_quantization, quantize_targets
from .report import InitReport, LayerReport
from .state import RELOAD_DTYPES, InitState, LayerState, dtype_name

logger = logging.getLogger("inilora")


class InitDriftWarning(UserWarning):
    """The initialized model differs from the base by more than the stated threshold (rounding of a
    low-precision residual); ``residual_fp32=True`` removes it."""


def install_layer(layer: BaseTunerLayer, adapter_name: str, name: str, A0: torch.Tensor, B0: torch.Tensor,
                  method: Method, keep_fp32: bool, optimum: float | None,
                  quantized: QuantizedTargets | None = None) -> LayerReport:
    """Subtract ``s·B0·A0`` (factors as stored, in PEFT's layout; product in fp32) from the base weight of one
    layer and measure what that did. The adapter's own A/B are not touched. A 4-bit residual was installed
    before PEFT wrapped the layer (``quantized``): only its report is made here. A layer of several matrices
    (experts) reports its worst one."""
    s = layer.scaling[adapter_name]
    layout = layer_layout(layer)
    A0s, B0s = layouts.split(A0, B0, layout)
    r = layer.r[adapter_name]
    if quantized is not None:
        mark_residual(layer, method)
        return quantized.records[name].report(name, (B0.shape[0], A0.shape[1]), A0.shape[0], s, optimum)
    if not method.residual and not B0.any():  # plain LoRA: a zero product, the weight untouched: nothing moved
        weight = layer_matrices(layer).detach()
        return LayerReport(name, tuple(weight.shape[1:]), r, s, float(bool(weight.any())), optimum, 0.0, 0.0)
    W = layer_matrices(layer).detach().to(torch.float32, copy=True)  # the original, kept while the weight is overwritten
    product = layouts.product(A0s.to(W.device), B0s.to(W.device), s)
    norm = torch.linalg.matrix_norm(W)
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    difference = W - product
    init_error = float((torch.linalg.matrix_norm(difference) / norm).max())
    if method.residual:
        set_residual(layer, difference, method, keep_fp32)
    # drift: what the layer now holds, plus the product, against the original
    torch.add(layer_matrices(layer).detach().float(), product, out=difference).sub_(W)
    report = LayerReport(name, tuple(W.shape[1:]), r, s, init_error, optimum,
                         float((torch.linalg.matrix_norm(difference) / norm).max()), float(difference.abs().max()))
    del W, product, difference
    release_freed_memory()
    return report


def init_dora_magnitude(layer: BaseTunerLayer, adapter_name: str, config: LoraConfig) -> None:
    """PEFT's DoRA magnitude, computed again now that the layer holds its residual and initial factors:
    the row norms of ``W_res + s·B0·A0`` (= ``W``; for a 4-bit residual, what the layer computes), so the
    initialized DoRA layer computes what the base layer did. PEFT computed it while wrapping, from ``W``
    and its own ``B = 0``, before the residual existed."""
    variant = getattr(layer, "lora_variant", {}).get(adapter_name)
    if variant is not None and adapter_name in getattr(layer, "lora_magnitude_vector", {}):
        variant.init(layer, adapter_name=adapter_name, config=config)


def _wrapped_layer_names(peft_model: PeftModel, adapter_name: str) -> set[str]:
    from .peft_glue import layer_key

    return {layer_key(name, module) for name, module in peft_model.base_model.model.named_modules()
            if isinstance(module, BaseTunerLayer) and (adapter_name in getattr(module, "lora_A", {})
                                                       or adapter_name in getattr(module, "lora_embedding_A", {}))}


def _refuse_for_layouts(targets, opts: InitOptions) -> None:
    """What only nn.Linear / Conv1D targets support, refused before the fit."""
    for t in targets:
        kind = t.layout.kind if t.layout is not None else "linear"
        if opts.quantize is not None and kind not in ("linear", "conv1d_t"):
            raise InitError(f"Layer {t.layer or t.name!r} ({kind}): quantize={opts.quantize!r} makes a bitsandbytes "
                            "Linear4bit residual, which exists only for nn.Linear layers (PEFT's 4-bit LoRA layers "
                            "are linear too). Target only linear layers, or pass quantize=None.")
        if opts.residual_fp32 and kind == "param" and t.weight.dtype != torch.float32:
            raise InitError(f"Parameter {t.layer or t.name!r} is {t.weight.dtype}; residual_fp32=True would replace "
                            "a targeted parameter by an fp32 one, which the module holding it does not compute with. "
                            "Load the model in float32, or pass residual_fp32=False.")


def warn_on_drift(report: InitReport) -> None:
    drifting = report.drifting_layers()
    if drifting:
        worst = max(drifting, key=lambda layer: layer.drift)
        warnings.warn(
            f"{report.method}: {len(drifting)} layer(s) drift from the base model by more than "
            f"{report.drift_warn_threshold:g} (relative Frobenius norm; worst {worst.name!r}: {worst.drift:.3g}). "
            "The residual lost precision in the model's dtype; pass residual_fp32=True to keep it in fp32.",
            InitDriftWarning, stacklevel=3)


def new_report(method: Method, options: InitOptions) -> InitReport:
    """An empty report for ``method`` with ``options``; the fit columns are shown for the methods defined
    through the SVD optimum, the only ones whose factors approximate ``W``."""
    return InitReport(method.name, options.drift_warn_threshold, solver=options.solver if method.has_fit else None,
                      approximates_weight=method.rank_limited)


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
    spec, opts = resolve(method, init_options, options)
    config = resolve_config(lora_config, model)
    targets = collect_targets(model, config, spec, rank_limited=spec.rank_limited, residual=spec.residual,
                              gather_partitioned=True)
    by_layer = layer_keys(targets)
    fingerprints = {key: layer_fingerprint(ts) for key, ts in by_layer.items()}
    # the same checkpoint in the other dtypes (a reload onto a bf16/fp16/fp32 load of it); a ZeRO-3 partition: own only
    in_dtypes = {key: {dtype_name(d): layer_fingerprint(ts, d) for d in RELOAD_DTYPES}
                 if not any(zero3.is_partitioned(t.weight) for t in ts) else {} for key, ts in by_layer.items()}
    dtypes = {key: ts[0].weight.dtype for key, ts in by_layer.items()}
    _refuse_for_layouts(targets, opts)
    partitioned = zero3.partitioned_names(model, targets)
    if partitioned:
        zero3.refuse_unsupported(partitioned, opts, targets)
    model_bytes = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in model.parameters())
    cache = FitCache(opts.cache_dir) if opts.cache else None
    factors: dict[str, Factors] = (zero3.factors_one_at_a_time(model, spec, targets, opts, cache) if partitioned
                                   else compute_factors(spec, targets, opts, model_bytes, cache))

    # the model changes from here on (4-bit residual layers swapped in first: PEFT wraps them with its bnb layers)
    quantized = quantize_targets(model, spec, targets, factors, opts) if needs_quantization(targets, opts) else None
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
    state = InitState(opts, spec, adapter_name, report=new_report(spec, opts))
    if quantized:
        factors = quantized.factors  # refitted when quant_iters > 0
    with torch.no_grad():
        for name, layer in lora_layers(peft_model, list(fingerprints)).items():
            layout = layer_layout(layer)
            lora_A, lora_B = layouts.peft_factors(layer, adapter_name, layout)
            mats = [factors[t.name] for t in by_layer[name]]
            A, B = layouts.join(torch.stack([f.A0.to(lora_A.device) for f in mats]),
                                torch.stack([f.B0.to(lora_A.device) for f in mats]), layout, lora_A.shape, lora_B.shape)
            lora_A.copy_(A)
            lora_B.copy_(B)
            A0, B0 = lora_A.detach().cpu().clone(), lora_B.detach().cpu().clone()
            optima = [f.optimum for f in mats]
            optimum = None if None in optima else max(optima)
            with zero3.gathered(layer.get_base_layer(), modify=True):  # a ZeRO-3 weight: alone, rank 0's write kept
                state.report.layers.append(install_layer(layer, adapter_name, name, A0, B0, spec,
                                                         opts.residual_fp32, optimum, quantized))
                init_dora_magnitude(layer, adapter_name, peft_model.peft_config[adapter_name])
            state.report.layers[-1].fitted_by_rank = mats[0].fitted_by_rank
            state.layers[name] = LayerState(A0, B0, layer.scaling[adapter_name], fingerprints[name], dtypes[name],
                                            opts.residual_fp32, in_dtypes[name])
    state.report.seconds = time.perf_counter() - start
    state.report.cache_hits = cache.hits if cache is not None and state.report.solver is not None else None
    from .persistence import attach  # persistence imports this module

    attach(peft_model, state)
    logger.info("%s", state.report)
    warn_on_drift(state.report)
    return peft_model

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
from .methods import METHODS, Factors, compute_factors, resolve
from .options import InitOptions
from . import layouts
from .install import init_dora_magnitude, install_layer, new_report, warn_on_drift
from .peft_glue import (collect_targets, layer_fingerprint, layer_key, layer_keys, layer_layout, lora_layers,
                        resolve_config, unchanged_layer_fingerprints)
from .persistence import attach
from .quantize import needs_quantization, quantize_targets
from .state import RELOAD_DTYPES, InitState, LayerState, dtype_name

logger = logging.getLogger("inilora")


def _wrapped_layer_names(peft_model: PeftModel, adapter_name: str) -> set[str]:
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
    # a weight the initialization leaves as it was (plain LoRA, not quantized) is fingerprinted when a save asks
    # (collect_targets still takes those of 4-bit and ZeRO-3 weights, which are not kept as they were read)
    deferred = not spec.residual and opts.quantize is None
    targets = collect_targets(model, config, spec, rank_limited=spec.rank_limited, residual=spec.residual,
                              gather_partitioned=True, fingerprints=not deferred)
    by_layer = layer_keys(targets)
    later = {key for key, ts in by_layer.items() if not all(t.fingerprint for t in ts)}
    fingerprints = {key: None if key in later else layer_fingerprint(ts) for key, ts in by_layer.items()}
    # the same checkpoint in the other dtypes (a reload onto a bf16/fp16/fp32 load of it); a ZeRO-3 partition: own only
    in_dtypes = {key: {dtype_name(d): layer_fingerprint(ts, d) for d in RELOAD_DTYPES}
                 if not any(zero3.is_partitioned(t.weight) for t in ts) else {}
                 for key, ts in by_layer.items() if key not in later}
    dtypes = {key: ts[0].weight.dtype for key, ts in by_layer.items()}
    nonzero = {key: all(t.nonzero for t in ts) or None for key, ts in by_layer.items()}
    _refuse_for_layouts(targets, opts)
    partitioned = zero3.partitioned_names(model, targets)
    if partitioned:
        zero3.refuse_unsupported(partitioned, opts, targets)
    # what sizes the fit's chunks (a method without a fit does not read it)
    model_bytes = (sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in model.parameters())
                   if spec.has_fit else None)
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
                                                         opts.residual_fp32, optimum, quantized, nonzero[name]))
                init_dora_magnitude(layer, adapter_name, peft_model.peft_config[adapter_name])
            state.report.layers[-1].fitted_by_rank = mats[0].fitted_by_rank
            state.layers[name] = LayerState(
                A0, B0, layer.scaling[adapter_name], fingerprints[name], dtypes[name], opts.residual_fp32,
                in_dtypes.get(name, {}),
                partial(unchanged_layer_fingerprints, layer, name, dtypes[name]) if name in later else None)
    state.report.seconds = time.perf_counter() - start
    state.report.cache_hits = cache.hits if cache is not None and state.report.solver is not None else None
    attach(peft_model, state)
    logger.info("%s", state.report)
    warn_on_drift(state.report)
    return peft_model

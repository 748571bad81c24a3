"""Where IniLoRA meets PEFT: which layers a ``LoraConfig`` targets (found without touching the model),
and how initial factors and the frozen residual are installed into PEFT's own LoRA layers."""

from __future__ import annotations

import contextlib
import copy
import math
import numbers

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer, _maybe_include_all_linear_layers, check_target_module_exists
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.other import get_pattern_key
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from . import zero3
from .distributed import check_readable
from .errors import InitError
from .methods import Target, get_method
from .quantize import dequantized_weight, is_4bit, refuse_unsupported
from .state import fingerprint

RESIDUAL_MARK = "_inilora_residual"  # set on a base layer whose weight holds a residual
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve_config(lora_config: LoraConfig, model: nn.Module) -> LoraConfig:
    """A copy of the user's config with what PEFT would infer made explicit (default targets for the
    architecture, ``all-linear``), PEFT's own random init (we overwrite it) and ``fan_in_fan_out``
    set when the targets are transformers' ``Conv1D``."""
    if not isinstance(lora_config, LoraConfig):
        raise InitError(f"lora_config must be a peft.LoraConfig, got {type(lora_config).__name__}.")
    if getattr(lora_config, "target_parameters", None):
        raise InitError("target_parameters is not supported by inilora; use target_modules.")
    if lora_config.use_dora:
        raise InitError("use_dora=True is not supported: DoRA rescales the weight the residual is taken from.")
    if lora_config.init_lora_weights is not True:
        raise InitError(f"LoraConfig(init_lora_weights={lora_config.init_lora_weights!r}) would be overwritten by "
                        "inilora's initialization; leave init_lora_weights at its default (True) and choose the "
                        "initialization with get_peft_model(..., method=...).")
    dropout = lora_config.lora_dropout
    # checked here, before any fit: torch refuses p > 1 only after the fit, and PEFT silently turns a
    # negative or NaN p into no dropout; p = 1 would train on the residual alone
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise InitError(f"LoraConfig lora_dropout must be a number in [0, 1), got {dropout!r}.")
    config = copy.deepcopy(lora_config)
    if config.target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        defaults = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if defaults is None:
            raise InitError(f"LoraConfig.target_modules is not set and PEFT has no default for model type "
                            f"{model_type!r}; set target_modules.")
        config.target_modules = set(defaults) if not isinstance(defaults, str) else defaults
    config = _maybe_include_all_linear_layers(config, model)
    return config


def find_targets(model: nn.Module, config: LoraConfig) -> list[tuple[str, nn.Module]]:
    """The modules PEFT will wrap, by PEFT's own matching rule, in model order."""
    found = []
    for name, module in model.named_modules():
        if not name or not check_target_module_exists(config, name):  # excluded modules are falsy too
            continue
        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer()
            if getattr(base, RESIDUAL_MARK, None):
                raise InitError(f"Layer {name!r} already carries an IniLoRA residual (method "
                                f"{getattr(base, RESIDUAL_MARK)!r}); stacking a second adapter on it would corrupt "
                                "the first. Merge or unload the first adapter before adding another.")
            raise InitError(f"Layer {name!r} already carries a PEFT adapter; inilora.get_peft_model takes a model "
                            "without adapters (merge_and_unload or unload the existing one first).")
        found.append((name, module))
    if not found:
        targets = config.target_modules
        shown = targets if isinstance(targets, str) else sorted(targets)
        raise InitError(f"No module matches target_modules={shown!r}.")
    return found


def rank_and_scaling(config: LoraConfig, name: str, residual: bool = False) -> tuple[int, float]:
    """``r`` and ``s`` for one layer, by PEFT's rule (rank/alpha patterns, rsLoRA). Raises
    :class:`InitError` for a rank that is not a positive int or an alpha that is not finite — and, for a
    ``residual`` method, not positive: its factors are split by √s, and s = 0 would make the fit divide by zero."""
    rank_key = get_pattern_key(config.rank_pattern.keys(), name)
    r = config.rank_pattern.get(rank_key, config.r)
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1:
        field = f"rank_pattern[{rank_key!r}]" if rank_key in config.rank_pattern else "r"
        raise InitError(f"LoraConfig {field} must be a positive int, got {r!r} (layer {name!r}).")
    alpha_key = get_pattern_key(config.alpha_pattern.keys(), name)
    alpha = config.alpha_pattern.get(alpha_key, config.lora_alpha)
    field = f"alpha_pattern[{alpha_key!r}]" if alpha_key in config.alpha_pattern else "lora_alpha"
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise InitError(f"LoraConfig {field} must be a finite number, got {alpha!r} (layer {name!r}).")
    if residual and alpha <= 0:
        raise InitError(f"LoraConfig {field} must be positive for a residual method, got {alpha!r} (layer "
                        f"{name!r}): the initial factors are split by the square root of the scaling alpha/r.")
    return r, alpha / math.sqrt(r) if config.use_rslora else alpha / r


def weight_view(module: nn.Module) -> Tensor:
    """The layer's weight as ``out × in`` (a view: ``Conv1D`` stores it transposed)."""
    weight = module.weight
    return weight.T if isinstance(module, Conv1D) else weight


def _weight_key(weight: Tensor) -> tuple[str, int]:
    """What identifies a weight's storage: its start address, or its ``ds_id`` for a ZeRO-3 parameter
    (whose partitioned data is an empty tensor, with no address of its own)."""
    return ("ds_id", weight.ds_id) if hasattr(weight, "ds_id") else ("address", weight.data_ptr())


def _tied_weights(model: nn.Module) -> set[tuple[str, int]]:
    """Storage keys (:func:`_weight_key`) of parameters held by more than one module (tied weights)."""
    holders: dict[tuple[str, int], int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            holders[_weight_key(p)] = holders.get(_weight_key(p), 0) + 1
    return {key for key, n in holders.items() if n > 1}


def collect_targets(model: nn.Module, config: LoraConfig, method: str, rank_limited: bool,
                    residual: bool, gather_partitioned: bool = False, fingerprints: bool = True) -> list[Target]:
    """Find and check every target, fingerprint its weight; raise :class:`InitError` naming the first
    problem. Reads only. With ``gather_partitioned`` a DeepSpeed ZeRO-3 weight is gathered alone while it
    is checked; otherwise it is refused. ``fingerprints=False`` leaves a plain weight's fingerprint empty, for
    a caller that takes it later from a weight nothing changes (a 4-bit weight is still fingerprinted: it is
    re-quantized)."""
    if isinstance(model, PeftModel):
        raise InitError("inilora.get_peft_model takes a transformers model, not a PeftModel; pass the base model "
                        "(merge_and_unload or unload the existing adapter first).")
    modules = find_targets(model, config)
    kinds = {isinstance(m, Conv1D) for _, m in modules}
    if len(kinds) > 1:
        raise InitError("target_modules mixes nn.Linear and Conv1D layers; PEFT's fan_in_fan_out is one flag per "
                        "adapter. Target them in separate adapters.")
    config.fan_in_fan_out = kinds == {True}
    tied = _tied_weights(model) if residual else set()
    targets = []
    for name, module in modules:
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise InitError(f"Layer {name!r} is a {type(module).__name__}; inilora supports nn.Linear and "
                            "transformers' Conv1D.")
        refuse_unsupported(name, module)
        partitioned = gather_partitioned and zero3.is_partitioned(module.weight)
        with zero3.gathered(module) if partitioned else contextlib.nullcontext():
            target = _checked_target(name, module, config, method, rank_limited, tied, fingerprints or partitioned)
        if partitioned:  # a view of the gathered weight would keep it whole: keep the parameter itself
            target.weight = module.weight
        targets.append(target)
    return targets


def _checked_target(name: str, module: nn.Module, config: LoraConfig, method: str, rank_limited: bool,
                    tied: set[tuple[str, int]], take_fingerprint: bool = True) -> Target:
    four_bit = is_4bit(module)  # fitted from its dequantized weight, re-quantized after
    weight = dequantized_weight(module) if four_bit else getattr(module, "weight", None)
    check_readable(name, module, weight)  # FSDP and ZeRO-3 shards, offloaded and meta weights
    if not isinstance(weight, Tensor) or weight.dtype not in FLOAT_DTYPES or type(weight) not in (
            nn.Parameter, Tensor):
        dtype = getattr(weight, "dtype", None)
        raise InitError(f"Layer {name!r} has a {dtype} weight of type {type(weight).__name__} (integer or "
                        f"quantized); {method} needs a float32/bfloat16/float16 weight. Load the model in a "
                        "floating-point dtype to initialize it.")
    r, scaling = rank_and_scaling(config, name, residual=get_method(method).residual)
    view = weight if four_bit else weight_view(module)
    if rank_limited and r > min(view.shape):
        raise InitError(f"r={r} is larger than layer {name!r} allows for {method}: its weight is "
                        f"{tuple(view.shape)}, so r must be at most {min(view.shape)}.")
    if _weight_key(weight) in tied:
        raise InitError(f"Layer {name!r} shares its weight with another module (tied weights); {method} "
                        "replaces the weight with a residual, which would change the other module too.")
    total = weight.sum(dtype=torch.float32)
    if not all_finite(weight, total):
        raise InitError(f"Layer {name!r} has NaN or Inf entries in its weight; refusing to initialize from it.")
    return Target(name, view, r, scaling, fingerprint=fingerprint(view) if take_fingerprint or four_bit else "",
                  dequantized=four_bit, nonzero=bool(total != 0) or None)


def all_finite(weight: Tensor, total: Tensor | None = None) -> bool:
    """Whether every entry is finite. A finite fp32 sum proves it (a NaN or Inf entry makes the sum NaN or Inf)
    without the weight-sized mask of ``isfinite``; only a sum that overflowed needs the entrywise check.
    ``total``: that sum, when the caller has it."""
    total = weight.sum(dtype=torch.float32) if total is None else total
    return bool(torch.isfinite(total)) or bool(torch.isfinite(weight).all())


def mark_residual(layer: BaseTunerLayer, method: str) -> None:
    """Flag the base layer as holding ``method``'s residual (a second adapter on it is refused)."""
    if get_method(method).residual:
        setattr(layer.get_base_layer(), RESIDUAL_MARK, method)


def _to_residual_dtype(module: nn.Module, args):
    return tuple(a.to(module.weight.dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def _to_model_dtype(module: nn.Module, args, output):
    return output.to(getattr(module.get_base_layer(), RESIDUAL_MARK + "_dtype"))


def set_residual(layer: BaseTunerLayer, residual: Tensor, method: str, keep_fp32: bool) -> None:
    """Write ``residual`` (``out × in``, fp32) into the base layer's weight, in place (no second copy of
    the weight is allocated). With ``keep_fp32`` on a bf16/fp16 layer the weight becomes fp32: the base
    layer casts its input up, PEFT adds the LoRA term to its fp32 output, and the LoRA layer casts the
    sum back to the model's dtype — so ``W_res·x + s·B·A·x`` cancels in fp32, not in bf16."""
    base_layer = layer.get_base_layer()
    weight = base_layer.weight
    mark_residual(layer, method)
    if not keep_fp32 or weight.dtype == torch.float32:
        weight_view(base_layer).copy_(residual)
        return
    value = residual.T if isinstance(base_layer, Conv1D) else residual
    base_layer.weight = nn.Parameter(value.clone(memory_format=torch.contiguous_format), requires_grad=False)
    setattr(base_layer, RESIDUAL_MARK + "_dtype", weight.dtype)
    if base_layer.bias is not None:
        base_layer.bias = nn.Parameter(base_layer.bias.detach().float(), requires_grad=False)
    base_layer._inilora_hooks = (base_layer.register_forward_pre_hook(_to_residual_dtype),
                                 layer.register_forward_hook(_to_model_dtype))


def restore_plain_layer(base_layer: nn.Module, weight_out_in: Tensor) -> None:
    """Give a base layer a plain weight again (``out × in``), in the model's dtype, hooks removed."""
    dtype = getattr(base_layer, RESIDUAL_MARK + "_dtype", base_layer.weight.dtype)
    for handle in getattr(base_layer, "_inilora_hooks", ()):
        handle.remove()
    if base_layer.bias is not None:
        base_layer.bias = nn.Parameter(base_layer.bias.detach().to(dtype), requires_grad=False)
    value = weight_out_in.T if isinstance(base_layer, Conv1D) else weight_out_in
    base_layer.weight = nn.Parameter(value.to(dtype).contiguous(), requires_grad=False)
    for attr in (RESIDUAL_MARK, RESIDUAL_MARK + "_dtype", "_inilora_hooks"):
        if hasattr(base_layer, attr):
            delattr(base_layer, attr)


def lora_layers(peft_model: PeftModel, names: list[str]) -> dict[str, BaseTunerLayer]:
    """The PEFT LoRA layer wrapping each target, by its name in the base model."""
    inner = peft_model.base_model.model
    layers = {}
    for name in names:
        layer = inner.get_submodule(name)
        if not isinstance(layer, BaseTunerLayer):
            raise InitError(f"PEFT did not wrap layer {name!r}; this is a bug in inilora's target matching.")
        layers[name] = layer
    return layers

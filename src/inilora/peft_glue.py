"""Where IniLoRA meets PEFT: which layers a ``LoraConfig`` targets (found without touching the model),
and how initial factors and the frozen residual are installed into PEFT's own LoRA layers."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import numbers

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer, _maybe_include_all_linear_layers, check_target_module_exists
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.other import get_pattern_key
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from . import layouts, zero3
from .distributed import check_readable
from .errors import InitError
from .layouts import Layout
from .methods import Method, Target
from .quantize import dequantized_weight, is_4bit, refuse_unsupported
from .state import FINGERPRINT_HASH, RELOAD_DTYPES, dtype_name, fingerprint

RESIDUAL_MARK = "_inilora_residual"  # set on a base layer whose weight holds a residual
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve_config(lora_config: LoraConfig, model: nn.Module) -> LoraConfig:
    """A copy of the user's config with what PEFT would infer made explicit (default targets for the
    architecture, ``all-linear``), PEFT's own random init (we overwrite it) and ``fan_in_fan_out``
    set when the targets are transformers' ``Conv1D``."""
    if not isinstance(lora_config, LoraConfig):
        raise InitError(f"lora_config must be a peft.LoraConfig, got {type(lora_config).__name__}.")
    if getattr(lora_config, "target_parameters", None):
        # PEFT's ParamWrapper raises these only while it wraps, after the fit; said here, before anything
        for field, value, allowed in (("use_dora", lora_config.use_dora, False),
                                      ("lora_dropout", lora_config.lora_dropout, 0.0),
                                      ("lora_bias", lora_config.lora_bias, False),
                                      ("fan_in_fan_out", lora_config.fan_in_fan_out, False)):
            if value != allowed:
                raise InitError(f"LoraConfig {field}={value!r} cannot be used with target_parameters: PEFT's "
                                f"ParamWrapper (the LoRA layer of a targeted parameter) supports only {field}="
                                f"{allowed!r}. Use a separate adapter without target_parameters for it.")
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


class NoTargetError(InitError):
    """No module of the model matches the config's ``target_modules``."""


PARAM_WRAPPER = "ParamWrapper"  # PEFT's LoRA layer of a ``target_parameters`` parameter (compared by name, as PEFT does)


def _target_parameters(model: nn.Module, config: LoraConfig) -> list[tuple[str, nn.Module, str]]:
    """``(module.param key, module, param name)`` of every parameter ``target_parameters`` names, by PEFT's
    matching rule (the key equals a listed name or ends with ``.`` + one)."""
    names = set(getattr(config, "target_parameters", None) or ())
    found = []
    for module_name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            raise InitError(f"Layer {module_name!r} already carries a PEFT adapter; inilora.get_peft_model takes a "
                            "model without adapters (merge_and_unload or unload the existing one first).")
        for param_name, _ in module.named_parameters(recurse=False):
            key = f"{module_name}.{param_name}"
            if module_name and (key in names or any(key.endswith(f".{n}") for n in names)):
                found.append((key, module, param_name))
    return found


def find_targets(model: nn.Module, config: LoraConfig, caller: str = "inilora.get_peft_model"
                 ) -> list[tuple[str, nn.Module]]:
    """The modules PEFT will wrap, by PEFT's own matching rule, in model order (``target_parameters``: see
    :func:`_target_parameters`; ``caller``: the public function the user called, named in errors)."""
    found = []
    if getattr(config, "target_parameters", None) and not config.target_modules:
        return found
    for name, module in model.named_modules():
        if not name or not check_target_module_exists(config, name):  # excluded modules are falsy too
            continue
        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer()
            if getattr(base, RESIDUAL_MARK, None):
                raise InitError(f"Layer {name!r} already carries an IniLoRA residual (method "
                                f"{getattr(base, RESIDUAL_MARK)!r}); stacking a second adapter on it would corrupt "
                                "the first. Merge or unload the first adapter before adding another.")
            raise InitError(f"Layer {name!r} already carries a PEFT adapter; {caller} takes a model "
                            "without adapters (merge_and_unload or unload the existing one first).")
        found.append((name, module))
    if not found and not getattr(config, "target_parameters", None):
        targets = config.target_modules
        shown = targets if isinstance(targets, str) else sorted(targets)
        raise NoTargetError(f"No module matches target_modules={shown!r}.")
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


def layer_layout(layer: BaseTunerLayer) -> Layout:
    """How a PEFT LoRA layer's base weight maps to matrices (:mod:`inilora.layouts`)."""
    base, attr = held_weight(layer)
    if attr != "weight" or type(layer).__name__ == PARAM_WRAPPER:
        return layouts.param_layout(base, getattr(base, attr))
    return layouts.module_layout(base) or Layout("linear")


def held_weight(layer: BaseTunerLayer) -> tuple[nn.Module, str]:
    """The module holding a PEFT layer's base weight, and the attribute it is held in."""
    return layer.get_base_layer(), getattr(layer, "parameter_name", "weight")


def layer_matrices(layer: BaseTunerLayer) -> Tensor:
    """The base weight a PEFT layer holds, as ``E × out × in`` matrices (a view where possible)."""
    base, attr = held_weight(layer)
    return layouts.matrices(getattr(base, attr), layer_layout(layer))


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


def collect_targets(model: nn.Module, config: LoraConfig, method: Method, rank_limited: bool,
                    residual: bool, gather_partitioned: bool = False,
                    caller: str = "inilora.get_peft_model", fingerprints: bool = True) -> list[Target]:
    """Find and check every target, fingerprint its weight; raise :class:`InitError` naming the first
    problem (and ``caller``, the public function the user called). Reads only. One :class:`Target` per
    matrix: a 3-D expert parameter gives one per expert, named ``key[e]`` (``Target.layer`` is the parameter's
    key ``module.param``). With ``gather_partitioned`` a DeepSpeed ZeRO-3 weight is gathered alone while it is
    checked; otherwise it is refused. ``fingerprints=False`` leaves a plain weight's fingerprint empty, for a
    caller that takes it later from a weight nothing changes (:func:`unchanged_layer_fingerprints`); a 4-bit
    weight (dequantized here) and a partitioned one (gathered here) are still fingerprinted."""
    if isinstance(model, PeftModel):
        raise InitError(f"{caller} takes a transformers model, not a PeftModel; pass the base model "
                        "(merge_and_unload or unload the existing adapter first).")
    modules = find_targets(model, config, caller)
    params = _target_parameters(model, config)
    if not modules and not params:
        raise InitError(f"No parameter matches target_parameters={sorted(config.target_parameters)!r}.")
    kinds = {isinstance(m, Conv1D) for _, m in modules if isinstance(m, (nn.Linear, Conv1D))}
    if len(kinds) > 1:
        raise InitError("target_modules mixes nn.Linear and Conv1D layers; PEFT's fan_in_fan_out is one flag per "
                        "adapter. Target them in separate adapters.")
    config.fan_in_fan_out = kinds == {True}
    tied = _tied_weights(model) if residual else set()
    targets = []
    for name, module in modules:
        layout = layouts.module_layout(module)
        if layout is None:
            raise InitError(f"Layer {name!r} is a {type(module).__name__}; inilora supports {layouts.SUPPORTED}.")
        if why := layouts.unsupported_reason(module):
            raise InitError(f"Layer {name!r} is {why}; inilora supports {layouts.SUPPORTED}.")
        if layout.kind not in ("linear", "conv1d_t") and is_4bit(module):
            raise InitError(f"Layer {name!r} is a 4-bit {type(module).__name__}; inilora re-quantizes only "
                            "bitsandbytes Linear4bit layers.")
        refuse_unsupported(name, module)
        partitioned = gather_partitioned and zero3.is_partitioned(module.weight)
        if partitioned and layout.kind not in ("linear", "conv1d_t"):
            raise InitError(f"Layer {name!r} ({type(module).__name__}) is partitioned by DeepSpeed ZeRO-3; inilora "
                            "gathers only nn.Linear and Conv1D weights. Initialize it without ZeRO-3.")
        with zero3.gathered(module) if partitioned else contextlib.nullcontext():
            target = _checked_target(name, module, config, method, rank_limited, tied, layout,
                                     take_fingerprint=fingerprints or partitioned)[0]
        if partitioned:  # a view of the gathered weight would keep it whole: keep the parameter itself
            target.weight = module.weight
        targets.append(target)
    for key, module, param_name in params:
        param = getattr(module, param_name)
        layout = layouts.param_layout(module, param)
        if layout is None:
            raise InitError(f"Parameter {key!r} of {type(module).__name__} is {param.dim()}-D; inilora (like PEFT's "
                            "ParamWrapper) supports 2-D and 3-D (experts × matrix) parameters in target_parameters.")
        if zero3.is_partitioned(param):
            raise InitError(f"Parameter {key!r} is partitioned by DeepSpeed ZeRO-3; inilora gathers only "
                            "nn.Linear and Conv1D weights. Initialize it without ZeRO-3.")
        targets.extend(_checked_target(key, module, config, method, rank_limited, tied, layout, param_name,
                                       fingerprints))
    return targets


def _checked_target(name: str, module: nn.Module, config: LoraConfig, method: Method, rank_limited: bool,
                    tied: set[tuple[str, int]], layout: Layout, param_name: str = "weight",
                    take_fingerprint: bool = True) -> list[Target]:
    four_bit = is_4bit(module)  # fitted from its dequantized weight, re-quantized after
    weight = dequantized_weight(module) if four_bit else getattr(module, param_name, None)
    check_readable(name, module, weight)  # FSDP and ZeRO-3 shards, offloaded and meta weights
    if not isinstance(weight, Tensor) or weight.dtype not in FLOAT_DTYPES or type(weight) not in (
            nn.Parameter, Tensor):
        dtype = getattr(weight, "dtype", None)
        raise InitError(f"Layer {name!r} has a {dtype} weight of type {type(weight).__name__} (integer or "
                        f"quantized); {method.name} needs a float32/bfloat16/float16 weight. Load the model in a "
                        "floating-point dtype to initialize it.")
    r, scaling = rank_and_scaling(config, name, residual=method.residual)
    views = weight.unsqueeze(0) if four_bit else layouts.matrices(weight, layout)
    if rank_limited and r > min(views.shape[1:]):
        raise InitError(f"r={r} is larger than layer {name!r} allows for {method.name}: its weight is "
                        f"{tuple(views.shape[1:])} as a matrix, so r must be at most {min(views.shape[1:])}.")
    if _weight_key(weight) in tied:
        raise InitError(f"Layer {name!r} shares its weight with another module (tied weights); {method.name} "
                        "replaces the weight with a residual, which would change the other module too.")
    total = weight.sum(dtype=torch.float32)
    if not all_finite(weight, total):
        raise InitError(f"Layer {name!r} has NaN or Inf entries in its weight; refusing to initialize from it.")
    nonzero = bool(total != 0) or None  # a non-zero sum proves a non-zero entry (plain LoRA's report needs no more)
    take_fingerprint = take_fingerprint or four_bit
    if len(views) == 1:
        return [Target(name, views[0], r, scaling, fingerprint=fingerprint(views[0]) if take_fingerprint else "",
                       dequantized=four_bit, layout=layout, nonzero=nonzero)]
    return [Target(f"{name}[{e}]", view, r, scaling, fingerprint=fingerprint(view) if take_fingerprint else "",
                   layout=layout, layer=name, nonzero=nonzero) for e, view in enumerate(views)]


def layer_keys(targets: list[Target]) -> dict[str, list[Target]]:
    """The targets grouped by the PEFT layer they belong to (one each, or one per expert), in order."""
    grouped: dict[str, list[Target]] = {}
    for t in targets:
        grouped.setdefault(t.layer or t.name, []).append(t)
    return grouped


def layer_fingerprint(targets: list[Target], dtype: torch.dtype | None = None, algorithm: str = FINGERPRINT_HASH) -> str:
    """One layer's fingerprint: its matrix's, or a hash of its experts' (in order). With ``dtype``: that of
    its weight cast to ``dtype`` (what loading the same checkpoint in ``dtype`` gives), one matrix at a time.
    ``algorithm``: the hash of an adapter's format (:data:`inilora.state.FINGERPRINT_HASHES`)."""
    return matrices_fingerprint([t.weight for t in targets], dtype, [t.fingerprint for t in targets], algorithm)


def matrices_fingerprint(matrices, dtype: torch.dtype | None = None, known: list[str] | None = None,
                         algorithm: str = FINGERPRINT_HASH) -> str:
    """:func:`layer_fingerprint` of a layer's ``E × out × in`` matrices; ``known``: their own-dtype
    fingerprints where already taken with ``algorithm`` (empty strings where not)."""
    reuse = known and algorithm == FINGERPRINT_HASH
    prints = [known[e] if reuse and known[e] and dtype in (None, m.dtype) else fingerprint(m, dtype, algorithm)
              for e, m in enumerate(matrices)]
    if len(prints) == 1:
        return prints[0]
    return hashlib.sha256("".join(prints).encode()).hexdigest()[:32]


def unchanged_layer_fingerprints(layer: BaseTunerLayer, name: str, dtype: torch.dtype) -> tuple[str, dict[str, str]]:
    """The fingerprint, and those in every dtype of ``RELOAD_DTYPES``, of the base weight of a layer the
    initialization left as it was (plain LoRA): taken when a save asks for them, from the weight the layer holds,
    which must still be the original (not merged, not cast)."""
    if layer.merged:
        raise InitError(f"Layer {name!r} has its adapter merged into the base weight, so the original weight's "
                        "fingerprint cannot be taken from it; unmerge before saving.")
    matrices = layer_matrices(layer).detach()
    if matrices.dtype != dtype:
        raise InitError(f"Layer {name!r} was {dtype} when initialized and is {matrices.dtype} now; the original "
                        "weight's fingerprint cannot be taken from it. Save before casting the model.")
    own = matrices_fingerprint(matrices)
    return own, {dtype_name(d): own if d == dtype else matrices_fingerprint(matrices, d) for d in RELOAD_DTYPES}


def all_finite(weight: Tensor, total: Tensor | None = None) -> bool:
    """Whether every entry is finite. A finite fp32 sum proves it (a NaN or Inf entry makes the sum NaN or Inf)
    without the weight-sized mask of ``isfinite``; only a sum that overflowed needs the entrywise check.
    ``total``: that sum, when the caller has it."""
    total = weight.sum(dtype=torch.float32) if total is None else total
    return bool(torch.isfinite(total)) or bool(torch.isfinite(weight).all())


def mark_residual(layer: BaseTunerLayer, method: Method) -> None:
    """Flag the base layer as holding ``method``'s residual, by name (a second adapter on it is refused)."""
    if method.residual:
        setattr(layer.get_base_layer(), RESIDUAL_MARK, method.name)


def _to_residual_dtype(module: nn.Module, args):
    return tuple(a.to(module.weight.dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def _to_model_dtype(module: nn.Module, args, output):
    return output.to(getattr(module.get_base_layer(), RESIDUAL_MARK + "_dtype"))


def residual_as_held(layer: BaseTunerLayer, residual: Tensor, keep_fp32: bool) -> Tensor:
    """The fp32 values :func:`set_residual` leaves in the layer for ``residual`` (rounded to the weight's
    dtype unless it is kept in fp32), so the drift can be measured before the original is overwritten."""
    base_layer, attr = held_weight(layer)
    dtype = getattr(base_layer, attr).dtype
    return residual if keep_fp32 or dtype == torch.float32 else residual.to(dtype).float()


def set_residual(layer: BaseTunerLayer, residual: Tensor, method: Method, keep_fp32: bool) -> None:
    """Write ``residual`` (``E × out × in``, fp32) into the base layer's weight, in place (no second copy of
    the weight is allocated). With ``keep_fp32`` on a bf16/fp16 layer the weight becomes fp32: the base
    layer casts its input up, PEFT adds the LoRA term to its fp32 output, and the LoRA layer casts the
    sum back to the model's dtype — so ``W_res·x + s·B·A·x`` cancels in fp32, not in bf16."""
    base_layer, attr = held_weight(layer)
    weight, layout = getattr(base_layer, attr), layer_layout(layer)
    mark_residual(layer, method)
    if not keep_fp32 or weight.dtype == torch.float32:
        weight.detach().copy_(layouts.to_weight(residual, layout, weight.shape))
        return
    value = layouts.to_weight(residual, layout, weight.shape)
    base_layer.weight = nn.Parameter(value.clone(memory_format=torch.contiguous_format), requires_grad=False)
    setattr(base_layer, RESIDUAL_MARK + "_dtype", weight.dtype)
    if getattr(base_layer, "bias", None) is not None:
        base_layer.bias = nn.Parameter(base_layer.bias.detach().float(), requires_grad=False)
    base_layer._inilora_hooks = (base_layer.register_forward_pre_hook(_to_residual_dtype),
                                 layer.register_forward_hook(_to_model_dtype))


def restore_plain_layer(base_layer: nn.Module, weight_out_in: Tensor, layout: Layout | None = None,
                        attr: str = "weight") -> None:
    """Give a base layer a plain weight again (``out × in``, or ``E × out × in`` with its ``layout``), in the
    model's dtype, hooks removed."""
    if layout is None:
        layout, weight_out_in = layouts.module_layout(base_layer) or Layout("linear"), weight_out_in.unsqueeze(0)
    weight = getattr(base_layer, attr)
    dtype = getattr(base_layer, RESIDUAL_MARK + "_dtype", weight.dtype)
    for handle in getattr(base_layer, "_inilora_hooks", ()):
        handle.remove()
    value = layouts.to_weight(weight_out_in, layout, weight.shape).to(dtype)
    if attr == "weight":
        if getattr(base_layer, "bias", None) is not None:
            base_layer.bias = nn.Parameter(base_layer.bias.detach().to(dtype), requires_grad=False)
        base_layer.weight = nn.Parameter(value.contiguous(), requires_grad=False)
    else:  # a targeted parameter keeps its object (and whether it trains): written in place
        weight.detach().copy_(value)
    for name in (RESIDUAL_MARK, RESIDUAL_MARK + "_dtype", "_inilora_hooks"):
        if hasattr(base_layer, name):
            delattr(base_layer, name)


def _strip_base_layer(name: str) -> str:
    while ".base_layer" in name:
        prefix, _, suffix = name.rpartition(".base_layer")
        name = prefix + suffix
    return name


def layer_key(module_name: str, layer: BaseTunerLayer) -> str:
    """A PEFT layer's key: its module's name, or ``module.param`` for a targeted parameter (``ParamWrapper``,
    possibly nested in another one: ``experts.base_layer``)."""
    if type(layer).__name__ == PARAM_WRAPPER:
        return f"{_strip_base_layer(module_name)}.{layer.parameter_name}"
    return module_name


def find_layer(inner: nn.Module, key: str) -> nn.Module | None:
    try:
        layer = inner.get_submodule(key)
    except AttributeError:
        layer = None
    if isinstance(layer, BaseTunerLayer) and type(layer).__name__ != PARAM_WRAPPER:
        return layer
    path, _, param_name = key.rpartition(".")
    try:
        module = inner.get_submodule(path)
    except AttributeError:
        return layer
    while isinstance(module, BaseTunerLayer) and type(module).__name__ == PARAM_WRAPPER:
        if module.parameter_name == param_name:
            return module
        module = module.base_layer
    return layer


def lora_layers(peft_model: PeftModel, names: list[str]) -> dict[str, BaseTunerLayer]:
    """The PEFT LoRA layer wrapping each target, by its name in the base model."""
    inner = peft_model.base_model.model
    layers = {}
    for name in names:
        layer = find_layer(inner, name)
        if not isinstance(layer, BaseTunerLayer):
            raise InitError(f"PEFT did not wrap layer {name!r}; this is a bug in inilora's target matching.")
        layers[name] = layer
    return layers


def adapter_keys(peft_model: PeftModel, names: list[str]) -> dict[str, tuple[tuple[str, str], Layout]]:
    """Each layer's ``lora_A``/``lora_B`` keys in PEFT's adapter state dict (by the PEFT layer's module path, which
    for a nested ``ParamWrapper`` holds ``base_layer``), and its layout."""
    paths = {id(module): name for name, module in peft_model.named_modules()}
    out = {}
    for name, layer in lora_layers(peft_model, names).items():
        path, layout = paths[id(layer)], layer_layout(layer)
        if layout.kind == "embedding":
            out[name] = (f"{path}.lora_embedding_A", f"{path}.lora_embedding_B"), layout
        else:
            out[name] = (f"{path}.lora_A.weight", f"{path}.lora_B.weight"), layout
    return out

"""Quantized residuals (QPiSSA for every method): the factors come from the full-precision (or dequantized
4-bit) weight, the frozen residual ``W − s·B0·A0`` is stored as a bitsandbytes 4-bit layer, which PEFT then
wraps with its own bnb LoRA layer. bitsandbytes is imported only here, and only when used."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from .errors import InitError
from .matrices import Factors
from .methods import REGISTRY, Method, Target, compute_factors

QUANT_TYPES = ("nf4", "fp4")
FLAG = "is_loaded_in_4bit"  # transformers' mark of a 4-bit model, which PEFT reads to pick its bnb layers
BLOCKSIZE = 64  # bitsandbytes' and transformers' default for 4-bit weights
# top-level packages of quantized layer types inilora cannot re-quantize (GPTQ, AWQ, HQQ, quanto, torchao, ...)
OTHER_QUANTIZERS = ("auto_gptq", "gptqmodel", "awq", "hqq", "optimum", "torchao", "eetq", "aqlm", "vptq", "fbgemm_gpu",
                    "compressed_tensors", "higgs", "spqr")
OFFLINE_HINT = ("Load the model in full precision and pass quantize='nf4', or initialize offline: "
                "inilora.save_residual_model(...) on a full-precision load writes a residual model any quantizer loads.")


class QuantizedExportWarning(UserWarning):
    """Exporting or merging an adapter trained on a 4-bit residual is not exact: ``Q(W_res) + BA ≠ W + ΔW``."""


def is_4bit(module: nn.Module) -> bool:
    """A bitsandbytes 4-bit layer (checked without importing bitsandbytes)."""
    return type(getattr(module, "weight", None)).__name__ == "Params4bit"


def refuse_unsupported(name: str, module: nn.Module) -> None:
    """Raise :class:`InitError` for quantized layers other than bitsandbytes 4-bit (8-bit, GPTQ, AWQ, ...)."""
    weight = getattr(module, "weight", None)
    package = type(module).__module__.split(".")[0]
    if type(weight).__name__ == "Int8Params" or type(module).__name__ == "Linear8bitLt":
        kind = "bitsandbytes Linear8bitLt (8-bit)"
    elif package in OTHER_QUANTIZERS:
        kind = f"{type(module).__name__} from {package}"
    else:
        return
    raise InitError(f"Layer {name!r} is a {kind} layer: inilora can dequantize and re-quantize only bitsandbytes 4-bit "
                    f"(Linear4bit) layers. {OFFLINE_HINT}")


def keep_standard_layout(layer: nn.Module) -> None:
    """Keep bitsandbytes from repacking this ``Linear4bit`` for its AVX512-BF16 CPU kernel. bitsandbytes
    (>= 0.49) does that at the first inference forward on such a CPU, and the repacking is lossy: the block
    scales become bfloat16 (double-quantized ones are re-quantized when it packs back to save), so the 4-bit
    residual inilora built would no longer be the one that saves, reloads byte-identical and merges exactly;
    on shapes that kernel cannot take (rows not a multiple of 32, columns not of the block size) it fails
    outright. What it costs is CPU inference speed only."""
    layer.support_avx512bf16_for_cpu = False


def _as_computed(param):
    """(4-bit weight, quant state) in bitsandbytes' standard layout, for the weight a layer computes with now.
    A weight bitsandbytes repacked for its CPU kernel (a user's layer, before inilora saw it) is read without
    being changed: codes unpacked, the bfloat16 block scales the kernel uses put back in block order.
    (``dequantize_4bit`` on the packed layout returns a wrong weight without an error, and bitsandbytes' own
    inverse re-quantizes the scales and leaves undouble-quantized ones transposed.)"""
    state = param.quant_state
    if not getattr(state, "packing_format_for_cpu", False):
        return param.data, state
    import bitsandbytes.functional as bnb_f

    scratch = copy.copy(state)
    scratch.original_nested = False  # the inverse would re-quantize the scales: they are set below instead
    qweight, scratch = bnb_f._convert_weight_packed_for_cpu_inverse(param.data, scratch)
    scratch.absmax = state.absmax.T.reshape(-1).float()
    return qweight, scratch


def dequantized_weight(module: nn.Module) -> Tensor:
    """The 4-bit layer's weight, dequantized (``out × in``, in the dtype it was quantized from)."""
    return dequantize(module.weight, dtype=None)


@dataclass(frozen=True)
class QuantSpec:
    """How one residual is quantized: as the existing 4-bit layer was, or as the options ask."""

    quant_type: str
    double_quant: bool
    dtype: torch.dtype  # what is quantized and computed in: the model's dtype
    blocksize: int = BLOCKSIZE
    quant_storage: torch.dtype = torch.uint8

    @classmethod
    def of_layer(cls, module: nn.Module) -> "QuantSpec":
        w, state = module.weight, module.weight.quant_state
        packed = getattr(state, "packing_format_for_cpu", False)  # see _as_computed
        dtype = state.original_dtype if packed else state.dtype
        return cls(w.quant_type, bool(w.compress_statistics), dtype, w.blocksize, w.quant_storage)


def quantize(weight: Tensor, spec: QuantSpec):
    """``Q(weight)`` as a packed bitsandbytes ``Params4bit`` on the weight's device (deterministic)."""
    import bitsandbytes as bnb

    param = bnb.nn.Params4bit(weight.detach().to(spec.dtype).contiguous(), requires_grad=False,
                              quant_type=spec.quant_type, compress_statistics=spec.double_quant,
                              blocksize=spec.blocksize, quant_storage=spec.quant_storage)
    return param.to(weight.device)


def dequantize(param, dtype: torch.dtype | None = torch.float32) -> Tensor:
    """``deq(param)`` in ``dtype`` (None: the dtype it was quantized from), whatever layout bitsandbytes left
    the weight in."""
    import bitsandbytes.functional as bnb_f

    weight = bnb_f.dequantize_4bit(*_as_computed(param))
    return weight if dtype is None else weight.to(dtype)


def linear_4bit(module: nn.Module, param, spec: QuantSpec) -> nn.Module:
    """A bitsandbytes ``Linear4bit`` holding ``param``, with ``module``'s bias (shared, not copied)."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=False, compute_dtype=spec.dtype,
                              compress_statistics=spec.double_quant, quant_type=spec.quant_type,
                              quant_storage=spec.quant_storage, device="meta")
    layer.weight = param
    param.module = layer
    layer.bias = module.bias
    keep_standard_layout(layer)
    return layer


@dataclass
class QuantizedLayer:
    """What quantizing one target did, for the per-layer report."""

    quant_type: str
    dequantized_base: bool
    ratios: list[float] = field(default_factory=list)  # error ratio after the initial fit, then per refit
    init_error: float = 0.0  # ‖W − s·B0A0‖_F / ‖W‖_F with the final factors
    drift: float = 0.0  # ‖deq(Q(W_res)) + s·B0A0 − W‖_F / ‖W‖_F
    max_abs_drift: float = 0.0

    def report(self, name: str, shape: tuple[int, int], r: int, scaling: float, optimum: float | None):
        from .report import LayerReport

        return LayerReport(name, shape, r, scaling, self.init_error, optimum, self.drift, self.max_abs_drift,
                           quantized=self.quant_type, quant_ratios=tuple(self.ratios),
                           dequantized_base=self.dequantized_base)


def error_ratio(W: Tensor, deq_residual: Tensor, product: Tensor, qlora_error: float) -> float:
    """‖deq(Q(W_res)) + s·B0A0 − W‖_F / ‖deq(Q(W)) − W‖_F (1.0: plain QLoRA's error)."""
    error = float(torch.linalg.matrix_norm(deq_residual + product - W))
    return error / qlora_error if qlora_error > 0 else (1.0 if error == 0 else float("inf"))


def _refit(method: Method, target, W: Tensor, deq_residual: Tensor, options) -> Factors:
    """LoftQ step: the method's closed form fitted to ``W − deq(Q(W_res))`` (the SVD solver for inilora)."""
    refit_options = dataclasses.replace(options, progress=False, cache=False,
                                        solver="svd" if options.solver == "adam" else options.solver)
    goal = Target(target.name, W - deq_residual, target.r, target.scaling)
    return compute_factors(method, [goal], refit_options)[target.name]


def _quantize_one(method: Method, target, module: nn.Module, factors: Factors, spec: QuantSpec, options,
                  refine: bool):
    W = target.weight.float()
    s = target.scaling
    plain_error = None if target.dequantized else float(torch.linalg.matrix_norm(dequantize(quantize(W, spec)) - W))
    record = QuantizedLayer(spec.quant_type, target.dequantized)
    for step in range(options.quant_iters + 1 if refine else 1):
        if step:  # the optimum reported stays W's: the report's fit ratio then shows how far the refit moved
            refit = _refit(method, target, W, deq, options)
            factors = Factors(refit.A0, refit.B0, factors.optimum)
        product = s * (factors.B0.float() @ factors.A0.float())
        param = quantize(W - product, spec)
        deq = dequantize(param)
        if plain_error is not None:
            record.ratios.append(error_ratio(W, deq, product, plain_error))
    norm = float(torch.linalg.matrix_norm(W)) or 1.0
    record.init_error = float(torch.linalg.matrix_norm(W - product)) / norm
    difference = deq + product - W
    record.drift = float(torch.linalg.matrix_norm(difference)) / norm
    record.max_abs_drift = float(difference.abs().max())
    return factors, linear_4bit(module, param, spec), record


@dataclass
class QuantizedTargets:
    """The 4-bit residual layers swapped into a model, with what undoes the swap."""

    factors: dict[str, Factors]
    records: dict[str, QuantizedLayer]
    originals: dict[str, nn.Module]
    model: nn.Module
    flag_was: bool | None  # the model's is_loaded_in_4bit before

    def restore(self) -> None:
        for name, module in self.originals.items():
            _set_submodule(self.model, name, module)
        if self.flag_was is None:
            delattr(self.model, FLAG)
        else:
            setattr(self.model, FLAG, self.flag_was)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def needs_quantization(targets, options) -> bool:
    """``quantize`` was asked for, or some target is already 4-bit (and must stay so)."""
    return options.quantize is not None or any(t.dequantized for t in targets)


def quantize_targets(model: nn.Module, method: Method, targets, factors: dict[str, Factors], options,
                     refine: bool = True) -> QuantizedTargets:
    """Before PEFT wraps the model: replace each target by a ``Linear4bit`` holding ``Q(W − s·B0·A0)``
    (targets already 4-bit are re-quantized as they were). With ``refine``, ``options.quant_iters``
    LoftQ-style refits. Everything is computed before the first module is swapped."""
    modules = {t.name: model.get_submodule(t.name) for t in targets}
    specs = {}
    for t in targets:
        module = modules[t.name]
        if isinstance(module, Conv1D):
            raise InitError(f"Layer {t.name!r} is a transformers Conv1D; quantize= supports nn.Linear targets only.")
        if is_4bit(module):
            specs[t.name] = QuantSpec.of_layer(module)
            if options.quantize not in (None, specs[t.name].quant_type):
                raise InitError(f"Layer {t.name!r} is already {specs[t.name].quant_type}; quantize={options.quantize!r} "
                                "would change its format. Leave quantize unset to keep the model's own.")
        else:
            specs[t.name] = QuantSpec(options.quantize, options.quant_double, t.weight.dtype)
    if options.quant_iters and refine and not method.best_rank_r:
        refittable = [m.name for m in REGISTRY.values() if m.best_rank_r]
        raise InitError(f"quant_iters refits the factors to the best rank-r approximation, which is what "
                        f"{', '.join(refittable)} compute; {method.name} would stop being itself.")
    new_factors, records, replacements = {}, {}, {}
    with torch.no_grad():
        for t in targets:
            new_factors[t.name], replacements[t.name], records[t.name] = _quantize_one(
                method, t, modules[t.name], factors[t.name], specs[t.name], options, refine)
    flag_was = getattr(model, FLAG, None)
    for name, module in replacements.items():
        _set_submodule(model, name, module)
    setattr(model, FLAG, True)  # as transformers' bnb loader sets it: PEFT then wraps with its bnb LoRA layers
    return QuantizedTargets(new_factors, records, modules, model, flag_was)


def dense_linear(module: nn.Module, weight: Tensor) -> nn.Linear:
    """A plain ``nn.Linear`` (in the 4-bit layer's compute dtype) holding ``weight`` and the layer's bias."""
    layer = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
    dtype = module.weight.quant_state.dtype
    layer.weight = nn.Parameter(weight.to(dtype).contiguous(), requires_grad=False)
    if module.bias is not None:
        layer.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
    return layer


def clear_flag_if_dense(model: nn.Module) -> None:
    """After merging: a model with no 4-bit layer left is not 4-bit any more."""
    if getattr(model, FLAG, False) and getattr(model, "hf_quantizer", None) is None and not any(
            is_4bit(m) for m in model.modules()):
        setattr(model, FLAG, False)


def warn_inexact(report, action: str) -> None:
    """Say, with the number, how far a result on a 4-bit residual is from the full-precision one."""
    quantized = [layer for layer in report.layers if layer.quantized] if report else []
    if not quantized:
        return
    worst = max(quantized, key=lambda layer: layer.drift)
    warnings.warn(f"{action} on a 4-bit residual is not exact: Q(W_res) + s·B·A differs from W + ΔW by the residual's "
                  f"quantization error, up to {worst.drift:.3g} of ‖W‖ (relative Frobenius norm, layer {worst.name!r}).",
                  QuantizedExportWarning, stacklevel=3)

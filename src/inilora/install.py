"""Installing initial factors in a PEFT LoRA layer, shared by ``get_peft_model`` and ``from_pretrained``:
subtract ``s·B0·A0`` from the base weight (or report a 4-bit residual installed before PEFT wrapped the layer),
measure the drift, and warn when it exceeds the threshold. Imported by :mod:`inilora.init` and
:mod:`inilora.persistence`; it imports neither."""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer

from . import layouts
from .memory import release_freed_memory
from .methods import Method
from .options import InitOptions
from .peft_glue import held_weight, layer_layout, layer_matrices, mark_residual, residual_as_held, set_residual
from .quantize import QuantizedTargets
from .report import InitReport, LayerReport


class InitDriftWarning(UserWarning):
    """The initialized model differs from the base by more than the stated threshold (rounding of a
    low-precision residual); ``residual_fp32=True`` removes it."""


def install_layer(layer: BaseTunerLayer, adapter_name: str, name: str, A0: torch.Tensor, B0: torch.Tensor,
                  method: Method, keep_fp32: bool, optimum: float | None,
                  quantized: QuantizedTargets | None = None, nonzero: bool | None = None) -> LayerReport:
    """Subtract ``s·B0·A0`` (factors as stored, in PEFT's layout; product in fp32) from the base weight of one
    layer and measure what that did. The adapter's own A/B are not touched. A 4-bit residual was installed
    before PEFT wrapped the layer (``quantized``): only its report is made here. A layer of several matrices
    (experts) reports its worst one. ``nonzero``: the weight is known to have a non-zero entry (plain LoRA's
    error, ‖W − 0‖/‖W‖, is then 1 without reading the weight again)."""
    s = layer.scaling[adapter_name]
    layout = layer_layout(layer)
    A0s, B0s = layouts.split(A0, B0, layout)
    r = layer.r[adapter_name]
    if quantized is not None:
        mark_residual(layer, method)
        return quantized.records[name].report(name, (B0.shape[0], A0.shape[1]), A0.shape[0], s, optimum)
    if not method.residual and not B0.any():  # plain LoRA: a zero product, the weight untouched: nothing moved
        weight = layer_matrices(layer).detach()
        return LayerReport(name, tuple(weight.shape[1:]), r, s, float(bool(nonzero or weight.any())), optimum, 0.0, 0.0)
    held = layer_matrices(layer).detach()
    A0s, B0s = A0s.to(held.device).float(), B0s.to(held.device).float()
    if method.residual and (held.dtype == torch.float32 or not keep_fp32) and _holds(layer, held):
        # W − s·B0·A0 written into the weight (in its dtype) a block of rows at a time: neither the product nor
        # the difference is ever weight-sized (a fresh weight-sized tensor costs more in page faults than its product)
        error, drift, largest = _subtract_in_place(held, A0s, B0s, s)
        mark_residual(layer, method)
        return LayerReport(name, tuple(held.shape[1:]), r, s, float(error.max()), optimum, float(drift.max()),
                           float(largest.max()))
    W = held.float()  # an fp32 weight is read where it is held: what is written back is measured before it is
    product = layouts.product(A0s, B0s, s)
    norm = torch.linalg.matrix_norm(W)
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    difference = W - product
    error = torch.linalg.matrix_norm(difference) / norm
    # drift: what the layer will hold, plus the product, against the original (in the product's storage)
    product.add_(residual_as_held(layer, difference, keep_fp32) if method.residual else W).sub_(W)
    if method.residual:
        set_residual(layer, difference, method, keep_fp32)
    del difference
    drift = product
    low, high = torch.aminmax(drift)  # the largest |entry| without an |drift| tensor
    report = LayerReport(name, tuple(W.shape[1:]), r, s, float(error.max()), optimum,
                         float((torch.linalg.matrix_norm(drift) / norm).max()), float(torch.maximum(-low, high)))
    freed = (2 + (W is not held)) * W.numel() * W.element_size()  # product, difference, fp32 copy
    del W, held, product, drift
    release_freed_memory(freed)
    return report


_BLOCK_BYTES = 4 << 20  # rows of W − P formed at a time by _subtract_in_place


def _holds(layer: BaseTunerLayer, matrices: torch.Tensor) -> bool:
    """Whether ``matrices`` is a view of the weight the layer holds (writing it writes the weight)."""
    base_layer, attr = held_weight(layer)
    return matrices.untyped_storage().data_ptr() == getattr(base_layer, attr).untyped_storage().data_ptr()


def _subtract_in_place(W: torch.Tensor, A0: torch.Tensor, B0: torch.Tensor,
                       scaling: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Overwrite the matrices ``W (E × out × in)`` with ``W − P``, ``P = s·B0·A0`` (fp32 factors), a block of
    rows at a time: the difference is formed in fp32 and rounded to W's dtype as it is written. Returns, per
    matrix: ‖W − P‖_F / ‖W‖_F (‖W − P‖_F where W = 0), the drift ‖W_res + P − W‖_F / ‖W‖_F of what the layer now
    holds (0 but for rounding) and its largest |entry|; norms summed in fp32 within a block and in fp64 over
    blocks. Each entry is the whole-matrix arithmetic's, bit for bit (a row block of ``B0 @ A0`` is that
    product's rows)."""
    E, rows, cols = W.shape
    step = min(rows, max(1, _BLOCK_BYTES // (E * cols * 4)))
    product, difference = W.new_empty(E, step, cols, dtype=torch.float32), W.new_empty(E, step, cols, dtype=torch.float32)
    exact = W.dtype == torch.float32
    original = None if exact else W.new_empty(E, step, cols, dtype=torch.float32)
    squares = torch.zeros(3, E, dtype=torch.float64, device=W.device)  # of W − P, of W, of the drift
    largest = torch.zeros(E, dtype=torch.float32, device=W.device)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        held, p, d = W[:, start:stop], product[:, :stop - start], difference[:, :stop - start]
        w = held if exact else original[:, :stop - start].copy_(held)
        layouts.product(A0, B0[:, start:stop], scaling, out=p)
        torch.sub(w, p, out=d)
        squares[0] += torch.linalg.vector_norm(d, dim=(1, 2)).double().square()
        squares[1] += torch.linalg.vector_norm(w, dim=(1, 2)).double().square()
        residual = d if exact else d.to(W.dtype)
        p.add_(residual).sub_(w)  # the drift of these entries
        squares[2] += torch.linalg.vector_norm(p, dim=(1, 2)).double().square()
        largest = torch.maximum(largest, p.abs_().amax(dim=(1, 2)))
        held.copy_(residual)
    error, weight, drift = squares.sqrt()
    weight = torch.where(weight > 0, weight, torch.ones_like(weight))
    return error / weight, drift / weight, largest


def init_dora_magnitude(layer: BaseTunerLayer, adapter_name: str, config: LoraConfig) -> None:
    """PEFT's DoRA magnitude, computed again now that the layer holds its residual and initial factors:
    the row norms of ``W_res + s·B0·A0`` (= ``W``; for a 4-bit residual, what the layer computes), so the
    initialized DoRA layer computes what the base layer did. PEFT computed it while wrapping, from ``W``
    and its own ``B = 0``, before the residual existed."""
    variant = getattr(layer, "lora_variant", {}).get(adapter_name)
    if variant is not None and adapter_name in getattr(layer, "lora_magnitude_vector", {}):
        variant.init(layer, adapter_name=adapter_name, config=config)


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

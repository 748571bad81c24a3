"""How PEFT's LoRA adapts each kind of weight, seen as ``out × in`` matrices: the one place that turns a
layer's weight into its matrices and back, and PEFT's ``lora_A``/``lora_B`` tensors into per-matrix factors
``A0: r × in``, ``B0: out × r`` and back.

=====================  ==========================  ==========================================================
layer                  weight                      matrix (out × in) and PEFT's factors
=====================  ==========================  ==========================================================
``nn.Linear``          ``out × in``                the weight; ``lora_A.weight: r × in``, ``lora_B.weight: out × r``
transformers Conv1D    ``in × out``                its transpose; factors as ``nn.Linear``
``nn.Embedding``       ``num × dim``               its transpose (``dim × num``); ``lora_embedding_A: r × num``,
                                                   ``lora_embedding_B: dim × r`` (PEFT adds ``(B A)ᵀ``)
``nn.Conv1d/2d/3d``    ``out × in × k…``           ``out × (in·k…)``; ``lora_A``: a k-sized conv ``r × in × k…``,
                                                   ``lora_B``: a 1×1 conv ``out × r × 1…``
expert parameter       ``E × out × in`` (or        one matrix per expert; ``lora_A.weight: (E·r) × in`` (expert e
(``target_parameters``) ``E × in × out``) or 2-D    rows ``e·r … e·r+r−1``), ``lora_B.weight: out × (r·E)`` (expert
                                                   e columns ``e, E+e, …``), PEFT's ``ParamWrapper`` layout
=====================  ==========================  ==========================================================

Every function takes and returns batches ``(E, …)`` of matrices (``E = 1`` for a single-matrix layer), so
one code path serves all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SUPPORTED = ("nn.Linear, transformers' Conv1D, nn.Embedding, nn.Conv1d/2d/3d (groups=1, dilation=1, "
             "padding_mode='zeros') and 2-D/3-D parameters named in target_parameters")


@dataclass(frozen=True)
class Layout:
    """How one adapted weight maps to matrices. ``kind``: ``linear``, ``conv1d_t`` (transformers' Conv1D),
    ``embedding``, ``conv`` or ``param``; ``experts``: matrices in the weight; ``swapped``: a 3-D parameter
    stored ``E × out × in`` (PEFT's default for MoE experts) rather than ``E × in × out``."""

    kind: str
    experts: int = 1
    swapped: bool = False

    @property
    def is_param(self) -> bool:
        return self.kind == "param"


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a module PEFT would adapt cannot hold an exact residual; None if it can."""
    if isinstance(module, CONVS):
        if module.groups != 1:
            return (f"a grouped {type(module).__name__} (groups={module.groups}): PEFT's conv LoRA puts a full "
                    "k-sized conv in lora_A and a grouped 1×1 conv in lora_B, whose product is no low-rank factoring "
                    "of the grouped kernel (PEFT cannot merge it either)")
        if any(d != 1 for d in module.dilation):
            return (f"a dilated {type(module).__name__} (dilation={module.dilation}): PEFT's lora_A conv is not "
                    "dilated, so its product is not the kernel's")
        if module.padding_mode != "zeros":
            return (f"a {type(module).__name__} with padding_mode={module.padding_mode!r}: PEFT's lora_A conv pads "
                    "with zeros, so its product is not the kernel's")
    return None


def module_layout(module: nn.Module) -> Layout | None:
    """The layout of a module target; None for a type inilora does not support."""
    if isinstance(module, Conv1D):
        return Layout("conv1d_t")
    if isinstance(module, nn.Linear):
        return Layout("linear")
    if isinstance(module, nn.Embedding):
        return Layout("embedding")
    if isinstance(module, CONVS):
        return Layout("conv")
    return None


def param_layout(module: nn.Module, param: Tensor) -> Layout | None:
    """The layout of a ``target_parameters`` parameter, by PEFT's ``ParamWrapper`` rule; None if not 2-D/3-D."""
    shape = getattr(param, "ds_shape", param.shape)
    if len(shape) == 2:
        return Layout("param", 1, True)
    if len(shape) == 3:
        return Layout("param", shape[0], not getattr(module, "is_transposed", False))
    return None


def matrices(weight: Tensor, layout: Layout) -> Tensor:
    """The weight as ``E × out × in`` matrices (a view where the storage allows, else a copy)."""
    if layout.kind in ("conv1d_t", "embedding"):
        return weight.T.unsqueeze(0)
    if layout.kind == "conv":
        return weight.reshape(weight.shape[0], -1).unsqueeze(0)
    if layout.is_param:
        if weight.dim() == 2:
            return weight.unsqueeze(0)
        return weight if layout.swapped else weight.transpose(1, 2)
    return weight.unsqueeze(0)


def to_weight(mats: Tensor, layout: Layout, shape: torch.Size) -> Tensor:
    """``E × out × in`` matrices back in the weight's layout and ``shape`` (inverse of :func:`matrices`)."""
    if layout.kind in ("conv1d_t", "embedding"):
        return mats[0].T
    if layout.kind == "conv":
        return mats[0].reshape(shape)
    if layout.is_param and len(shape) == 3 and not layout.swapped:
        return mats.transpose(1, 2)
    return mats.reshape(shape)


def peft_factors(layer: nn.Module, adapter: str, layout: Layout) -> tuple[Tensor, Tensor]:
    """The PEFT layer's own ``(A, B)`` tensors for ``adapter`` (parameters, written in place)."""
    if layout.kind == "embedding":
        return layer.lora_embedding_A[adapter], layer.lora_embedding_B[adapter]
    return layer.lora_A[adapter].weight, layer.lora_B[adapter].weight


def split(A: Tensor, B: Tensor, layout: Layout) -> tuple[Tensor, Tensor]:
    """PEFT's ``(A, B)`` -> per-matrix factors ``(E × r × in, E × out × r)`` (views)."""
    E = layout.experts
    if layout.kind == "conv":
        return A.reshape(A.shape[0], -1).unsqueeze(0), B.reshape(B.shape[0], -1).unsqueeze(0)
    if E > 1:
        return A.reshape(E, -1, A.shape[-1]), B.reshape(B.shape[0], -1, E).permute(2, 0, 1)
    return A.unsqueeze(0), B.unsqueeze(0)


def join(A0: Tensor, B0: Tensor, layout: Layout, a_shape: torch.Size, b_shape: torch.Size) -> tuple[Tensor, Tensor]:
    """Per-matrix factors ``(E × r × in, E × out × r)`` -> PEFT's ``(A, B)`` of shapes ``a_shape``, ``b_shape``."""
    E = layout.experts
    if E > 1:
        return A0.reshape(a_shape), B0.permute(1, 2, 0).reshape(b_shape)
    return A0[0].reshape(a_shape), B0[0].reshape(b_shape)


def product(A0: Tensor, B0: Tensor, scaling: float, out: Tensor | None = None) -> Tensor:
    """``s · B0 @ A0`` per matrix, in fp32 (``E × out × in``; into ``out`` when given, e.g. a block of rows from
    the rows of ``B0``); scaled in place (no second weight-sized tensor)."""
    product = torch.bmm(B0.float(), A0.float(), out=out)
    return product if scaling == 1 else product.mul_(scaling)


def weight_view(module: nn.Module) -> Tensor:
    """The layer's weight as ``out × in`` (a view: ``Conv1D`` stores it transposed; an embedding's
    is its transpose, a convolution's kernel ``out × (in·k…)``)."""
    layout = module_layout(module) or Layout("linear")
    return matrices(module.weight, layout)[0]

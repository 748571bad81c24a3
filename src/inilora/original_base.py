"""The original base model behind a residual adapter, where PEFT would give the residual instead.

A residual method stores ``W_res = W − s·B0·A0`` in the base layer, so PEFT's "the base model" is no longer
the pretrained one: ``with peft_model.disable_adapter():`` (TRL's DPO reference model, a base-vs-tuned
comparison) would compute ``W_res·x``, and ``peft_model.unload()`` would hand back ``W_res``. This module keeps
both meaning what they mean for plain LoRA: wherever the adapter takes no part (disabled, another adapter
active, PEFT's mixed-batch "__base__" rows) each layer adds its initial product ``s·B0·A0·x`` back (the model
computes what it computed at initialization: the base, up to the init drift, so another adapter also sits on the
base it was trained for), and ``unload`` writes ``W_res + s·B0·A0`` back into the weights."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .errors import InitError
from . import layouts
from .peft_glue import held_weight, layer_layout, layer_matrices, lora_layers, restore_plain_layer
from .quantize import is_4bit
from .state import InitState, LayerState


def _rows_without(layer: nn.Module, adapter_name: str, adapter_names) -> torch.Tensor | bool:
    """Which rows of this call's batch the adapter takes no part in (True: all, False: none, else a mask), the
    way PEFT's LoRA forward decides: disabled, another adapter active, a merged other adapter, or PEFT's mixed
    batch (``adapter_names=[...]`` per row, "__base__" for the base)."""
    if layer.disable_adapters:
        return True
    if adapter_names is not None:
        return torch.tensor([name != adapter_name for name in adapter_names])
    if layer.merged:
        return adapter_name not in layer.merged_adapters
    return adapter_name not in layer.active_adapters


def _initial_product_where_inactive(state: LayerState, adapter_name: str, layout: layouts.Layout):
    cached: dict = {}

    def hook(layer: nn.Module, args, kwargs, output):
        rows = _rows_without(layer, adapter_name, kwargs.get("adapter_names"))
        if rows is False or (rows is not True and not rows.any()):
            return None
        if rows is not True:
            rows = rows.to(output.device)
        x = args[0] if rows is True else args[0][rows]
        lora_A = layouts.peft_factors(layer, adapter_name, layout)[0]  # PEFT's own LoRA path: its dtype and device
        key = (lora_A.device, lora_A.dtype)
        if key not in cached:
            cached.clear()
            cached[key] = (state.A0.to(device=lora_A.device, dtype=lora_A.dtype),
                           state.B0.to(device=lora_A.device, dtype=lora_A.dtype))
        A0, B0 = cached[key]
        if layout.kind == "embedding":  # PEFT's embedding LoRA: embed(x, Aᵀ) @ Bᵀ
            initial = layer._embed(x, A0.T) @ B0.T
            if (embed_scale := layer._get_embed_scale()) is not None:
                initial = initial * embed_scale.to(initial.dtype)
        elif layout.kind == "conv":  # PEFT's conv LoRA: lora_A's k-sized conv, then lora_B's 1×1 conv
            initial = layer.lora_B[adapter_name]._conv_forward(
                layer.lora_A[adapter_name]._conv_forward(x.to(A0.dtype), A0, None), B0, None)
        else:
            initial = F.linear(F.linear(x.to(A0.dtype), A0), B0)
        initial = (initial * state.scaling).to(output.dtype)
        if rows is True:
            return output + initial
        output = output.clone()
        output[rows] += initial
        return output

    return hook


def keep_the_original_base(peft_model: PeftModel, state: InitState) -> None:
    """Make ``unload()`` return the original base (:func:`unload`) and, for a residual method, compute it
    wherever the adapter takes no part: ``disable_adapter()``, another adapter made active (``set_adapter``) or
    merged, and the "__base__" rows (and other adapters' rows) of PEFT's mixed-batch ``adapter_names``."""
    peft_model.unload = types.MethodType(unload, peft_model)
    if not state.is_residual:
        return
    for name, layer in lora_layers(peft_model, list(state.layers)).items():
        layout = layer_layout(layer)
        if layout.is_param:  # the module's output is not linear in the parameter: the weight itself is swapped
            layer.register_forward_pre_hook(_original_parameter_where_inactive(state.layers[name], state.adapter_name,
                                                                               layout), with_kwargs=True)
            layer.register_forward_hook(_put_residual_back, always_call=True)
            continue
        # prepended: it adds in the base layer's output dtype, before an fp32 residual's sum is cast back
        layer.register_forward_hook(_initial_product_where_inactive(state.layers[name], state.adapter_name, layout),
                                    prepend=True, with_kwargs=True)


def _original_parameter_where_inactive(state: LayerState, adapter_name: str, layout: layouts.Layout):
    """For a targeted parameter (``ParamWrapper``, which has no mixed batches): while the adapter takes no
    part in a call, the parameter holds ``W_res + s·B0·A0`` (computed in fp32) and the residual is put back,
    unchanged, after it (:func:`_put_residual_back`)."""
    def hook(layer: nn.Module, args, kwargs):
        if _rows_without(layer, adapter_name, None) is not True:
            return None
        base, attr = held_weight(layer)
        param = getattr(base, attr)
        A0s, B0s = layouts.split(state.A0.to(param.device), state.B0.to(param.device), layout)
        original = layouts.matrices(param.detach(), layout).float() + layouts.product(A0s, B0s, state.scaling)
        layer._inilora_residual_data = param.data
        param.data = layouts.to_weight(original, layout, param.shape).to(param.dtype).contiguous()
        return None

    return hook


def _put_residual_back(layer: nn.Module, args, output):
    residual = layer.__dict__.pop("_inilora_residual_data", None)
    if residual is not None:
        base, attr = held_weight(layer)
        getattr(base, attr).data = residual
    return None


def unload(peft_model: PeftModel) -> nn.Module:
    """PEFT's ``unload`` (the base model without the adapter), with what ``merge_adapter()`` merged unmerged
    first (PEFT's own leaves it in the weights) and each residual weight given back as ``W_res + s·B0·A0``
    (computed in fp32, stored in the model's dtype): the original weight up to the init drift. A 4-bit residual
    cannot give back the base it came from (its 4-bit rounding is not the original's): it raises
    :class:`InitError` before anything changes; reload the base model instead."""
    state: InitState = peft_model.inilora
    layers = lora_layers(peft_model, list(state.layers)) if state.is_residual else {}
    four_bit = [name for name, layer in layers.items() if is_4bit(layer.get_base_layer())]
    if four_bit:
        raise InitError(f"unload cannot give back the original base of a 4-bit residual (layer {four_bit[0]!r}): "
                        "W − s·B0·A0 was re-quantized. Load the base model again, or use inilora.merge_and_unload "
                        "for the trained model.")
    with torch.no_grad():
        if any(isinstance(m, BaseTunerLayer) and m.merged for m in peft_model.modules()):
            peft_model.base_model.unmerge_adapter()  # PEFT's unload keeps what merge_adapter() merged
        for name, layer in layers.items():
            (base, attr), layer_state, layout = held_weight(layer), state.layers[name], layer_layout(layer)
            weight = layer_matrices(layer)
            A0, B0 = layouts.split(layer_state.A0.to(weight.device), layer_state.B0.to(weight.device), layout)
            restore_plain_layer(base, weight.float() + layouts.product(A0, B0, layer_state.scaling), layout, attr)
    model = peft_model.base_model.unload()
    del peft_model.inilora, peft_model.save_pretrained, peft_model.unload
    return model

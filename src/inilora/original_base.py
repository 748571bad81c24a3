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
from .peft_glue import lora_layers, restore_plain_layer, weight_view
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


def _initial_product_where_inactive(state: LayerState, adapter_name: str):
    cached: dict = {}

    def hook(layer: nn.Module, args, kwargs, output):
        rows = _rows_without(layer, adapter_name, kwargs.get("adapter_names"))
        if rows is False or (rows is not True and not rows.any()):
            return None
        if rows is not True:
            rows = rows.to(output.device)
        x = args[0] if rows is True else args[0][rows]
        lora_A = layer.lora_A[adapter_name].weight  # PEFT's own LoRA path: x in the adapter's dtype and device
        key = (lora_A.device, lora_A.dtype)
        if key not in cached:
            cached.clear()
            cached[key] = (state.A0.to(device=lora_A.device, dtype=lora_A.dtype),
                           state.B0.to(device=lora_A.device, dtype=lora_A.dtype))
        A0, B0 = cached[key]
        initial = (F.linear(F.linear(x.to(A0.dtype), A0), B0) * state.scaling).to(output.dtype)
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
        # prepended: it adds in the base layer's output dtype, before an fp32 residual's sum is cast back
        layer.register_forward_hook(_initial_product_where_inactive(state.layers[name], state.adapter_name),
                                    prepend=True, with_kwargs=True)


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
            base, layer_state = layer.get_base_layer(), state.layers[name]
            weight = weight_view(base)
            A0, B0 = (t.to(device=weight.device, dtype=torch.float32) for t in (layer_state.A0, layer_state.B0))
            restore_plain_layer(base, weight.float() + layer_state.scaling * (B0 @ A0))
    model = peft_model.base_model.unload()
    del peft_model.inilora, peft_model.save_pretrained, peft_model.unload
    return model

"""Leaving inilora behind: a trained adapter as a plain PEFT LoRA for the *original* base (exact at rank
2r, or truncated to a servable rank with its error reported), or merged into a plain model."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from .errors import InitError
from . import layouts
from ._io import replaced_folder
from .peft_glue import adapter_keys, held_weight, layer_layout, layer_matrices, lora_layers, restore_plain_layer
from .persistence import replaces_adapter, state_of
from .quantize import clear_flag_if_dense, dense_linear, dequantize, is_4bit, warn_inexact
from .truncation import ExportTruncationWarning, export_config, truncate

EXPORT_FILE = "inilora_export.json"  # what export_lora did to each layer: rank and relative error


def export_lora(peft_model: PeftModel, path: str | os.PathLike, rank: int | None = None, *,
                warn_above: float = 1e-2) -> Path:
    """Write a plain PEFT LoRA adapter for the *original* base model; return the directory written.

    What was trained is ``ΔW = s(BA − B0A0) = s·[B, −B0]·[A; A0]``: a difference of two rank-r products,
    so the exact adapter has rank **2r** (alpha doubled, ×√2 under rsLoRA, so the scaling is unchanged).
    Servers cap the rank: vLLM's default ``--max-lora-rank`` is 16, so an exact r=16 export needs
    ``--max-lora-rank 32``. With ``rank=k`` each layer is written at rank ``min(k, 2r)`` as the best
    rank-k approximation of its ``ΔW`` (truncated SVD), alpha set to keep the scaling; the per-layer
    relative error ``‖ΔW_k − ΔW‖_F / ‖ΔW‖_F`` goes to ``inilora_export.json`` next to the adapter, and
    an :class:`ExportTruncationWarning` names the worst layer when it exceeds ``warn_above``.
    ``rank >= 2r`` is exact. Plain LoRA is written as trained (rank r; B0 is zero), truncated likewise.

    Atomic, as :func:`inilora.save_pretrained`: a kill or a failure leaves ``path`` as it was. Replaced:
    the adapter's files (``adapter_config.json``, ``adapter_model.safetensors``, ``inilora_export.json``;
    an ``adapter_model.bin`` or inilora's own files from an earlier save there are removed); every other
    file under ``path`` is kept.
    """
    state = state_of(peft_model)
    warn_inexact(state.report, "Exporting to the original base")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise InitError(f"rank must be a positive int or None, got {rank!r}.")
    config: LoraConfig = peft_model.peft_config[state.adapter_name]
    # no embedding weights (PEFT's "auto" adds them when an embedding is targeted): this adapter is for the
    # original base, and the embedding the model holds is a residual
    tensors = get_peft_model_state_dict(peft_model, adapter_name=state.adapter_name, save_embedding_layers=False)
    ranks, errors = {}, {}
    keys = adapter_keys(peft_model, list(state.layers))
    for name, layer in state.layers.items():
        (a_key, b_key), layout = keys[name]
        A, B = tensors[a_key], tensors[b_key]
        As, Bs = layouts.split(A, B, layout)  # E × r × in, E × out × r
        if state.is_residual:  # ΔW/s = [B, −B0]·[A; A0], for each matrix
            A0s, B0s = layouts.split(layer.A0.to(A), layer.B0.to(B), layout)
            As, Bs = torch.cat([As, A0s], dim=1), torch.cat([Bs, -B0s], dim=2)
        full = As.shape[1]
        ranks[name] = full if rank is None else min(rank, full)
        if ranks[name] < full:
            lows = [truncate(b, a, ranks[name]) for a, b in zip(As, Bs)]
            As, Bs = torch.stack([low.A for low in lows]), torch.stack([low.B for low in lows])
            errors[name] = max(low.relative_error for low in lows)
        else:
            errors[name] = 0.0
        k, E = ranks[name], layout.experts
        A, B = layouts.join(As, Bs, layout, (k * E, *A.shape[1:]), (B.shape[0], k * E, *B.shape[2:]))
        tensors[a_key], tensors[b_key] = A.contiguous(), B.contiguous()
    config = export_config(config, ranks)
    config.init_lora_weights = True
    config.inference_mode = True
    out = Path(path)
    worst = max(errors, key=errors.get, default=None)
    with replaced_folder(out, replaces_adapter(EXPORT_FILE)) as new:
        config.save_pretrained(str(new))
        save_file({k: v.contiguous() for k, v in tensors.items()}, new / "adapter_model.safetensors",
                  metadata={"format": "pt"})
        (new / EXPORT_FILE).write_text(json.dumps({
            "rank": rank, "max_relative_error": errors.get(worst, 0.0),
            "layers": {name: {"rank": ranks[name], "relative_error": errors[name]} for name in ranks}}, indent=2))
    if worst is not None and errors[worst] > warn_above:
        warnings.warn(f"export at rank {rank}: {sum(e > warn_above for e in errors.values())} layer(s) differ from "
                      f"the trained update by more than {warn_above:g} (relative Frobenius norm; worst {worst!r}: "
                      f"{errors[worst]:.3g}); per-layer errors in {out / EXPORT_FILE}.",
                      ExportTruncationWarning, stacklevel=2)
    return out



def merge_and_unload(peft_model: PeftModel) -> nn.Module:
    """A plain model with ``W_res + s·B·A = W + s(BA − B0A0)`` in every target, computed in fp32 and
    stored in the base model's dtype; PEFT merges and unloads its other trained parts (``modules_to_save``,
    ``trainable_token_indices``). A layer PEFT has already merged (``merge_adapter()``) holds ``s·B·A`` in its
    weight and keeps it; other adapters merged there stay merged, as with PEFT's ``merge_and_unload``. A LoRA
    bias on a layer without a bias cannot be merged: it raises :class:`InitError` before anything changes
    (``export_lora`` keeps it)."""
    state = state_of(peft_model)
    warn_inexact(state.report, "Merging")
    adapter = state.adapter_name
    layers = lora_layers(peft_model, list(state.layers))
    for name, layer in layers.items():  # checked before any layer is merged
        if layer.lora_bias.get(adapter) and layer.get_base_layer().bias is None:
            raise InitError(f"Layer {name!r} trains a LoRA bias (lora_bias=True) but has no bias of its own, so no "
                            "plain layer of the model's architecture can hold the merged result (PEFT's merge "
                            "refuses it too). export_lora writes an exact plain PEFT adapter that keeps the bias.")
    with torch.no_grad():
        for name, layer in layers.items():
            (base, attr), layout = held_weight(layer), layer_layout(layer)
            four_bit = is_4bit(base)  # merged into a dense layer: deq(Q(W_res)) + s·B·A, what the model computed
            merged = dequantize(base.weight).unsqueeze(0) if four_bit else layer_matrices(layer).float()
            already = adapter in layer.merged_adapters  # PEFT's merge_adapter() put s·B·A (and its bias) there
            if not already:
                merged += layouts.product(*layouts.split(*layouts.peft_factors(layer, adapter, layout), layout),
                                          layer.scaling[adapter])
                if adapter in getattr(layer, "lora_magnitude_vector", {}):  # DoRA: each row rescaled to its magnitude
                    magnitude = layer.lora_magnitude_vector[adapter].weight.detach().float().reshape(-1)
                    merged *= (magnitude.to(merged.device) / torch.linalg.vector_norm(merged, dim=2))[..., None]
            if four_bit:
                layer.base_layer = base = dense_linear(base, merged[0])
            else:
                restore_plain_layer(base, merged, layout, attr)
            if layer.lora_bias.get(adapter) and not already:
                base.bias += layer.scaling[adapter] * layer.lora_B[adapter].bias.to(base.bias.dtype)
        for module in peft_model.modules():  # PEFT's other trained parts (trainable_token_indices): PEFT merges them
            if isinstance(module, BaseTunerLayer) and not isinstance(module, LoraLayer):
                module.merge(adapter_names=[adapter])
    model = peft_model.base_model.unload()  # PEFT's own (inilora's would restore W): the merged bases
    clear_flag_if_dense(model)
    del peft_model.inilora, peft_model.save_pretrained, peft_model.unload  # what persistence.attach bound
    return model

"""Save, reload, export and merge IniLoRA adapters.

A saved directory is a normal PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``)
plus ``inilora_init.safetensors`` (the initial factors exactly as stored) and ``inilora_config.json``
(method, options, a fingerprint of each original base weight, a checksum of the init file). That is
all :func:`from_pretrained` needs to rebuild the residual from the original base, bit for bit.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path

import peft
import torch
from peft import LoraConfig, PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import InitOptions
from .errors import AdapterLoadError
from .init import install_layer, warn_on_drift
from .peft_glue import collect_targets, lora_layers, resolve_config, restore_plain_layer, weight_view
from .methods import Factors
from .quantize import (clear_flag_if_dense, dense_linear, dequantize, is_4bit, needs_quantization, quantize_targets,
                       warn_inexact)
from .report import InitReport
from .state import InitState, LayerState, fingerprint

INIT_FILE = "inilora_init.safetensors"
META_FILE = "inilora_config.json"
FORMAT_VERSION = 1
CARD_NOTE = """
## IniLoRA adapter — load it with `inilora`

This adapter was trained on a *residual* base (`W − s·B0·A0`, method `{method}`). Load it with
`inilora.from_pretrained(base_model, path)`, which rebuilds the residual from the original base.
Plain `peft.PeftModel.from_pretrained` would put it on the unmodified base and give a different model;
for plain PEFT, use the rank-2r adapter written by `inilora.export_lora`.
"""


def _state(peft_model: PeftModel) -> InitState:
    state = getattr(peft_model, "inilora", None)
    if not isinstance(state, InitState):
        raise ValueError("This model was not made by inilora.get_peft_model or inilora.from_pretrained.")
    return state


def _adapter_dir(path: str | os.PathLike, adapter_name: str) -> Path:
    # PEFT saves a non-default adapter into a subfolder named after it
    return Path(path) if adapter_name == "default" else Path(path) / adapter_name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_pretrained(peft_model: PeftModel, path: str | os.PathLike, **kwargs) -> None:
    """Save the adapter with PEFT and add what rebuilds its residual. ``kwargs`` go to PEFT's
    ``save_pretrained`` (e.g. ``is_main_process``)."""
    state = _state(peft_model)
    peft_model.save_pretrained(str(path), selected_adapters=[state.adapter_name], **kwargs)
    if not kwargs.get("is_main_process", True):
        return
    out = _adapter_dir(path, state.adapter_name)
    tensors = {}
    for name, layer in state.layers.items():
        tensors[f"{name}.lora_A0"] = layer.A0.contiguous()
        tensors[f"{name}.lora_B0"] = layer.B0.contiguous()
    save_file(tensors, out / INIT_FILE, metadata={"format": "pt", "inilora_format": str(FORMAT_VERSION)})
    optimum = {row.name: row.optimum for row in state.report.layers} if state.report else {}
    meta = {
        "format_version": FORMAT_VERSION,
        "adapter_name": state.adapter_name,
        "options": state.options.to_dict(),
        "init_file_sha256": _sha256(out / INIT_FILE),
        "versions": {"torch": torch.__version__, "peft": peft.__version__},
        "layers": {name: {"fingerprint": layer.fingerprint, "weight_dtype": str(layer.weight_dtype).split(".")[-1],
                          "scaling": layer.scaling, "residual_fp32": layer.residual_fp32,
                          "optimum": optimum.get(name)}
                   for name, layer in state.layers.items()},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    if state.is_residual:
        with open(out / "README.md", "a") as card:
            card.write(CARD_NOTE.format(method=state.options.method))


def _read_saved(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    meta_path, init_path = path / META_FILE, path / INIT_FILE
    if not (path / "adapter_config.json").is_file():
        raise AdapterLoadError(f"{path} holds no adapter_config.json: not a saved adapter.")
    if not meta_path.is_file():
        raise AdapterLoadError(f"{path} has no {META_FILE}: it was not saved by inilora.save_pretrained "
                               "(a plain PEFT adapter loads with peft.PeftModel.from_pretrained).")
    try:
        meta = json.loads(meta_path.read_text())
        expected = meta["init_file_sha256"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise AdapterLoadError(f"{meta_path} is corrupted ({exc}).") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterLoadError(f"{meta_path} has format version {meta.get('format_version')!r}; this inilora "
                               f"reads version {FORMAT_VERSION}.")
    if not init_path.is_file():
        raise AdapterLoadError(f"{path} is missing {INIT_FILE}, the initial factors the residual is rebuilt from.")
    if _sha256(init_path) != expected:
        raise AdapterLoadError(f"{init_path} is corrupted: its checksum differs from the one recorded at save time.")
    try:
        tensors = load_file(init_path)
    except (SafetensorError, OSError) as exc:
        raise AdapterLoadError(f"{init_path} is corrupted ({exc}).") from exc
    return meta, tensors


def from_pretrained(base_model: nn.Module, path: str | os.PathLike, *, adapter_name: str = "default",
                    is_trainable: bool = False) -> PeftModel:
    """Load an adapter saved by :func:`save_pretrained` onto a freshly loaded *original* base model.

    Everything is checked before the model is touched: the files' integrity, and that each target
    weight is byte-identical to the one the adapter was made on (fingerprints)."""
    path = Path(path)
    meta, tensors = _read_saved(path)
    options = InitOptions.from_kwargs(meta["options"].pop("method"), meta["options"])
    config = resolve_config(LoraConfig.from_pretrained(str(path)), base_model)
    targets = collect_targets(base_model, config, options.method, rank_limited=False,
                              residual=options.method != "lora")
    recorded = meta["layers"]
    found = {t.name for t in targets}
    if found != set(recorded):
        raise AdapterLoadError(f"The base model's target layers differ from the adapter's: missing "
                               f"{sorted(set(recorded) - found)[:5]}, unexpected {sorted(found - set(recorded))[:5]}.")
    for t in targets:
        info = recorded[t.name]
        dtype = str(t.weight.dtype).split(".")[-1]
        if dtype != info["weight_dtype"]:
            raise AdapterLoadError(f"Layer {t.name!r} of the base model is {dtype}; the adapter was made on a "
                                   f"{info['weight_dtype']} base. Load the base in {info['weight_dtype']}.")
        if fingerprint(t.weight) != info["fingerprint"]:
            raise AdapterLoadError(f"Layer {t.name!r} of the base model differs from the weight the adapter was made "
                                   "on (fingerprint mismatch): load the original base model.")
        for key in (f"{t.name}.lora_A0", f"{t.name}.lora_B0"):
            if key not in tensors:
                raise AdapterLoadError(f"{path / INIT_FILE} lacks {key}.")

    # the model changes from here on; a 4-bit residual is rebuilt (identically: quantization is deterministic) first
    quantized = None
    if needs_quantization(targets, options):
        quantized = quantize_targets(base_model, targets, {t.name: Factors(tensors[f"{t.name}.lora_A0"], tensors[
            f"{t.name}.lora_B0"], recorded[t.name]["optimum"]) for t in targets}, options, refine=False)
    try:
        peft_model = PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name,
                                               is_trainable=is_trainable)
    except Exception:
        if quantized:
            quantized.restore()
        raise
    state = InitState(options, adapter_name, report=InitReport(options.method, options.drift_warn_threshold))
    with torch.no_grad():
        for name, layer in lora_layers(peft_model, [t.name for t in targets]).items():
            A0, B0 = tensors[f"{name}.lora_A0"], tensors[f"{name}.lora_B0"]
            keep_fp32 = recorded[name]["residual_fp32"]
            state.report.layers.append(install_layer(layer, adapter_name, name, A0, B0, options.method, keep_fp32,
                                                     recorded[name]["optimum"], quantized))
            state.layers[name] = LayerState(A0, B0, layer.scaling[adapter_name], recorded[name]["fingerprint"],
                                            getattr(torch, recorded[name]["weight_dtype"]), keep_fp32)
    peft_model.inilora = state
    warn_on_drift(state.report)
    return peft_model


def export_lora(peft_model: PeftModel, path: str | os.PathLike) -> None:
    """Write a plain PEFT LoRA adapter for the *original* base: ``ΔW = s(BA − B0A0) = s·[B, −B0]·[A; A0]``,
    rank 2r with alpha doubled (×√2 under rsLoRA) so the scaling is unchanged. Plain LoRA is written
    as it is (its B0 is zero)."""
    state = _state(peft_model)
    warn_inexact(state.report, "Exporting to the original base")
    config: LoraConfig = copy.deepcopy(peft_model.peft_config[state.adapter_name])
    tensors = get_peft_model_state_dict(peft_model, adapter_name=state.adapter_name)
    if state.is_residual:
        for name, layer in state.layers.items():
            a_key, b_key = f"base_model.model.{name}.lora_A.weight", f"base_model.model.{name}.lora_B.weight"
            A, B = tensors[a_key], tensors[b_key]
            tensors[a_key] = torch.cat([A, layer.A0.to(A)], dim=0).contiguous()
            tensors[b_key] = torch.cat([B, -layer.B0.to(B)], dim=1).contiguous()
        alpha_factor = math.sqrt(2) if config.use_rslora else 2
        config.r *= 2
        config.lora_alpha *= alpha_factor
        config.rank_pattern = {k: 2 * v for k, v in config.rank_pattern.items()}
        config.alpha_pattern = {k: alpha_factor * v for k, v in config.alpha_pattern.items()}
    config.init_lora_weights = True
    config.inference_mode = True
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "adapter_model.safetensors",
              metadata={"format": "pt"})


def merge_and_unload(peft_model: PeftModel) -> nn.Module:
    """A plain model with ``W_res + s·B·A = W + s(BA − B0A0)`` in every target, computed in fp32 and
    stored in the base model's dtype; other PEFT wrappers (``modules_to_save``) are unloaded by PEFT."""
    state = _state(peft_model)
    warn_inexact(state.report, "Merging")
    adapter = state.adapter_name
    with torch.no_grad():
        for name, layer in lora_layers(peft_model, list(state.layers)).items():
            base = layer.get_base_layer()
            A = layer.lora_A[adapter].weight.float()
            B = layer.lora_B[adapter].weight.float()
            four_bit = is_4bit(base)  # merged into a dense layer: deq(Q(W_res)) + s·B·A, what the model computed
            merged = (dequantize(base.weight) if four_bit else weight_view(base).float()) + layer.scaling[adapter] * (B @ A)
            if four_bit:
                layer.base_layer = base = dense_linear(base, merged)
            else:
                restore_plain_layer(base, merged)
            if layer.lora_bias.get(adapter) and base.bias is not None:
                base.bias += layer.scaling[adapter] * layer.lora_B[adapter].bias.to(base.bias.dtype)
    model = peft_model.unload()
    clear_flag_if_dense(model)
    del peft_model.inilora
    return model

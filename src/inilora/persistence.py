"""Save, reload, export and merge IniLoRA adapters.

A saved directory is a normal PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``)
plus ``inilora_init.safetensors`` (the initial factors exactly as stored) and ``inilora_config.json``
(method, options, a fingerprint of each original base weight, a checksum of the init file). That is
all :func:`from_pretrained` needs to rebuild the residual from the original base, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
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
from .init import install_layer, new_report, warn_on_drift
from .peft_glue import collect_targets, lora_layers, resolve_config, restore_plain_layer, weight_view
from .state import InitState, LayerState, fingerprint
from .truncation import ExportTruncationWarning, export_config, truncate

INIT_FILE = "inilora_init.safetensors"
META_FILE = "inilora_config.json"
EXPORT_FILE = "inilora_export.json"  # what export_lora did to each layer: rank and relative error
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


def save_pretrained(peft_model: PeftModel, path: str | os.PathLike, **kwargs) -> Path:
    """Save the adapter with PEFT and add what rebuilds its residual; return the adapter's directory
    (``path``, or PEFT's ``path/adapter_name`` for a non-default adapter). ``kwargs`` go to PEFT's
    ``save_pretrained`` (e.g. ``is_main_process``)."""
    state = _state(peft_model)
    peft_model.save_pretrained(str(path), selected_adapters=[state.adapter_name], **kwargs)
    out = _adapter_dir(path, state.adapter_name)
    if not kwargs.get("is_main_process", True):
        return out
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
    return out


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
    start = time.perf_counter()
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

    # the model changes from here on
    peft_model = PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name,
                                           is_trainable=is_trainable)
    state = InitState(options, adapter_name, report=new_report(options))
    with torch.no_grad():
        for name, layer in lora_layers(peft_model, [t.name for t in targets]).items():
            A0, B0 = tensors[f"{name}.lora_A0"], tensors[f"{name}.lora_B0"]
            keep_fp32 = recorded[name]["residual_fp32"]
            state.report.layers.append(install_layer(layer, adapter_name, name, A0, B0, options.method, keep_fp32,
                                                     recorded[name]["optimum"]))
            state.layers[name] = LayerState(A0, B0, layer.scaling[adapter_name], recorded[name]["fingerprint"],
                                            getattr(torch, recorded[name]["weight_dtype"]), keep_fp32)
    state.report.seconds = time.perf_counter() - start
    peft_model.inilora = state
    warn_on_drift(state.report)
    return peft_model


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
    """
    state = _state(peft_model)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int or None, got {rank!r}.")
    config: LoraConfig = peft_model.peft_config[state.adapter_name]
    tensors = get_peft_model_state_dict(peft_model, adapter_name=state.adapter_name)
    ranks, errors = {}, {}
    for name, layer in state.layers.items():
        a_key, b_key = f"base_model.model.{name}.lora_A.weight", f"base_model.model.{name}.lora_B.weight"
        A, B = tensors[a_key], tensors[b_key]
        if state.is_residual:  # ΔW/s = [B, −B0]·[A; A0]
            A = torch.cat([A, layer.A0.to(A)], dim=0)
            B = torch.cat([B, -layer.B0.to(B)], dim=1)
        ranks[name] = A.shape[0] if rank is None else min(rank, A.shape[0])
        if ranks[name] < A.shape[0]:
            low = truncate(B, A, ranks[name])
            A, B, errors[name] = low.A, low.B, low.relative_error
        else:
            errors[name] = 0.0
        tensors[a_key], tensors[b_key] = A.contiguous(), B.contiguous()
    config = export_config(config, ranks)
    config.init_lora_weights = True
    config.inference_mode = True
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "adapter_model.safetensors",
              metadata={"format": "pt"})
    worst = max(errors, key=errors.get, default=None)
    (out / EXPORT_FILE).write_text(json.dumps({
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
    stored in the base model's dtype; other PEFT wrappers (``modules_to_save``) are unloaded by PEFT."""
    state = _state(peft_model)
    adapter = state.adapter_name
    with torch.no_grad():
        for name, layer in lora_layers(peft_model, list(state.layers)).items():
            base = layer.get_base_layer()
            A = layer.lora_A[adapter].weight.float()
            B = layer.lora_B[adapter].weight.float()
            merged = weight_view(base).float() + layer.scaling[adapter] * (B @ A)
            restore_plain_layer(base, merged)
            if layer.lora_bias.get(adapter) and base.bias is not None:
                base.bias += layer.scaling[adapter] * layer.lora_B[adapter].bias.to(base.bias.dtype)
    model = peft_model.unload()
    del peft_model.inilora
    return model

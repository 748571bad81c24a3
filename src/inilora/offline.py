"""Offline initialization: write the residual model as a plain transformers folder and the initial factors
as a plain PEFT adapter, so that any training stack continues from them without importing inilora."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper, get_peft_model_state_dict
from safetensors.torch import save_file

from ._io import replaced_folder
from .errors import InitError
from .peft_glue import adapter_keys
from .persistence import state_of
from .quantize import is_4bit

logger = logging.getLogger("inilora")
RESIDUAL_DIR, ADAPTER_DIR = "residual_model", "adapter"


def residual_state_dict(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    """The inner model's state dict as a plain model names it: each wrapped layer's base weights under the
    layer's own name (holding ``W_res``), adapter weights dropped. The tensors are the model's own (no copy)."""
    inner = peft_model.base_model.model
    keep: dict[str, str] = {}  # prefix of a wrapped module's original part -> its plain name
    for name, module in inner.named_modules():
        if isinstance(module, BaseTunerLayer):
            keep[f"{name}."] = f"{name}.base_layer."
        elif isinstance(module, ModulesToSaveWrapper):
            keep[f"{name}."] = f"{name}.original_module."
    plain = {}
    for key, tensor in inner.state_dict(keep_vars=False).items():
        for owner in sorted(keep, key=len, reverse=True):  # nested wrappers (one ParamWrapper per parameter): inner first
            if key.startswith(owner):
                if not key.startswith(keep[owner]):
                    break  # the wrapper's own (adapter) tensor
                key = owner + key[len(keep[owner]):]
        else:
            plain[key] = tensor
    return plain


def _initial_adapter_tensors(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    state = state_of(peft_model)
    tensors = get_peft_model_state_dict(peft_model, adapter_name=state.adapter_name, save_embedding_layers=False)
    keys = adapter_keys(peft_model, list(state.layers))
    for name, layer in state.layers.items():
        for key, value in zip(keys[name][0], (layer.A0, layer.B0)):
            tensors[key] = value.to(tensors[key].dtype).contiguous()
    return {k: v.contiguous() for k, v in tensors.items()}


def _save_tokenizer(model: torch.nn.Module, tokenizer, out: Path) -> None:
    if tokenizer is None:
        source = getattr(getattr(model, "config", None), "_name_or_path", "")
        if not source or not Path(source).is_dir():
            return
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, TypeError) as exc:
            logger.info("no tokenizer saved with the residual model (%s has none: %s)", source, exc)
            return
    tokenizer.save_pretrained(str(out))


def save_residual_model(peft_model: PeftModel, path: str | os.PathLike, *, tokenizer=None,
                        max_shard_size: str | int = "5GB") -> Path:
    """Write ``path/residual_model`` (a transformers model folder whose targets hold ``W − s·B0·A0``,
    everything else as in the base; tokenizer files when ``tokenizer`` is given or the model's source
    folder has them) and ``path/adapter`` (a plain PEFT LoRA adapter whose weights are ``A0``, ``B0``).

    Then, with no inilora import::

        model = AutoModelForX.from_pretrained(path / "residual_model")   # or with BitsAndBytesConfig(load_in_4bit=True)
        model = PeftModel.from_pretrained(model, path / "adapter", is_trainable=True)
        ...train...
        model.save_pretrained(out, path_initial_model_for_weight_conversion=path / "adapter")  # rank-2r LoRA for the original base

    Neither the model nor its weights are copied or changed. Returns ``path``.

    Atomic: both folders are written beside ``path`` and swapped in together, so a kill or a failure
    (a full disk) leaves ``path`` as it was — no half-written ``residual_model`` or ``adapter`` — and a
    first save killed midway leaves no ``path`` at all. ``residual_model/`` and ``adapter/`` are replaced
    whole (no file of an earlier save is left in them); every other file under ``path`` is kept.
    """
    state = state_of(peft_model)
    if any(is_4bit(layer.get_base_layer()) for layer in _wrapped(peft_model)):
        raise InitError("save_residual_model writes a full-precision residual; this model holds a 4-bit one. "
                        "Initialize without quantize=..., save, then load residual_model with "
                        "transformers' BitsAndBytesConfig(load_in_4bit=True).")
    out = Path(path)
    inner = peft_model.base_model.model
    config: LoraConfig = copy.deepcopy(peft_model.peft_config[state.adapter_name])
    config.init_lora_weights = True
    config.inference_mode = False
    config.base_model_name_or_path = str((out / RESIDUAL_DIR).resolve())
    with replaced_folder(out, lambda rel, new: rel.parts[0] in (RESIDUAL_DIR, ADAPTER_DIR)) as new:
        inner.save_pretrained(str(new / RESIDUAL_DIR), state_dict=residual_state_dict(peft_model),
                              max_shard_size=max_shard_size)
        _save_tokenizer(inner, tokenizer, new / RESIDUAL_DIR)
        (new / ADAPTER_DIR).mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(new / ADAPTER_DIR))
        save_file(_initial_adapter_tensors(peft_model), new / ADAPTER_DIR / "adapter_model.safetensors",
                  metadata={"format": "pt"})
    return out


def _wrapped(peft_model: PeftModel) -> list[BaseTunerLayer]:
    return [m for m in peft_model.base_model.model.modules() if isinstance(m, BaseTunerLayer)]

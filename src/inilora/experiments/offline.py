"""``inilora init``: load a model, initialize its adapter once and write ``OUT/residual_model`` and
``OUT/adapter`` (:func:`inilora.save_residual_model`), for training stacks that do not import inilora."""

from __future__ import annotations

import os
from pathlib import Path

import torch

import inilora

from ..offline import ADAPTER_DIR, RESIDUAL_DIR
from . import models
from .train.config import REFERENCES, TrainConfig
from .train.trainer import wrap

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def initialize(model_name: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig, *, kind: str | None = None,
               dtype: str = "float32", residual_fp32: bool = False, num_labels: int = 2,
               overwrite: bool = False) -> inilora.InitReport:
    """Load ``model_name`` (an alias or a folder) as ``kind`` (default: what its config's architectures
    say) in ``dtype``, wrap it with ``cfg``'s adapter settings and write both folders under ``out``.
    Refuses an ``out`` that already holds either folder unless ``overwrite``. Returns the init report."""
    out = Path(out)
    if cfg.method in REFERENCES:
        raise ValueError(f"method {cfg.method!r} has no adapter to initialize; choose one of "
                         f"{', '.join(inilora.METHODS)}.")
    if cfg.quantize:
        raise ValueError("the offline flow writes a full-precision residual; quantize it when loading "
                         "residual_model (transformers' BitsAndBytesConfig(load_in_4bit=True)).")
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    existing = [name for name in (RESIDUAL_DIR, ADAPTER_DIR) if (out / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out} already holds {' and '.join(existing)}; choose another output folder "
                         "or pass --overwrite.")
    kind = kind or models.default_kind(model_name)
    model = models.load_model(model_name, kind, num_labels=num_labels, seed=cfg.seed, dtype=dtype)
    if kind == "classification" and model.config.pad_token_id is None:  # batched classification needs it
        model.config.pad_token_id = models.load_tokenizer(model_name).pad_token_id
    peft_model, _ = wrap(model, cfg, models.PEFT_TASK_TYPES[kind], residual_fp32=residual_fp32)
    inilora.save_residual_model(peft_model, out)  # the source folder's tokenizer files, unchanged, when it has them
    return peft_model.inilora.report

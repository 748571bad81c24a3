"""Held-out metrics of a model (loss, accuracy, exact match of the greedy decoding), and the
evaluation of a saved run folder reloaded onto a fresh base model."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch

import inilora

from .. import models
from ..tasks import Task
from .config import TRAIN_INFO, TrainConfig
from .encode import collator, encode, train_features, trainer_class


@torch.no_grad()
def exact_match(model, tokenizer, encoded: list[dict], batch_size: int, max_new_tokens: int) -> tuple[float, list[dict]]:
    """Greedy decoding of each held-out prompt; exact match of the stripped text against the answer."""
    model.eval()
    pad = tokenizer.pad_token_id
    hits, samples = 0, []
    for i in range(0, len(encoded), batch_size):
        batch = encoded[i:i + batch_size]
        length = max(len(row["prompt_ids"]) for row in batch)
        ids = torch.tensor([[pad] * (length - len(row["prompt_ids"])) + row["prompt_ids"] for row in batch])
        mask = torch.tensor([[0] * (length - len(row["prompt_ids"])) + [1] * len(row["prompt_ids"]) for row in batch])
        device = next(model.parameters()).device
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        for row, generated in zip(batch, out[:, length:]):
            text = tokenizer.decode(generated, skip_special_tokens=True).strip()
            hit = text == row["answer"].strip()
            hits += hit
            if len(samples) < 5:
                samples.append({"answer": row["answer"], "generated": text, "match": hit})
    return hits / max(1, len(encoded)), samples


def held_out_metrics(trainer, model, tokenizer, task: Task, cfg: TrainConfig, encoded_eval: list[dict]) -> dict:
    metrics: dict = {"n_eval": len(encoded_eval)}
    if task.kind == "classification":
        prediction = trainer.predict(train_features(encoded_eval))
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = torch.as_tensor(logits).argmax(-1)
        labels = torch.as_tensor(prediction.label_ids)
        metrics["accuracy"] = float((predicted == labels).float().mean())
        metrics["eval_loss"] = float(prediction.metrics.get("test_loss", float("nan")))
        return metrics
    result = trainer.evaluate(train_features(encoded_eval))
    metrics["eval_loss"] = float(result["eval_loss"])
    if trainer.is_world_process_zero():
        answer_tokens = max(sum(1 for t in row["labels"] if t != -100) for row in encoded_eval)
        max_new = cfg.max_new_tokens or answer_tokens + 8
        metrics["exact_match"], metrics["samples"] = exact_match(model, tokenizer, encoded_eval,
                                                                  cfg.eval_batch_size, max_new)
    return metrics


def evaluate(run_dir: str | os.PathLike, task: Task | None = None, model_name: str | os.PathLike | None = None,
             batch_size: int = 32, max_new_tokens: int | None = None, max_len: int | None = None) -> dict:
    """Evaluate a run directory written by :func:`finetune` on ``task`` (default: the task it was trained
    on, rebuilt from its name) — the adapter is reloaded with :func:`inilora.from_pretrained` onto a
    freshly loaded base (``model_name``, default: the one it was trained from)."""
    from transformers import TrainingArguments

    run_dir = Path(run_dir)
    info_path = run_dir / TRAIN_INFO
    if not info_path.is_file():
        raise ValueError(f"{run_dir} holds no {TRAIN_INFO}: not an output folder of `inilora train`.")
    try:
        info = json.loads(info_path.read_text())
        saved = TrainConfig(**info["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{info_path} is corrupted ({exc}).") from exc
    model_name = model_name or info["model"]
    if task is None:
        from ..tasks import load_task

        task = load_task(info["task"])
    if task.kind != info["kind"]:
        raise ValueError(f"{run_dir} was trained on a {info['kind']} task; {task.name!r} is a {task.kind} task.")
    if task.kind == "classification" and len(task.labels or []) != len(info["labels"] or []):
        raise ValueError(f"{run_dir} was trained with {len(info['labels'])} classes; {task.name!r} has "
                         f"{len(task.labels or [])}.")
    cfg = dataclasses.replace(saved, eval_batch_size=batch_size, max_new_tokens=max_new_tokens,
                              max_len=max_len or saved.max_len, progress=False)
    tokenizer = models.load_tokenizer(model_name)
    if saved.method == "full":
        model = models.load_model(run_dir / "model", task.kind, num_labels=len(task.labels or []) or 2)
    else:
        base = models.load_model(model_name, task.kind, num_labels=len(task.labels or []) or 2, seed=saved.seed)
        if task.kind == "classification" and base.config.pad_token_id is None:
            base.config.pad_token_id = tokenizer.pad_token_id
        model = inilora.from_pretrained(base, run_dir / "adapter")
    encoded_eval = encode(tokenizer, task, cfg, task.eval)
    with tempfile.TemporaryDirectory(prefix="inilora-") as scratch:
        args = TrainingArguments(output_dir=scratch, per_device_eval_batch_size=batch_size, report_to="none",
                                 dataloader_pin_memory=False,
                                 disable_tqdm=True, remove_unused_columns=False, label_names=["labels"])
        trainer = trainer_class(task.kind)(model=model, args=args, data_collator=collator(tokenizer, task.kind),
                                            processing_class=tokenizer)
        return held_out_metrics(trainer, model, tokenizer, task, cfg, encoded_eval)

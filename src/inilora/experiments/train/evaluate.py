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
from ..tasks import Task, example_hits
from .config import FULL, TRAIN_INFO, TrainConfig
from .encode import collator, encode, train_features, trainer_class


@torch.no_grad()
def greedy_answers(model, tokenizer, encoded: list[dict], batch_size: int, max_new_tokens: int) -> list[str]:
    """The greedy decoding of each held-out prompt, stripped."""
    model.eval()
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    texts = []
    for i in range(0, len(encoded), batch_size):
        batch = encoded[i:i + batch_size]
        length = max(len(row["prompt_ids"]) for row in batch)
        ids = torch.tensor([[pad] * (length - len(row["prompt_ids"])) + row["prompt_ids"] for row in batch])
        mask = torch.tensor([[0] * (length - len(row["prompt_ids"])) + [1] * len(row["prompt_ids"]) for row in batch])
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        texts += [tokenizer.decode(generated, skip_special_tokens=True).strip() for generated in out[:, length:]]
    return texts


def held_out_metrics(trainer, model, tokenizer, task: Task, cfg: TrainConfig, encoded_eval: list[dict],
                     decode: bool = True) -> tuple[dict, list]:
    """(metrics, per-example predictions) on ``encoded_eval``: the loss and the task's metric (accuracy;
    exact match of the greedy decoding, skipped with ``decode=False``); the predictions are the predicted
    class indices or the generated answers, in the examples' order."""
    metrics: dict = {"n_eval": len(encoded_eval)}
    if task.kind == "classification":
        prediction = trainer.predict(train_features(encoded_eval))
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = torch.as_tensor(logits).argmax(-1)
        labels = torch.as_tensor(prediction.label_ids)
        metrics["accuracy"] = int((predicted == labels).sum()) / max(1, len(labels))
        metrics["eval_loss"] = float(prediction.metrics.get("test_loss", float("nan")))
        return metrics, predicted.tolist()
    result = trainer.evaluate(train_features(encoded_eval))
    metrics["eval_loss"] = float(result["eval_loss"])
    if not decode or not trainer.is_world_process_zero():
        return metrics, []
    answer_tokens = max(sum(1 for t in row["labels"] if t != -100) for row in encoded_eval)
    texts = greedy_answers(model, tokenizer, encoded_eval, cfg.eval_batch_size,
                           cfg.max_new_tokens or answer_tokens + 8)
    hits = example_hits(task.kind, encoded_eval, texts)
    metrics["exact_match"] = sum(hits) / max(1, len(hits))
    metrics["samples"] = [{"answer": row["answer"], "generated": text, "match": hit}
                          for text, row, hit in zip(texts[:5], encoded_eval, hits)]
    return metrics, texts


def quiet_trainer(trainer):
    """A Trainer that prints nothing on stdout (its ``PrinterCallback`` echoes every metrics dict)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def _held_out_task(info: dict, run_dir: Path, eval_file: str | os.PathLike | None) -> Task:
    """The task a run was trained on, rebuilt (its files, with the same held-out split), or the examples
    of ``eval_file`` alone (labels mapped as in training)."""
    from ..tasks import changed_files, data_record, file_task, load_task, read_file

    if eval_file is not None:
        kind, rows, _ = read_file(eval_file, info["labels"])
        return Task(Path(eval_file).stem, kind, [], rows, info["labels"], f"file {eval_file}")
    recorded = info.get("data")  # absent in a run folder written before data was recorded
    if info.get("files"):
        changed = changed_files(recorded["files"]) if recorded else []
        if changed:
            raise ValueError(f"{changed[0]} changed since {run_dir} was trained on it (its content digest "
                             "differs), so its held-out split would not be the one the run was evaluated on; give "
                             "the data as it is now explicitly (--train-file, --eval-file) or train again.")
        task = file_task(**info["files"])
    elif str(info.get("source", "")).startswith("file "):
        raise ValueError(f"{run_dir} was trained on files its {TRAIN_INFO} does not name (an older run); give "
                         "the data again: --train-file (and --eval-file) or --eval-file alone.")
    else:
        task = load_task(info["task"], **info.get("sizes", {}))  # the subsets it was trained and held out on
    if recorded and data_record(task)["rows"] != recorded["rows"]:
        raise ValueError(f"task {task.name!r} now gives other examples than {run_dir} was trained and evaluated on "
                         "(its data source changed); evaluate on it explicitly with --task, or train again.")
    return task


def evaluate(run_dir: str | os.PathLike, task: Task | None = None, model_name: str | os.PathLike | None = None,
             batch_size: int = 32, max_new_tokens: int | None = None, max_len: int | None = None,
             eval_file: str | os.PathLike | None = None, revision: str | None = None,
             dtype: str | None = None) -> dict:
    """Evaluate a run directory written by :func:`finetune` on ``task``, or on the examples of
    ``eval_file``, or by default on the held-out set it was trained with (a built-in task rebuilt from its
    name and subset sizes; the user's files, recorded with absolute paths, split again the same way). The adapter is
    reloaded with :func:`inilora.from_pretrained` onto a freshly loaded base (``model_name``, default: the
    one it was trained from, at its ``revision`` and ``dtype`` unless given)."""
    from transformers import TrainingArguments

    run_dir = Path(run_dir)
    info_path = run_dir / TRAIN_INFO
    if not info_path.is_file():
        raise ValueError(f"{run_dir} holds no {TRAIN_INFO}: not an output folder of `inilora train`.")
    try:
        info = json.loads(info_path.read_text())
        saved = TrainConfig.from_saved(info["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{info_path} is corrupted ({exc}).") from exc
    if task is not None and eval_file is not None:
        raise ValueError("Give a task or an eval file to evaluate on, not both.")
    revision = revision or (saved.revision if model_name is None else None)
    model_name = model_name or info["model"]
    task = task or _held_out_task(info, run_dir, eval_file)
    if task.kind != info["kind"]:
        raise ValueError(f"{run_dir} was trained on a {info['kind']} task; {task.name!r} is a {task.kind} task.")
    if task.kind == "classification" and list(task.labels or []) != list(info["labels"] or []):
        raise ValueError(f"{run_dir} was trained with the classes {', '.join(map(str, info['labels']))} (in this "
                         f"order); {task.name!r} has {', '.join(map(str, task.labels or []))}.")
    if dtype and dtype != saved.dtype and saved.method != FULL:
        raise ValueError(f"--dtype {dtype}: {run_dir} holds an adapter made on a {saved.dtype} base, and an adapter "
                         f"loads only onto the dtype it was made on; another dtype applies to a --method full run.")
    cfg = dataclasses.replace(saved, eval_batch_size=batch_size, max_new_tokens=max_new_tokens,
                              max_len=max_len or saved.max_len, progress=False, revision=revision,
                              dtype=dtype or saved.dtype)
    tokenizer = models.load_tokenizer(model_name, revision)
    num_labels = len(task.labels or []) or 2
    if saved.method == FULL:
        model = models.load_model(run_dir / "model", task.kind, num_labels=num_labels, dtype=cfg.dtype)
    else:
        base = models.load_model(model_name, task.kind, num_labels=num_labels, seed=saved.seed, revision=revision,
                                 dtype=cfg.dtype)
        if task.kind == "classification" and base.config.pad_token_id is None:
            base.config.pad_token_id = tokenizer.pad_token_id
        model = inilora.from_pretrained(base, run_dir / "adapter")
    encoded_eval = encode(tokenizer, task, cfg, task.eval)
    with tempfile.TemporaryDirectory(prefix="inilora-") as scratch:
        args = TrainingArguments(output_dir=scratch, per_device_eval_batch_size=batch_size, report_to="none",
                                 dataloader_pin_memory=False,
                                 disable_tqdm=True, remove_unused_columns=False, label_names=["labels"])
        trainer = quiet_trainer(trainer_class(task.kind)(model=model, args=args,
                                                           data_collator=collator(tokenizer, task.kind),
                                                           processing_class=tokenizer))
        return held_out_metrics(trainer, model, tokenizer, task, cfg, encoded_eval)[0]

"""Fine-tuning and evaluation with transformers' ``Trainer``.

:func:`finetune` loads a model (an alias from :mod:`inilora.models` or a local folder), wraps it with
:func:`inilora.get_peft_model` (or trains it in full, ``method="full"``), trains it with ``Trainer`` —
so mixed precision, gradient accumulation, checkpoints, progress bars and ``torchrun``/``accelerate
launch`` work as usual — evaluates it on the task's held-out set and saves the adapter with
:func:`inilora.save_pretrained` plus the plain-PEFT export of :func:`inilora.export_lora`.

Generation tasks train on the answer tokens only (the prompt is masked) and are evaluated by the
held-out loss on the answer tokens and by exact match of the greedy decoding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import LoraConfig  # noqa: E402

import inilora  # noqa: E402

from . import models  # noqa: E402
from .data import Task  # noqa: E402

logger = logging.getLogger("inilora")

REFERENCES = ("full", "base")  # full fine-tuning; the base model evaluated as it is (no training)
SYSTEM_PROMPT = "Reply with the final answer only."
TRAIN_INFO = "inilora_train.json"
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass
class TrainConfig:
    """Everything that decides a fine-tuning run. Defaults follow the published GLUE setup (lr 3e-4,
    linear schedule, 6% warm-up, AdamW weight decay 0.01, r = alpha = 8, dropout 0, query/value)."""

    method: str = "inilora"  # one of inilora.METHODS, or "full" / "base" (references)
    seed: int = 0
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: list[str] | None = None  # None: the model type's query/value projections
    solver: str = "adam"  # inilora's fit: "adam" (published) or "svd" (closed-form optimum)
    fit_steps: int | None = None  # Adam fit steps (None: the published 20,000)
    lr: float = 3e-4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 16
    grad_accum: int = 1
    max_len: int = 128
    warmup_ratio: float = 0.06
    scheduler: str = "linear"
    weight_decay: float = 0.01
    eval_batch_size: int = 32
    max_new_tokens: int | None = None  # greedy decoding; None: longest held-out answer + 8 tokens
    logging_steps: int = 5
    save_steps: int = 0  # > 0: keep Trainer checkpoints every this many steps (resumable)
    bf16: bool = False
    threads: int | None = None  # torch threads for this process
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in (*inilora.METHODS, *REFERENCES):
            raise ValueError(f"Unknown method {self.method!r}; choose one of "
                             f"{', '.join((*inilora.METHODS, *REFERENCES))}.")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"Unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}.")
        positive = {"r": self.r, "alpha": self.alpha, "lr": self.lr, "batch_size": self.batch_size,
                    "grad_accum": self.grad_accum, "max_len": self.max_len, "eval_batch_size": self.eval_batch_size,
                    "logging_steps": self.logging_steps}
        if self.max_steps <= 0:
            positive["epochs"] = self.epochs
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive, got {value!r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if self.max_len < 8:
            raise ValueError(f"max_len must be at least 8, got {self.max_len}.")

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("progress", "threads")}


@dataclass
class RunResult:
    metrics: dict
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    train_seconds: float = 0.0
    trainable_params: int = 0
    init: dict = field(default_factory=dict)  # initialization summary: max drift, digest of the factors
    trained_digest: str = ""  # a hash of the trainable parameters after training

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- data -> tokens ---------------------------------------------------------------------------------

def prompt_text(tokenizer, prompt: str) -> str:
    """The text the model sees before its answer: the chat template where the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"Question: {prompt}\nAnswer: "


def encode_generation(tokenizer, rows: list[dict], max_len: int) -> list[dict]:
    """Prompt + answer + end-of-turn, labels only on the answer; an overlong prompt is cut on the left."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("The tokenizer has no end-of-sequence token; generation tasks need one.")
    encoded = []
    for row in rows:
        prompt = tokenizer(prompt_text(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"] + [eos]
        answer = answer[: max_len - 1]
        prompt = prompt[-(max_len - len(answer)):]
        encoded.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer,
                        "prompt_ids": prompt, "answer": row["answer"]})
    return encoded


def encode_classification(tokenizer, rows: list[dict], max_len: int) -> list[dict]:
    texts = [row["text"] for row in rows]
    enc = tokenizer(texts, truncation=True, max_length=max_len)
    return [{"input_ids": ids, "attention_mask": mask, "labels": row["label"]}
            for ids, mask, row in zip(enc["input_ids"], enc["attention_mask"], rows)]


class LeftPadCollator:
    """Left-pads prompt+answer sequences (the answers line up at the end, as in generation) and gives
    position ids that start at 0 at each sequence's first real token."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = length - len(f["input_ids"])
            ids.append([self.pad_id] * pad + f["input_ids"])
            labels.append([-100] * pad + f["labels"])
            mask.append([0] * pad + [1] * len(f["input_ids"]))
        mask_t = torch.tensor(mask)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": mask_t,
                "position_ids": (mask_t.cumsum(-1) - 1).clamp(min=0)}


class AnswerLossTrainer:
    """Mixed into ``Trainer`` for generation tasks: the loss is the cross-entropy on the answer tokens,
    and the (large-vocabulary) output layer is evaluated only over the answer window at the end of the
    left-padded batch instead of over every prompt position."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        length = labels.shape[1]
        labelled = (labels != -100).any(0).nonzero()
        first = int(labelled.min()) if labelled.numel() else length - 1
        keep = max(1, length - first + 1)  # logits at positions first-1 .. length-1
        outputs = model(**inputs, logits_to_keep=keep)
        logits = outputs.logits[:, :-1].float()
        targets = labels[:, length - keep + 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                               reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
        loss = loss / count
        if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.args.world_size  # Trainer divides by the number of processes again
        return (loss, outputs) if return_outputs else loss


def _trainer_class(kind: str):
    from transformers import Trainer

    return type("AnswerTrainer", (AnswerLossTrainer, Trainer), {}) if kind == "generation" else Trainer


# --- model --------------------------------------------------------------------------------------------

def factors_digest(peft_model) -> str:
    """A hash of every layer's initial factors (as stored): equal digests mean equal starts."""
    digest = hashlib.blake2b(digest_size=16)
    for name, layer in sorted(peft_model.inilora.layers.items()):
        digest.update(name.encode())
        for t in (layer.A0, layer.B0):
            digest.update(t.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def parameters_digest(model) -> str:
    """A hash of the trainable parameters (name and value): equal digests mean equal trained weights."""
    digest = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def prepare_model(model_name: str | os.PathLike, task: Task, cfg: TrainConfig):
    """Load the model for the task and wrap it for ``cfg.method``. Returns (model, tokenizer, init summary)."""
    tokenizer = models.load_tokenizer(model_name)
    model = models.load_model(model_name, task.kind, num_labels=len(task.labels or []) or 2, seed=cfg.seed)
    if task.kind == "classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    init: dict = {}
    if cfg.method in REFERENCES:
        for p in model.parameters():
            p.requires_grad_(cfg.method == "full")
        return model, tokenizer, init
    targets = cfg.targets or models.default_targets(model)
    lora_config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                             task_type="SEQ_CLS" if task.kind == "classification" else "CAUSAL_LM")
    method = inilora.get_method(cfg.method)
    options = {"seed": cfg.seed, "progress": cfg.progress}
    if method.has_fit:
        options["solver"] = cfg.solver
        if cfg.fit_steps:
            options["steps"] = cfg.fit_steps
    start = time.perf_counter()
    peft_model = inilora.get_peft_model(model, lora_config, cfg.method, **options)
    report = peft_model.inilora.report
    init = {"seconds": round(time.perf_counter() - start, 3), "max_drift": report.max_drift,
            "max_ratio": report.max_ratio, "layers": len(report.layers), "digest": factors_digest(peft_model),
            "solver": cfg.solver if method.has_fit else None}
    return peft_model, tokenizer, init


def _training_args(cfg: TrainConfig, output_dir: str, kind: str):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay, logging_steps=cfg.logging_steps,
        logging_first_step=True, save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps or 500, seed=cfg.seed, data_seed=cfg.seed, report_to="none",
        disable_tqdm=not cfg.progress, bf16=cfg.bf16, remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=False,
        train_sampling_strategy="group_by_length", eval_strategy="no", save_only_model=False,
        label_names=["labels"], ddp_find_unused_parameters=False,
    )


def _collator(tokenizer, kind: str):
    if kind == "generation":
        return LeftPadCollator(tokenizer.pad_token_id)
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def _train_features(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k in ("input_ids", "attention_mask", "labels")} for row in rows]


# --- evaluation ---------------------------------------------------------------------------------------

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


def _evaluate(trainer, model, tokenizer, task: Task, cfg: TrainConfig, encoded_eval: list[dict]) -> dict:
    metrics: dict = {"n_eval": len(encoded_eval)}
    if task.kind == "classification":
        prediction = trainer.predict(_train_features(encoded_eval))
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = torch.as_tensor(logits).argmax(-1)
        labels = torch.as_tensor(prediction.label_ids)
        metrics["accuracy"] = float((predicted == labels).float().mean())
        metrics["eval_loss"] = float(prediction.metrics.get("test_loss", float("nan")))
        return metrics
    result = trainer.evaluate(_train_features(encoded_eval))
    metrics["eval_loss"] = float(result["eval_loss"])
    if trainer.is_world_process_zero():
        answer_tokens = max(sum(1 for t in row["labels"] if t != -100) for row in encoded_eval)
        max_new = cfg.max_new_tokens or answer_tokens + 8
        metrics["exact_match"], metrics["samples"] = exact_match(model, tokenizer, encoded_eval,
                                                                  cfg.eval_batch_size, max_new)
    return metrics


def _loss_history(trainer) -> list[tuple[int, float]]:
    return [(int(entry["step"]), float(entry["loss"])) for entry in trainer.state.log_history if "loss" in entry]


def _encode(tokenizer, task: Task, cfg: TrainConfig, rows: list[dict]) -> list[dict]:
    if task.kind == "generation":
        return encode_generation(tokenizer, rows, cfg.max_len)
    return encode_classification(tokenizer, rows, cfg.max_len)


def finetune(model_name: str | os.PathLike, task: Task, cfg: TrainConfig,
             output_dir: str | os.PathLike | None = None, resume: bool = False) -> RunResult:
    """Fine-tune ``model_name`` on ``task`` as ``cfg`` says and evaluate it on the held-out set.

    With ``output_dir``: the adapter (``adapter/``, via :func:`inilora.save_pretrained`), its plain
    PEFT export (``adapter-lora/``), ``metrics.json`` and ``inilora_train.json`` (what :func:`evaluate`
    needs) are written there; Trainer checkpoints go to ``checkpoints/`` when ``cfg.save_steps > 0``
    (``resume=True`` continues from the last one). Under ``torchrun`` every process returns; the
    exact-match metric and the files come from the main process."""
    from transformers import set_seed

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    start = time.perf_counter()
    model, tokenizer, init = prepare_model(model_name, task, cfg)
    encoded_train = _encode(tokenizer, task, cfg, task.train)
    encoded_eval = _encode(tokenizer, task, cfg, task.eval)
    with tempfile.TemporaryDirectory(prefix="inilora-") as scratch:
        work = Path(output_dir) / "checkpoints" if output_dir and cfg.save_steps > 0 else Path(scratch)
        args = _training_args(cfg, str(work), task.kind)
        trainer = _trainer_class(task.kind)(model=model, args=args, train_dataset=_train_features(encoded_train),
                                            data_collator=_collator(tokenizer, task.kind), processing_class=tokenizer)
        if not cfg.progress:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        history: list[tuple[int, float]] = []
        train_seconds = 0.0
        if cfg.method != "base":
            checkpoint = resume and work.is_dir() and any(work.glob("checkpoint-*"))
            trained = trainer.train(resume_from_checkpoint=True if checkpoint else None)
            train_seconds = float(trained.metrics.get("train_runtime", 0.0))
            history = _loss_history(trainer)
        metrics = _evaluate(trainer, model, tokenizer, task, cfg, encoded_eval)
    metrics["n_train"] = len(encoded_train)
    metrics["steps"] = int(trainer.state.global_step)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 3)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = RunResult(metrics, history, train_seconds, trainable, init, parameters_digest(model))
    if output_dir is not None and cfg.method != "base":
        save(model, tokenizer, task, cfg, model_name, result, Path(output_dir),
             is_main_process=trainer.args.should_save)
    return result


def save(model, tokenizer, task: Task, cfg: TrainConfig, model_name, result: RunResult, out: Path,
         is_main_process: bool = True) -> None:
    if cfg.method == "full":
        if is_main_process:
            model.save_pretrained(str(out / "model"))
            tokenizer.save_pretrained(str(out / "model"))
    else:
        inilora.save_pretrained(model, out / "adapter", is_main_process=is_main_process)
        if is_main_process:
            inilora.export_lora(model, out / "adapter-lora")
    if not is_main_process:
        return
    info = {"model": str(model_name), "task": task.name, "kind": task.kind, "labels": task.labels,
            "source": task.source, "config": cfg.to_dict()}
    (out / TRAIN_INFO).write_text(json.dumps(info, indent=2))
    (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2))


def evaluate(run_dir: str | os.PathLike, task: Task | None = None, model_name: str | os.PathLike | None = None,
             batch_size: int = 32, max_new_tokens: int | None = None, max_len: int | None = None) -> dict:
    """Evaluate a run directory written by :func:`finetune` on ``task`` (default: the task it was trained
    on, rebuilt from its name) — the adapter is reloaded with :func:`inilora.from_pretrained` onto a
    freshly loaded base (``model_name``, default: the one it was trained from)."""
    from transformers import Trainer, TrainingArguments

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
        from .data import load_task

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
    encoded_eval = _encode(tokenizer, task, cfg, task.eval)
    with tempfile.TemporaryDirectory(prefix="inilora-") as scratch:
        args = TrainingArguments(output_dir=scratch, per_device_eval_batch_size=batch_size, report_to="none",
                                 dataloader_pin_memory=False,
                                 disable_tqdm=True, remove_unused_columns=False, label_names=["labels"])
        trainer = _trainer_class(task.kind)(model=model, args=args, data_collator=_collator(tokenizer, task.kind),
                                            processing_class=tokenizer)
        return _evaluate(trainer, model, tokenizer, task, cfg, encoded_eval)

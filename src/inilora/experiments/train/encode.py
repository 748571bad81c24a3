"""From examples to what the model sees: prompts and answers to tokens (labels on the answer only),
batches, and the loss on the answer tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..tasks import Task
from .config import TrainConfig

SYSTEM_PROMPT = "Reply with the final answer only."


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


class InOrderEval:
    """Mixed into ``Trainer``: evaluation walks the examples in order. transformers 5 applies
    ``group_by_length`` to evaluation too, which would shuffle per-example predictions against the rows."""

    def _get_eval_sampler(self, eval_dataset):
        return torch.utils.data.SequentialSampler(eval_dataset) if eval_dataset is not None else None


class MeanLossTrainer:
    """Mixed into ``Trainer`` for classification: the model's loss is a mean over its batch. A sequence
    classifier's ``forward`` takes ``**kwargs``, so Trainer would take that loss for one normalized by the tokens
    of every process and accumulation step: it would multiply it by the number of processes (under DDP the
    loss and gradients of 2 processes came out doubled) and skip the division by the accumulation steps."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False


def trainer_class(kind: str):
    from transformers import Trainer

    mixins = (AnswerLossTrainer,) if kind == "generation" else (MeanLossTrainer,)
    return type("TaskTrainer", (*mixins, InOrderEval, Trainer), {})


def collator(tokenizer, kind: str):
    if kind == "generation":
        return LeftPadCollator(tokenizer.pad_token_id)
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def train_features(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k in ("input_ids", "attention_mask", "labels")} for row in rows]


def encode(tokenizer, task: Task, cfg: TrainConfig, rows: list[dict]) -> list[dict]:
    if task.kind == "generation":
        return encode_generation(tokenizer, rows, cfg.max_len)
    return encode_classification(tokenizer, rows, cfg.max_len)

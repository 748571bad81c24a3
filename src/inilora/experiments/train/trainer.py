"""Fine-tuning with transformers' ``Trainer``: :func:`finetune` loads a model (an alias from
:mod:`inilora.experiments.models` or a local folder), wraps it with :func:`inilora.get_peft_model` (or
trains it in full, ``method="full"``), trains it — so mixed precision, gradient accumulation,
checkpoints and ``torchrun``/``accelerate launch`` work as usual — evaluates it on the task's held-out
set and saves the adapter with :func:`inilora.save_pretrained` plus its plain-PEFT export."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import TrainerCallback

import inilora

from ..._io import hash_tensors
from .. import models
from ..peft_peers import PEERS, get_peer_model
from ..tasks import Task, data_record
from .config import BASE, FULL, REFERENCES, TRAIN_INFO, RunResult, TrainConfig, has_fit
from .encode import collator, encode, train_features, trainer_class
from .evaluate import held_out_metrics, quiet_trainer

logger = logging.getLogger("inilora")


def factors_digest(peft_model) -> str:
    """A hash of every layer's initial factors (as stored): equal digests mean equal starts."""
    named = ((label, t.float()) for name, layer in sorted(peft_model.inilora.layers.items())
             for label, t in ((name, layer.A0), ("", layer.B0)))  # the name once, then A0 and B0
    return hash_tensors(named, hashlib.blake2b(digest_size=16)).hexdigest()


def parameters_digest(model) -> str:
    """A hash of the trainable parameters (name and value): equal digests mean equal trained weights."""
    named = ((name, p.detach().float()) for name, p in model.named_parameters() if p.requires_grad)
    return hash_tensors(named, hashlib.blake2b(digest_size=16)).hexdigest()


def prepare_model(model_name: str | os.PathLike, task: Task, cfg: TrainConfig, tokenizer,
                  encoded_train: list[dict] | None = None):
    """Load the model for the task and wrap it for ``cfg.method`` (a PEFT peer, ``peft:...``, initializes
    from the first batches of ``encoded_train`` when it is data-driven). Returns (model, init summary)."""
    model = models.load_model(model_name, task.kind, num_labels=len(task.labels or []) or 2, seed=cfg.seed,
                              revision=cfg.revision, dtype=cfg.dtype)
    if task.kind == "classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.method in REFERENCES:
        for p in model.parameters():
            p.requires_grad_(cfg.method == FULL)
        return model, {}
    if cfg.method in PEERS:
        return _peer(model, cfg, models.PEFT_TASK_TYPES[task.kind], tokenizer, task.kind, encoded_train or [])
    return wrap(model, cfg, models.PEFT_TASK_TYPES[task.kind])


PEER_BATCHES = 4  # training batches a data-driven PEFT peer (LoRA-GA, EVA) initializes from


def _lora_config(model, cfg: TrainConfig, task_type: str | None) -> LoraConfig:
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.targets or models.default_targets(model), task_type=task_type)


def _peer(model, cfg: TrainConfig, task_type: str | None, tokenizer, kind: str, encoded_train: list[dict]):
    """A PEFT peer through PEFT's own API (``experiments.peft_peers``); its init time includes the passes
    over data that LoRA-GA and EVA make."""
    batches = None
    if PEERS[cfg.method].needs_data:
        collate = collator(tokenizer, kind)
        features = train_features(encoded_train)
        batches = [collate(features[i:i + cfg.batch_size])
                   for i in range(0, min(len(features), PEER_BATCHES * cfg.batch_size), cfg.batch_size)]
    peft_model, init = get_peer_model(model, _lora_config(model, cfg, task_type), cfg.method, batches)
    return peft_model, {"seconds": init["seconds"], "peer": init["init_lora_weights"],
                        "ranks": sorted(set(init["ranks"].values()))}


def wrap(model, cfg: TrainConfig, task_type: str | None, **options):
    """``inilora.get_peft_model`` with ``cfg``'s adapter settings (and extra ``options``, e.g.
    ``residual_fp32``). Returns (peft model, init summary)."""
    lora_config = _lora_config(model, cfg, task_type)
    options.update(seed=cfg.seed, progress=cfg.progress, quantize=cfg.quantize)
    if has_fit(cfg.method):
        if cfg.solver:
            options["solver"] = cfg.solver
        if cfg.fit_steps:
            options["steps"] = cfg.fit_steps
    start = time.perf_counter()
    peft_model = inilora.get_peft_model(model, lora_config, method=cfg.method, **options)
    report = peft_model.inilora.report
    init = {"seconds": round(time.perf_counter() - start, 3), "max_drift": report.max_drift,
            "max_ratio": report.max_ratio, "layers": len(report.layers), "digest": factors_digest(peft_model),
            "fitted_by_rank": [layer.fitted_by_rank for layer in report.layers],
            "solver": report.solver if has_fit(cfg.method) else None, "quantize": cfg.quantize}
    return peft_model, init


def no_accelerator() -> bool:
    """Whether torch sees no accelerator. Trainer then needs ``use_cpu=True`` to train over several processes:
    accelerate sets up DDP on CPUs (gloo) only when told to use the CPU; otherwise every process trains alone on
    all the data and each one saves as the main process."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return not (accelerator.is_available() if accelerator is not None else torch.cuda.is_available())


def _training_args(cfg: TrainConfig, output_dir: str, kind: str, evaluations: int = 0):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir, use_cpu=no_accelerator(), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay, logging_steps=cfg.logging_steps,
        logging_first_step=True, save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps or 500, seed=cfg.seed, data_seed=cfg.seed, report_to="none",
        disable_tqdm=not cfg.progress, bf16=cfg.bf16, remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=False,
        train_sampling_strategy="group_by_length", save_only_model=False,
        eval_strategy="steps" if evaluations else "no", eval_steps=1 / evaluations if evaluations else None,
        label_names=["labels"], ddp_find_unused_parameters=False,
    )


def evaluation_steps(max_steps: int, evaluations: int) -> list[int]:
    """The steps at which a run of ``max_steps`` steps evaluates: Trainer's own for the ratio ``eval_steps=1/n``
    (every multiple of ``ceil(max_steps / n)``, and the last step) where that gives at least n, else n steps
    spread evenly (``ceil(k · max_steps / n)``). The ratio falls short when ``max_steps`` is not a multiple of
    n: 12 steps give every 2nd, 6 evaluations; spread, 2, 3, 5, 6, 8, 9, 11, 12. A run shorter than n steps
    evaluates at every step."""
    interval = max(1, math.ceil(max_steps / evaluations))
    steps = list(range(interval, max_steps + 1, interval))
    if steps[-1:] != [max_steps]:
        steps.append(max_steps)
    if len(steps) >= min(evaluations, max_steps):
        return steps
    return sorted({math.ceil(k * max_steps / evaluations) for k in range(1, evaluations + 1)})


class EvaluateAtSteps(TrainerCallback):
    """Evaluates at :func:`evaluation_steps` once the run's length is known, instead of Trainer's interval."""

    def __init__(self, evaluations: int):
        self.evaluations, self.steps = evaluations, set()

    def on_train_begin(self, args, state, control, **kwargs):
        self.steps = set(evaluation_steps(state.max_steps, self.evaluations))
        state.eval_steps = state.max_steps + 1  # Trainer's own: only the last step, which is one of ours

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            control.should_evaluate = True


def _loss_history(trainer) -> list[tuple[int, float]]:
    return [(int(entry["step"]), float(entry["loss"])) for entry in trainer.state.log_history if "loss" in entry]


def _val_curve(trainer) -> list[tuple[int, float, float | None]]:
    """(step, validation loss, validation accuracy or None) of each evaluation during training."""
    return [(int(e["step"]), float(e["eval_loss"]), e.get("eval_accuracy")) for e in trainer.state.log_history
            if "eval_loss" in e]


def _accuracy(prediction) -> dict:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((logits.argmax(-1) == prediction.label_ids).mean())}


# what a run writes into its output folder, with what reads it (in the order `inilora train` lists them)
RUN_OUTPUTS = {"model": "model/ (transformers)", "adapter": "adapter/ (inilora.from_pretrained)",
               "adapter-lora": "adapter-lora/ (plain PEFT)", "checkpoints": "checkpoints/ (Trainer)",
               "metrics.json": "metrics.json", TRAIN_INFO: TRAIN_INFO}


def finished_run(out: Path) -> str | None:
    """What a folder holding a finished run of :func:`finetune` holds ("method lora, task reviews"), else None."""
    info = out / TRAIN_INFO
    if not info.is_file():
        return None
    try:
        saved = json.loads(info.read_text())
        return f"method {saved['config']['method']}, task {saved['task']}"
    except (ValueError, KeyError, TypeError):
        return "a run whose record cannot be read"


def remove_outputs(out: Path, keep: tuple[str, ...] = ()) -> None:
    """Remove what a run of :func:`finetune` wrote into ``out`` (:data:`RUN_OUTPUTS`, but ``keep``); nothing else."""
    import shutil

    for name in RUN_OUTPUTS:
        path = out / name
        if name in keep or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


VAL_EVALUATIONS = 8  # a run with a validation split evaluates on it at least this often during training


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The last ``checkpoint-N`` under ``folder`` that Trainer finished writing (its ``trainer_state.json``,
    written last, reads), or None. A run killed while writing a checkpoint leaves one without it, which
    Trainer's own ``resume_from_checkpoint=True`` would pick."""
    found = []
    for path in Path(folder).glob("checkpoint-*") if Path(folder).is_dir() else ():
        try:
            json.loads((path / "trainer_state.json").read_text())
            found.append((int(path.name.removeprefix("checkpoint-")), path))
        except (OSError, ValueError):
            continue
    return str(max(found)[1]) if found else None


def finetune(model_name: str | os.PathLike, task: Task, cfg: TrainConfig,
             output_dir: str | os.PathLike | None = None, resume: bool = False,
             validation: list[dict] | None = None, score_validation: bool = True,
             overwrite: bool = False) -> RunResult:
    """Fine-tune ``model_name`` on ``task`` as ``cfg`` says and evaluate it on the held-out set.

    With ``validation`` (rows carved from the training data, :func:`~inilora.experiments.tasks.carve_validation`),
    the model is also evaluated on them ``VAL_EVALUATIONS`` times during training (``RunResult.val_curve``)
    and at the end (``RunResult.validation``): what a tuned benchmark chooses by. ``score_validation=False``
    scores it by its loss alone (a generation task's greedy decoding of it is skipped; its metric is None): for a
    benchmark that chooses by the loss. The held-out (test) predictions are kept per example
    (``RunResult.predictions``).

    With ``output_dir``: the adapter (``adapter/``, via :func:`inilora.save_pretrained`), its plain
    PEFT export (``adapter-lora/``), ``metrics.json`` and ``inilora_train.json`` (what :func:`evaluate`
    needs) are written there; Trainer checkpoints go to ``checkpoints/`` when ``cfg.save_steps > 0``
    (``resume=True`` continues from the last one). A folder holding a finished run is refused unless
    ``overwrite`` (a new run: what the old one wrote is removed, its checkpoints before training, the rest
    when the new run saves, so the folder never mixes two runs) or ``resume`` (that run, continued). Under
    ``torchrun`` every process returns; the exact-match metric and the files come from the main process."""
    from transformers import set_seed

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    replaces = False
    if output_dir is not None and cfg.method != BASE and (previous := finished_run(Path(output_dir))):
        if not (overwrite or resume):
            raise ValueError(f"{output_dir} holds a finished run ({previous}); pass --overwrite to replace it (what "
                             "it wrote is removed), or choose another --output-dir.")
        replaces = True
        if overwrite and not resume and cfg.save_steps > 0:  # the new run's checkpoints must not mix with the old
            remove_outputs(Path(output_dir), keep=tuple(name for name in RUN_OUTPUTS if name != "checkpoints"))
    set_seed(cfg.seed)
    start = time.perf_counter()
    data = data_record(task) if output_dir is not None else None  # the files' digests now, before the long part
    tokenizer = models.load_tokenizer(model_name, cfg.revision)
    encoded_train = encode(tokenizer, task, cfg, task.train)
    encoded_eval = encode(tokenizer, task, cfg, task.eval)
    encoded_val = encode(tokenizer, task, cfg, validation) if validation else None
    with tempfile.TemporaryDirectory(prefix="inilora-") as scratch:
        work = Path(output_dir) / "checkpoints" if output_dir and cfg.save_steps > 0 else Path(scratch)
        tracks = bool(encoded_val) and cfg.method != BASE
        # made before the model: under torchrun it sets up the process group, so the IniLoRA fit is split over
        # the processes instead of repeated by each
        args = _training_args(cfg, str(work), task.kind, VAL_EVALUATIONS if tracks else 0)
        model, init = prepare_model(model_name, task, cfg, tokenizer, encoded_train)
        trainer = trainer_class(task.kind)(
            model=model, args=args, train_dataset=train_features(encoded_train),
            eval_dataset=train_features(encoded_val) if tracks else None, data_collator=collator(tokenizer, task.kind),
            processing_class=tokenizer, compute_metrics=_accuracy if tracks and task.kind == "classification" else None)
        if tracks:
            trainer.add_callback(EvaluateAtSteps(VAL_EVALUATIONS))
        if not cfg.progress:
            quiet_trainer(trainer)
        history: list[tuple[int, float]] = []
        curve: list = []
        train_seconds = 0.0
        if cfg.method != BASE:
            trained = trainer.train(resume_from_checkpoint=last_complete_checkpoint(work) if resume else None)
            train_seconds = float(trained.metrics.get("train_runtime", 0.0))
            history = _loss_history(trainer)
        curve = _val_curve(trainer)  # before the held-out evaluations below log theirs
        metrics, predictions = held_out_metrics(trainer, model, tokenizer, task, cfg, encoded_eval)
        val = {}
        if encoded_val:
            last = curve[-1] if curve else None
            if task.kind == "classification" and last and last[0] == trainer.state.global_step:
                val = {"metric": last[2], "loss": last[1]}  # the evaluation at the last step already scored it
            else:  # exact match needs the greedy decoding, which the evaluations during training skip
                val_metrics, _ = held_out_metrics(trainer, model, tokenizer, task, cfg, encoded_val,
                                                  decode=score_validation)
                val = {"metric": val_metrics.get(task.metric), "loss": val_metrics["eval_loss"]}
            val["n"] = len(encoded_val)
    metrics["n_train"] = len(encoded_train)
    metrics["steps"] = int(trainer.state.global_step)
    metrics["processes"] = trainer.args.world_size  # DDP's, as Trainer runs it
    metrics["wall_seconds"] = round(time.perf_counter() - start, 3)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = RunResult(metrics, history, train_seconds, trainable, init, parameters_digest(model), val,
                       curve, predictions)
    if output_dir is not None and cfg.method != BASE:
        save(model, tokenizer, task, cfg, model_name, result, Path(output_dir),
             is_main_process=trainer.args.should_save, data=data, replaces=replaces,
             keep=("checkpoints",) if cfg.save_steps > 0 else ())  # this run's own checkpoints stay
    return result


def save(model, tokenizer, task: Task, cfg: TrainConfig, model_name, result: RunResult, out: Path,
         is_main_process: bool = True, data: dict | None = None, replaces: bool = False,
         keep: tuple[str, ...] = ()) -> None:
    """Write the run's outputs into ``out``; with ``replaces``, first remove what the run it replaces wrote
    there (but ``keep``)."""
    if replaces and is_main_process:
        remove_outputs(out, keep=keep)
    if cfg.method == FULL:
        if is_main_process:
            model.save_pretrained(str(out / "model"))
            tokenizer.save_pretrained(str(out / "model"))
    elif cfg.method in PEERS:  # PEFT's own initialization: PEFT's own files
        if is_main_process:
            model.save_pretrained(str(out / "adapter"))
    else:
        inilora.save_pretrained(model, out / "adapter", is_main_process=is_main_process)
        if is_main_process:
            inilora.export_lora(model, out / "adapter-lora")
    if not is_main_process:
        return
    info = {"model": str(model_name), "task": task.name, "kind": task.kind, "labels": task.labels,
            "source": task.source, "files": task.files, "sizes": task.sizes, "data": data or data_record(task),
            "config": cfg.to_dict()}
    (out / TRAIN_INFO).write_text(json.dumps(info, indent=2))
    (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2))



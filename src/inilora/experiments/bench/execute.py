"""Running a benchmark: every missing run in a pool of spawned processes (``jobs`` × ``threads``),
each a :func:`~inilora.experiments.train.finetune` written atomically as one JSON file, then the report."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path


from ..._io import atomic_path, remove_stale_temps, write_json_atomic
from ..provenance import git_state, machine, versions
from ..tasks import changed_files, data_record, majority_rate
from .plan import RunSpec, Suite, init_version, method_and_solver, plan
from .report import aggregate
from .stats import PRIMARY


def run_one(spec: RunSpec, out: Path, threads: int) -> dict:
    """Train and evaluate one run, write its JSON; returns the record. The record holds what made it
    (``provenance``: commit, dirty flag, package versions, init version), its validation score and
    curve when the suite carves a validation split, its test score and per-example test predictions."""
    import torch

    from ..train import TrainConfig, finetune
    from ..train.config import REFERENCES, has_fit

    torch.set_num_threads(threads)
    overrides = spec.config()
    if spec.method in REFERENCES:
        overrides.pop("quantize", None)  # the references stay full precision under --quantize
    method, solver = method_and_solver(spec.method)
    cfg = TrainConfig(method=method, seed=spec.seed, solver=solver if has_fit(method) else None, progress=False,
                      **{k: v for k, v in overrides.items() if k not in ("method", "seed")})
    task, validation = spec.suite.load()
    started, cpu_started = time.time(), time.process_time()
    # a suite compared on its loss needs no greedy decoding of the validation split to choose its rate
    result = finetune(spec.suite.model, task, cfg, validation=validation, score_validation=spec.suite.metric is None)
    outcome = result.to_dict()
    record = {
        "task": spec.suite.name, "model": spec.suite.model, "kind": task.kind, "method": spec.method,
        "seed": spec.seed, "lr": cfg.lr, "spec": spec.key(), "config": cfg.to_dict(), "n_train": len(task.train),
        "n_eval": len(task.eval), "data_files": data_record(task)["files"],
        "majority": majority_rate(task.eval) if task.kind == "classification" else None,
        "val": outcome.pop("validation") or None,
        "test": {"metric": result.metrics.get(task.metric), "loss": result.metrics["eval_loss"]},
        **outcome, "started": started, "seconds": round(time.time() - started, 2), "threads": threads,
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "provenance": {**git_state(), "versions": versions(), "init_version": init_version(spec.method),
                       "machine": machine()},
    }
    write_json_atomic(spec.path(out), record)
    return record


def init_digest(spec: RunSpec) -> str | None:
    """The digest of the initial factors today's code makes for ``spec``'s model, method, seed and adapter
    settings (its learning rate and data do not enter), without training: what a finished run's recorded
    ``init.digest`` must equal to count. None where no digest is recorded (the references, PEFT's peers)."""
    from transformers import set_seed

    from .. import models
    from ..train import TrainConfig
    from ..train.config import has_fit
    from ..train.trainer import prepare_model

    method, solver = method_and_solver(spec.method)
    if init_version(spec.method) is None:
        return None
    overrides = {k: v for k, v in spec.config().items() if k not in ("method", "seed")}
    cfg = TrainConfig(method=method, seed=spec.seed, solver=solver if has_fit(method) else None, progress=False,
                      **overrides)
    task, _ = spec.suite.load()
    set_seed(cfg.seed)  # as finetune does before it builds the model
    _, init = prepare_model(spec.suite.model, task, cfg, models.load_tokenizer(spec.suite.model, cfg.revision))
    return init.get("digest")


def _worker_init(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    import transformers

    from ..quiet import drop_deepspeed_cpu_notice

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("inilora").setLevel(logging.WARNING)
    drop_deepspeed_cpu_notice()
    warnings.filterwarnings("ignore")


def _worker(spec: RunSpec, out: Path, threads: int) -> dict:
    try:
        return run_one(spec, out, threads)
    except Exception as exc:  # noqa: BLE001 - reported per run, the others go on
        with atomic_path(spec.path(out).with_suffix(".error.txt")) as error:
            error.write_text(traceback.format_exc())
        return {"error": f"{type(exc).__name__}: {exc}", "task": spec.suite.name, "method": spec.method,
                "seed": spec.seed}


def _summary_line(record: dict) -> str:
    name = f"{record['task']} {record['method']} seed {record['seed']}"
    if "error" in record:
        return f"{name}: FAILED ({record['error']})"
    metrics = record["metrics"]
    primary = PRIMARY[record["kind"]]
    parts = [f"{primary} {metrics[primary]:.3f}"] if primary in metrics else []
    parts.append(f"eval loss {metrics['eval_loss']:.3f}")
    return f"{name}: {', '.join(parts)} ({record['seconds']:.0f} s)"


def _why_redone(stale: list[RunSpec], out: Path) -> list[str]:
    """One line per task with finished runs that no longer count: its data changed (naming the files whose
    content changed), or its budget, model or package versions did."""
    reasons: dict[tuple[str, str], int] = {}
    for spec in stale:
        try:
            record = json.loads(spec.path(out).read_text())
        except (OSError, json.JSONDecodeError):
            record = {}
        if record.get("spec", {}).get("data") not in (None, spec.data):
            changed = changed_files(record.get("data_files") or {})
            why = f"{', '.join(changed)} changed since" if changed else "its examples changed since"
        elif "data" not in record.get("spec", {}):
            why = "no digest of the data recorded by"
        else:
            why = "another budget, model or package version than"
        reasons[spec.suite.name, why] = reasons.get((spec.suite.name, why), 0) + 1
    return [f"{task}: {why} {n} finished run(s); they will be redone" for (task, why), n in reasons.items()]


def run(suites: list[Suite], methods: tuple[str, ...], seeds: list[int], out: str | os.PathLike, jobs: int = 2,
        threads: int = 1, make_plots: bool = True, log=print) -> dict:
    """Run every missing run (``jobs`` in parallel), then aggregate. Returns the summary."""
    out = Path(out)
    # each run's key holds a digest of the examples it trains and is tested on (loading them fails fast on bad data)
    digests = {suite.name: suite.data_digest() for suite in suites}
    specs = [dataclasses.replace(spec, data=digests[spec.suite.name]) for spec in plan(suites, methods, seeds)]
    todo = [s for s in specs if not s.done(out)]
    for folder in {s.path(out).parent for s in todo if s.path(out).parent.is_dir()}:
        remove_stale_temps(folder)  # what runs killed while writing left (a run file is written whole or not at all)
    stale = [s for s in todo if s.path(out).is_file()]
    for line in _why_redone(stale, out):
        log(line)
    log(f"benchmark: {len(specs)} runs, {len(specs) - len(todo)} already done, {len(todo)} to run "
        f"({jobs} process(es) x {threads} thread(s)); results in {out}")
    started = time.time()
    failures = []
    if todo:
        import multiprocessing

        # warm the model cache once (the SmolLM2 conversion) before workers race for it
        from .. import models

        for model in sorted({s.suite.model for s in todo}):
            models.resolve(model)  # a hub id is fetched by each run's from_pretrained
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init,
                                 initargs=(threads,), max_tasks_per_child=1) as pool:
            futures = [pool.submit(_worker, spec, out, threads) for spec in todo]
            for done, future in enumerate(as_completed(futures), 1):
                record = future.result()
                if "error" in record:
                    failures.append(record)
                log(f"[{done}/{len(todo)}] {_summary_line(record)}")
    elapsed = time.time() - started
    meta_path = out / "invocations.json"
    history = json.loads(meta_path.read_text()) if meta_path.is_file() else []
    history.append({"command": " ".join(["inilora", *sys.argv[1:]]) if sys.argv else "", "started": started,
                    "wall_seconds": round(elapsed, 1), "runs_done": len(todo) - len(failures),
                    "jobs": jobs, "threads": threads, "cpus": os.cpu_count()})
    write_json_atomic(meta_path, history)
    summary = aggregate(out, make_plots=make_plots)
    summary["failures"] = failures
    return summary

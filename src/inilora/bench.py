"""The comparison benchmark: methods × seeds × tasks, each run a :func:`inilora.train.finetune`.

- Resumable: every finished run is one JSON file, ``OUT/runs/<task>/<method>/seed<k>.json``, written
  atomically; a run whose file exists is not redone.
- Parallel: ``jobs`` worker processes (spawned, ``threads`` torch threads each).
- Aggregation: mean ± std over seeds per method and task, the paired difference from ``lora`` (same
  seed: same data order, same head), a paired t-test, a Markdown table, PNG plots and one JSON file.

Presets (all: targets q/v, r = 8, alpha = 8, dropout 0, fp32, IniLoRA fitted with ``solver="svd"``,
the closed-form optimum of the published fit):

- ``full``: MiniLM × reviews (+ full fine-tuning), SmolLM2 × chain_sum and SmolLM2 × gsm_symbolic
  (+ the untrained model as a reference), all six methods, 3 seeds, and the published Adam fit
  (``inilora:adam``) on reviews — 96 minutes on 2 shared CPU cores (results/README.md).
- ``quick``: MiniLM × 512 reviews (2 epochs, 64 steps), lora vs inilora / -alpha / -beta, 3 seeds —
  about 5.5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import inilora
from inilora.errors import InitError
from inilora.methods import REGISTRY, get_method

PRIMARY = {"classification": "accuracy", "generation": "exact_match"}
BASELINE = "lora"

# Hyperparameters, scaled from the published scripts to a CPU budget (results/README.md says why)
GLUE_LIKE = {"lr": 1e-3, "batch_size": 16, "max_len": 64, "epochs": 1.0, "scheduler": "linear",
             "warmup_ratio": 0.06, "weight_decay": 0.01, "eval_batch_size": 64}
MATHS_LIKE = {"lr": 1e-3, "batch_size": 8, "epochs": 1.0, "scheduler": "cosine", "warmup_ratio": 0.03,
              "weight_decay": 0.0, "eval_batch_size": 50}


@dataclass(frozen=True)
class Suite:
    """One task of the benchmark: what to train on, with which model and budget."""

    name: str  # the task's label in the results
    model: str
    task: str | None = None  # a built-in task (inilora.data.TASKS or rg:NAME) ...
    train_file: str | None = None  # ... or the user's files
    eval_file: str | None = None
    n_train: int | None = None
    n_eval: int | None = None
    config: dict = field(default_factory=dict)  # TrainConfig fields
    full: dict | None = None  # full fine-tuning as a reference, with these overrides; None: not run
    extra: tuple[str, ...] = ()  # more variants, run after everything else: "inilora:adam" (the published fit)
    base: bool = False  # also evaluate the untrained model (generation tasks)

    def load(self):
        from . import data

        if self.train_file:
            task = data.file_task(self.train_file, self.eval_file)
            task.name = self.name
            return task
        return data.load_task(self.task, self.n_train, self.n_eval)


PRESETS = {
    "full": [
        Suite("reviews", "minilm", task="reviews", n_train=1200, n_eval=500,
              config={**GLUE_LIKE, "lr": 2e-3, "epochs": 2.0, "max_len": 48}, full={"lr": 5e-5},
              extra=("inilora:adam",)),
        Suite("chain_sum", "smollm2", task="chain_sum", n_train=256, n_eval=100,
              config={**MATHS_LIKE, "max_len": 96}, base=True, extra=("inilora:adam",)),
        Suite("gsm_symbolic", "smollm2", task="gsm_symbolic", n_train=96, n_eval=50,
              config={**MATHS_LIKE, "max_len": 192}, base=True, extra=("inilora:adam",)),
    ],
    "quick": [
        Suite("reviews", "minilm", task="reviews", n_train=512, n_eval=400,
              config={**GLUE_LIKE, "lr": 2e-3, "epochs": 2.0, "max_len": 48}),
    ],
}
PRESET_METHODS = {"full": inilora.METHODS, "quick": ("lora", "inilora", "inilora-alpha", "inilora-beta")}


@dataclass(frozen=True)
class RunSpec:
    suite: Suite
    method: str
    seed: int

    def path(self, out: Path) -> Path:
        folder = self.method.replace(":", "-")  # "inilora:adam" -> inilora-adam (no ':' in Windows paths)
        return out / "runs" / self.suite.name / folder / f"seed{self.seed}.json"

    def key(self) -> dict:
        """What a finished run must match to count as this run: a changed budget, or a method whose
        initial factors changed since (its ``Method.init_versions``), is redone."""
        key = {"model": self.suite.model, "task": self.suite.task, "train_file": self.suite.train_file,
               "eval_file": self.suite.eval_file, "n_train": self.suite.n_train, "n_eval": self.suite.n_eval,
               "config": dict(sorted({**self.suite.config, **((self.suite.full or {}) if self.method == "full"
                                                              else {})}.items()))}
        method, solver = method_and_solver(self.method)
        version = REGISTRY[method].init_version(solver) if method in REGISTRY else None  # not for references
        if version is not None:
            key["init_version"] = version
        return key

    def done(self, out: Path) -> bool:
        path = self.path(out)
        if not path.is_file():
            return False
        try:
            return json.loads(path.read_text()).get("spec") == self.key()
        except json.JSONDecodeError:
            return False


def plan(suites: list[Suite], methods: tuple[str, ...], seeds: list[int]) -> list[RunSpec]:
    """Every run, seed-major (a benchmark stopped early has whole seeds), references included."""
    specs = []
    for seed in seeds:
        for suite in suites:
            for method in methods:
                specs.append(RunSpec(suite, method, seed))
            if suite.full is not None:
                specs.append(RunSpec(suite, "full", seed))
    for suite in suites:
        if suite.base:
            specs.append(RunSpec(suite, "base", seeds[0]))
    for seed in seeds:
        for suite in suites:
            specs.extend(RunSpec(suite, variant, seed) for variant in suite.extra)
    return specs


def method_and_solver(name: str) -> tuple[str, str]:
    """``inilora:adam`` -> (``inilora``, ``adam``); a plain method name fits with the closed form."""
    method, _, solver = name.partition(":")
    return method, solver or "svd"


def check_variant(name: str) -> None:
    """Refuse a benchmark method that does not exist or whose solver would be ignored (``pissa:adam``)."""
    method, _, solver = name.partition(":")
    spec = get_method(method)
    if solver and solver not in spec.solvers:
        fits = f"its solvers are {', '.join(spec.solvers)}" if spec.solvers else "it has no fit to solve"
        raise InitError(f"method {name!r}: {method} cannot use solver {solver!r} ({fits}); "
                         f"write {method}" + (f" or {method}:<solver>" if spec.solvers else "") + ".")


def _write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def run_one(spec: RunSpec, out: Path, threads: int) -> dict:
    """Train and evaluate one run, write its JSON; returns the record."""
    import torch

    from .train import TrainConfig, finetune

    torch.set_num_threads(threads)
    overrides = dict(spec.suite.config)
    if spec.method == "full":
        overrides.update(spec.suite.full or {})
    method, solver = method_and_solver(spec.method)
    cfg = TrainConfig(method=method, seed=spec.seed, solver=solver, progress=False,
                      **{k: v for k, v in overrides.items() if k not in ("method", "seed")})
    task = spec.suite.load()
    started = time.time()
    result = finetune(spec.suite.model, task, cfg)
    record = {
        "task": spec.suite.name, "model": spec.suite.model, "kind": task.kind, "method": spec.method,
        "seed": spec.seed, "spec": spec.key(), "config": cfg.to_dict(), "n_train": len(task.train), "n_eval": len(task.eval),
        **result.to_dict(), "started": started, "seconds": round(time.time() - started, 2), "threads": threads,
        "versions": _versions(),
    }
    _write_atomic(spec.path(out), record)
    return record


def _versions() -> dict:
    import peft
    import torch
    import transformers

    return {"inilora": inilora.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def _worker_init(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("inilora").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")


def _worker(spec: RunSpec, out: Path, threads: int) -> dict:
    try:
        return run_one(spec, out, threads)
    except Exception as exc:  # noqa: BLE001 - reported per run, the others go on
        error = spec.path(out).with_suffix(".error.txt")
        error.parent.mkdir(parents=True, exist_ok=True)
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


def run(suites: list[Suite], methods: tuple[str, ...], seeds: list[int], out: str | os.PathLike, jobs: int = 2,
        threads: int = 1, make_plots: bool = True, log=print) -> dict:
    """Run every missing run (``jobs`` in parallel), then aggregate. Returns the summary."""
    out = Path(out)
    specs = plan(suites, methods, seeds)
    todo = [s for s in specs if not s.done(out)]
    stale = [s for s in todo if s.path(out).is_file()]
    if stale:
        log(f"{len(stale)} finished run(s) were made with another budget or model and will be redone")
    log(f"benchmark: {len(specs)} runs, {len(specs) - len(todo)} already done, {len(todo)} to run "
        f"({jobs} process(es) x {threads} thread(s)); results in {out}")
    started = time.time()
    failures = []
    if todo:
        import multiprocessing

        # warm the model cache once (the SmolLM2 conversion) before workers race for it
        from . import models

        for model in sorted({s.suite.model for s in todo}):
            models.resolve(model)
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
    out.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(history, indent=1))
    summary = aggregate(out, make_plots=make_plots)
    summary["failures"] = failures
    return summary


# --- aggregation --------------------------------------------------------------------------------------

def load_runs(out: str | os.PathLike) -> list[dict]:
    runs = []
    for path in sorted(Path(out).glob("runs/*/*/seed*.json")):
        try:
            runs.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue  # a file being written by another process
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_test(method: dict[int, float], baseline: dict[int, float], higher_is_better: bool = True) -> dict:
    """Paired comparison over the seeds both have: mean difference, its std, a paired t-test and a
    verdict (``better``/``worse`` when p < 0.05, else ``within seed noise``)."""
    seeds = sorted(set(method) & set(baseline))
    diffs = [method[s] - baseline[s] for s in seeds]
    result = {"n": len(seeds), "diff_mean": float("nan"), "diff_std": float("nan"), "p": float("nan"),
              "verdict": "n/a"}
    if not diffs:
        return result
    result["diff_mean"], result["diff_std"] = _mean_std(diffs)
    if len(diffs) < 2:
        result["verdict"] = "too few seeds"
        return result
    if all(d == diffs[0] for d in diffs):
        # no spread at all: the t statistic is undefined; a constant non-zero shift is still a difference
        result["p"] = 1.0 if diffs[0] == 0 else 0.0
    else:
        from scipy import stats

        result["p"] = float(stats.ttest_rel([method[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
    good = result["diff_mean"] > 0 if higher_is_better else result["diff_mean"] < 0
    result["verdict"] = ("better" if good else "worse") if result["p"] < 0.05 else "within seed noise"
    return result


def summarize(runs: list[dict]) -> dict:
    """Per task and method: mean ± std of each metric over seeds and the paired test against lora."""
    tasks: dict[str, dict] = {}
    for run in sorted(runs, key=lambda r: r.get("started", 0)):  # tasks in the order they were first run
        task = tasks.setdefault(run["task"], {"kind": run["kind"], "model": run["model"], "methods": {},
                                              "n_train": run["n_train"], "n_eval": run["n_eval"],
                                              "config": run["config"]})
        task["methods"].setdefault(run["method"], []).append(run)
    summary = {}
    for name, task in tasks.items():
        metrics = [PRIMARY[task["kind"]], "eval_loss"]
        rows = {}
        baseline = task["methods"].get(BASELINE, [])
        for method in _method_order(task["methods"]):
            method_runs = task["methods"][method]
            row = {"seeds": sorted(r["seed"] for r in method_runs),
                   "seconds": _mean_std([r["seconds"] for r in method_runs])[0]}
            for metric in metrics:
                values = {r["seed"]: r["metrics"][metric] for r in method_runs if metric in r["metrics"]}
                row[metric] = _mean_std(list(values.values()))
                if method not in (BASELINE, "base"):
                    base_values = {r["seed"]: r["metrics"][metric] for r in baseline if metric in r["metrics"]}
                    row[f"{metric}_vs_lora"] = paired_test(values, base_values, higher_is_better=metric != "eval_loss")
            rows[method] = row
        starts: dict[tuple, list[str]] = {}
        for method in rows:
            digests = tuple(sorted((r["seed"], r.get("init", {}).get("digest")) for r in task["methods"][method]))
            if all(d for _, d in digests):
                starts.setdefault(digests, []).append(method)
        task["same_start"] = [methods for methods in starts.values() if len(methods) > 1]
        summary[name] = {k: v for k, v in task.items() if k != "methods"} | {"metrics": metrics, "rows": rows}
    return summary


def _method_order(methods) -> list[str]:
    """Registry order, each method's solver variants (``inilora:adam``) after it, references last."""
    order = [*inilora.METHODS, "full", "base"]

    def position(name: str) -> tuple[int, bool]:
        method, _, solver = name.partition(":")
        return (order.index(method) if method in order else len(order), bool(solver))
    return sorted(methods, key=position)


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _fmt_test(test: dict | None, digits: int = 3) -> str:
    if not test or test["n"] == 0:
        return ""
    if math.isnan(test["p"]):
        return f"{test['diff_mean']:+.{digits}f} ({test['verdict']})"
    return f"{test['diff_mean']:+.{digits}f}, p={test['p']:.2f} ({test['verdict']})"


def markdown(summary: dict) -> str:
    lines = []
    for name, task in summary.items():
        primary = task["metrics"][0]
        lines += [f"### {name} — {task['model']}, {task['n_train']} training / {task['n_eval']} held-out examples", "",
                  f"| method | seeds | {primary} ↑ | Δ vs lora (paired) | held-out loss ↓ | Δ vs lora (paired) | s/run |",
                  "|---|---|---|---|---|---|---|"]
        for method, row in task["rows"].items():
            lines.append(f"| {method} | {len(row['seeds'])} | {_fmt(*row[primary])} | "
                         f"{_fmt_test(row.get(f'{primary}_vs_lora'))} | {_fmt(*row['eval_loss'])} | "
                         f"{_fmt_test(row.get('eval_loss_vs_lora'))} | {row['seconds']:.0f} |")
        if task.get("same_start"):
            lines.append("")
        for methods in task.get("same_start", []):
            lines.append(f"Note: {' and '.join(f'`{m}`' for m in methods)} started from identical factors on every "
                         "seed (same digest of A0, B0), so their runs are the same.")
        lines.append("")
    lines.append("Mean ± sample std over seeds. Δ: mean paired difference from `lora` (same seed: same data order, "
                 "same classifier head); p: two-sided paired t-test over seeds; a difference counts as better/worse "
                 "only at p < 0.05, otherwise it is within seed noise. `full`: full fine-tuning; `base`: the model "
                 "as loaded, not trained.")
    return "\n".join(lines) + "\n"


def plots(runs: list[dict], summary: dict, out: Path) -> list[Path]:
    """Training-loss curves per method (mean over seeds) and the final metric per method with error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = list(summary)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        by_method: dict[str, list] = {}
        for run in runs:
            if run["task"] == name and run["loss_history"]:
                by_method.setdefault(run["method"], []).append(dict(map(tuple, run["loss_history"])))
        for method in _method_order(by_method):
            histories = by_method[method]
            steps = sorted(set.intersection(*(set(h) for h in histories)))
            if steps:
                ax.plot(steps, [statistics.fmean(h[s] for h in histories) for s in steps], label=method)
        ax.set(title=f"{name}: training loss (mean over seeds)", xlabel="step", ylabel="loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "loss_curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # top row: each task's own metric; bottom row: held-out loss (the informative one where the metric is flat)
    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 8), squeeze=False)
    for column, name in enumerate(names):
        task = summary[name]
        methods = list(task["rows"])
        colors = ["tab:gray" if m == BASELINE else "tab:orange" if m in ("full", "base") else "tab:blue"
                  for m in methods]
        for ax, metric in zip(axes[:, column], (task["metrics"][0], "eval_loss")):
            means = [task["rows"][m][metric][0] for m in methods]
            stds = [task["rows"][m][metric][1] for m in methods]
            ax.bar(range(len(methods)), means, yerr=stds, capsize=4, color=colors)
            ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
            finite = [m for m in means if not math.isnan(m)]
            if finite and metric == "accuracy":
                ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05))
            label = "held-out loss" if metric == "eval_loss" else metric
            ax.set(title=f"{name}: {label} (mean ± std over seeds)", ylabel=label)
    fig.tight_layout()
    written.append(out / "final_metrics.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def aggregate(out: str | os.PathLike, make_plots: bool = True) -> dict:
    """Read every run under ``out``; write ``results.json``, ``results.md`` and the PNG plots."""
    out = Path(out)
    runs = load_runs(out)
    summary = summarize(runs)
    table = markdown(summary) if summary else "No finished runs.\n"
    out.mkdir(parents=True, exist_ok=True)
    invocations = json.loads((out / "invocations.json").read_text()) if (out / "invocations.json").is_file() else []
    _write_atomic(out / "results.json", {"summary": summary, "runs": runs, "invocations": invocations})
    (out / "results.md").write_text(table)
    files = plots(runs, summary, out) if make_plots and summary else []
    return {"summary": summary, "table": table, "files": [str(f) for f in files], "runs": len(runs)}


def preset(name: str) -> tuple[list[Suite], tuple[str, ...]]:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name], PRESET_METHODS[name]


def with_overrides(suite: Suite, **changes) -> Suite:
    """A copy of ``suite`` with budget overrides (``n_train``, ``n_eval``; config keys go into config)."""
    config_keys = {f.name for f in dataclasses.fields(Suite)}
    config = dict(suite.config)
    direct = {}
    for key, value in changes.items():
        if value is None:
            continue
        if key in config_keys:
            direct[key] = value
        else:
            config[key] = value
    return dataclasses.replace(suite, config=config, **direct)

"""The ``inilora`` console script: ``train``, ``init``, ``eval`` and ``bench``. Thin: parses (the training
options are generated from ``TrainConfig``), calls :mod:`inilora.experiments`, prints. Bad input ends in one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from .experiments import models
from .experiments.tasks import TASKS

EXIT_BAD_INPUT = 2
MODEL_HELP = ("minilm or smollm2 (offline, from PyPI packages), a local transformers model folder, or a hub id "
              "org/name (downloaded, or read from the hub cache; HF_HUB_OFFLINE=1 is honoured)")


class UsageError(ValueError):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, with a bad command line answered in one line (and a pointer to --help)."""

    commands: dict = {}  # the top-level parser's subcommand parsers, by name

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """argparse's, except that an unknown option is answered by the subcommand it was given to (which
        points at that subcommand's --help), not by the top-level parser."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.commands.get(getattr(parsed, "command", None), self).error(
                f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def _checked(convert, accept, what: str):
    """An argparse ``type``: ``convert`` the text, and refuse it unless ``accept(value)``."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")


def _csv_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    group = p.add_argument_group("data (a built-in task or your own files)")
    source = group.add_mutually_exclusive_group(required=required)
    source.add_argument("--task", help=f"built-in task: {', '.join(TASKS)}, or rg:<reasoning-gym name>")
    source.add_argument("--train-file", help="your data: .jsonl or .csv with text,label (classification) or "
                        "prompt,completion (generation)")
    group.add_argument("--eval-file", help="held-out data in the same format (default: hold out 10%% of --train-file)")
    group.add_argument("--n-train", type=_positive_int, help="use a fixed subset of this many training examples")
    group.add_argument("--n-eval", type=_positive_int, help="use a fixed subset of this many held-out examples")


def _config_args(p: argparse.ArgumentParser, config_class, only: tuple[str, ...] | None = None,
                 into=None, overrides: dict | None = None) -> None:
    """One option per field of ``config_class`` that has help text (of the fields named in ``only``, all
    in one group, ``into`` or the adapter group, when given): its flag, type, check, choices, help and default
    come from the field (``overrides`` may narrow a field's ``choices`` or replace its ``help`` for one
    command), and nothing is set unless given (the dataclass keeps the defaults)."""
    groups = {None: p, "adapter": into or p.add_argument_group("adapter"),
              "training": p.add_argument_group("training (transformers Trainer)") if only is None else None}
    for f in dataclasses.fields(config_class):
        meta = f.metadata
        if not meta.get("help") or (only is not None and f.name not in only):
            continue
        cli = dict(meta["cli"])
        group, unset = cli.pop("group", "adapter"), cli.pop("unset", None)
        group = groups[group if only is None else "adapter"]
        override = (overrides or {}).get(f.name, {})
        shown = f" (default: {f.default})" if f.default not in (None, unset) else ""
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.type == "bool":
            kwargs["action"], shown = ("store_false" if f.default else "store_true"), ""
        elif cli.pop("csv", False):
            kwargs["type"] = _csv_list
        else:
            convert = {"int": int, "float": float, "str": str}[f.type.split(" |")[0]]
            check = meta["check"]
            kwargs["type"] = _checked(convert, check.accept, check.what) if check else convert
            kwargs["choices"] = override.get("choices", cli.pop("cli_choices", meta["choices"]))
            cli.pop("cli_choices", None)
        group.add_argument(meta["flag"] or "--" + f.name.replace("_", "-"), help=override.get("help", meta["help"])
                           + shown, **kwargs, **cli)


INIT_SETTINGS = ("method", "r", "alpha", "dropout", "targets", "solver", "fit_steps", "seed", "progress")
BUDGET_SETTINGS = ("max_steps", "max_len", "batch_size", "lr", "dtype", "quantize")  # bench's overrides
INIT_KINDS = {"causal": "generation", "seq-cls": "classification", "base": "base"}  # --task-type -> model kind
REPORT_ROWS = 8  # layers shown without --verbose: all up to this many, else the first and last half of it


def build_parser() -> argparse.ArgumentParser:
    import inilora

    from .experiments.bench.plan import PRESETS  # cheap once TrainConfig's import has loaded torch
    from .experiments.train import TrainConfig

    parser = Parser(
        prog="inilora", description="Fine-tune and compare IniLoRA / LoRA / PiSSA / MiLoRA adapters offline.")
    sub = parser.add_subparsers(dest="command", metavar="{train,init,eval,bench}")
    sub.required = True
    parser.commands = sub.choices

    p = sub.add_parser("train", help="fine-tune a model with an adapter and evaluate it",
                       description="Fine-tune MODEL on a task or your data, evaluate it on the held-out set, and "
                       "save the adapter (inilora.save_pretrained) and its plain-PEFT export to OUTPUT_DIR. "
                       "--method inilora fits with --solver: adam by default (the published fit; `inilora bench` "
                       "calls it inilora:adam) or svd (the closed form; inilora:svd in bench).")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--output-dir", "-o", required=True, help="where the adapter, its export and metrics go")
    _add_data_args(p, required=True)
    _config_args(p, TrainConfig)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output dir")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in the output dir (what it "
                   "wrote is removed)")

    p = sub.add_parser("init", help="initialize once and write a residual model + a plain PEFT adapter",
                       description="Initialize MODEL's adapter and write OUT/residual_model (a transformers model "
                       "folder whose targets hold W - s*B0*A0) and OUT/adapter (a PEFT LoRA adapter holding A0, B0): "
                       "PeftModel.from_pretrained(AutoModel...from_pretrained(OUT/residual_model), OUT/adapter, "
                       "is_trainable=True) computes what MODEL computes, and trains with any stack. The residual "
                       "is written in full precision; for a 4-bit one, load residual_model with transformers' "
                       "BitsAndBytesConfig(load_in_4bit=True).")
    p.add_argument("--model", required=True, help="minilm, smollm2, or a local transformers model folder")
    p.add_argument("--output-dir", "-o", required=True, help="where residual_model/ and adapter/ go")
    _config_args(p, TrainConfig, only=INIT_SETTINGS,
                 overrides={"method": {"choices": inilora.METHODS, "help": "initialization"}})
    p.add_argument("--task-type", choices=tuple(INIT_KINDS), help="the model class to load: causal "
                   "(AutoModelForCausalLM), seq-cls (AutoModelForSequenceClassification, a fresh head), base "
                   "(AutoModel) (default: from the config's architectures)")
    p.add_argument("--num-labels", type=_positive_int, default=2, help="classes of a seq-cls head (default 2)")
    p.add_argument("--dtype", choices=list(models.DTYPES), default="float32",
                   help="load the model in this dtype (default float32)")
    p.add_argument("--residual-fp32", action="store_true", help="keep the residual in fp32 on a bf16/fp16 model")
    p.add_argument("--overwrite", action="store_true", help="replace residual_model/ and adapter/ if they exist")
    p.add_argument("--verbose", "-v", action="store_true", help="print every layer of the report")

    p = sub.add_parser("eval", help="evaluate a trained output folder on its task or other data",
                       description="Reload the adapter in RUN_DIR onto a fresh base model and evaluate it: by "
                       "default on the held-out set it was trained with (a --train-file run's files are recorded and "
                       "split again the same way), or on --task, on --train-file (+ --eval-file), or on --eval-file "
                       "alone (other data in the training format, evaluated whole).")
    p.add_argument("run_dir", help="an output folder of `inilora train`")
    p.add_argument("--model", help="the base model (default: the one it was trained from)")
    p.add_argument("--revision", help="the hub model's revision (default: the one it was trained from)")
    p.add_argument("--dtype", choices=list(models.DTYPES), help="dtype the base model loads in (default: as "
                   "trained); applies to a --method full run (its model/): an adapter run is evaluated on the dtype "
                   "it was trained on")
    _add_data_args(p, required=False)
    p.add_argument("--batch-size", type=_positive_int, default=TrainConfig.eval_batch_size,
                   help=f"evaluation batch size (default {TrainConfig.eval_batch_size})")
    p.add_argument("--max-new-tokens", type=_positive_int, help="greedy decoding length (generation tasks)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = sub.add_parser("bench", help="compare methods over seeds and tasks",
                       description="Run methods x seeds x tasks (resumable: finished runs are kept), then write "
                       "results.json, results.md and PNG plots to --out and print the table. Rows name inilora's "
                       "solver: inilora:svd (closed form) and inilora:adam (the published Adam fit).")
    p.add_argument("--quick", action="store_true", help="the small preset: MiniLM x 1,000 reviews, lora vs "
                   "inilora:svd vs pissa, each at its own learning rate, 3 seeds, about 7 minutes on 2 cores")
    p.add_argument("--preset", choices=PRESETS, help="a predefined benchmark (default: full). "
                   "tuned: every method at its own learning rate, chosen on a validation split carved from the "
                   "training data (a grid at 2 seeds, then 5 final seeds; --seeds and --lr do not apply); "
                   "CPU-hours, resumable")
    p.add_argument("--tasks", type=_csv_list, help="only these tasks of the preset")
    p.add_argument("--tuning", action="append", metavar="KEY=VALUE", help="the tuned preset: change one setting of "
                   "its [tuning] table, the value written as in TOML (repeatable): lr_grid=[1e-3,1e-2], "
                   "tune_seeds=[0,1], final_seeds=[0,1], max_extensions=0, refine=false")
    p.add_argument("--methods", type=_csv_list, help="methods, comma-separated (default: the preset's). A method "
                   "with a fit names its solver: inilora:svd (closed form, seconds) or inilora:adam (the published "
                   "20,000-step Adam fit, what `inilora train --method inilora` runs by default); a bare inilora is "
                   "refused. Results written before (rows named inilora) read as inilora:svd.")
    p.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds 0..N-1 (default 3)")
    p.add_argument("--jobs", type=_positive_int, default=2, help="parallel processes (default 2)")
    p.add_argument("--threads", type=_positive_int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--out", help="results folder (default runs/<preset>)")
    p.add_argument("--aggregate-only", action="store_true", help="only rebuild the table and plots")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    custom = p.add_argument_group("a custom benchmark (instead of a preset's tasks)")
    custom.add_argument("--model", help="model for --task / --train-file: " + MODEL_HELP)
    custom.add_argument("--revision", help="the hub model's revision (branch, tag or commit)")
    custom.add_argument("--task", help="a built-in task")
    custom.add_argument("--train-file", help="your data file")
    custom.add_argument("--eval-file", help="your held-out file")
    budget = p.add_argument_group("budget overrides", "a custom benchmark trains as `inilora train` does (the "
                                  "defaults shown); a preset's tasks keep the preset's settings unless overridden")
    budget.add_argument("--n-train", type=_positive_int, help="a fixed subset of a built-in task's training "
                        "examples (your files are used whole: cut them instead)")
    budget.add_argument("--n-eval", type=_positive_int, help="a fixed subset of a built-in task's held-out examples")
    _config_args(p, TrainConfig, only=BUDGET_SETTINGS, into=budget, overrides={"quantize": {
        "help": "every adapter method on a 4-bit residual (lora: QLoRA); use another --out than the "
                "full-precision runs"}})
    p.set_defaults(bench_parser=p)  # its options, to write the command line that reproduces a tuned benchmark
    return parser


FILES_WHOLE = "--n-train/--n-eval apply to built-in tasks; your files are used whole (cut them instead)."


def _task(args):
    from .experiments import tasks as data

    if args.train_file:
        if args.n_train or args.n_eval:
            raise UsageError(FILES_WHOLE)
        return data.file_task(args.train_file, args.eval_file, seed=getattr(args, "seed", 0))
    if args.eval_file:
        raise UsageError("--eval-file goes with --train-file.")
    return data.load_task(args.task, args.n_train, args.n_eval)


def cmd_train(args) -> int:
    from .experiments.train import TrainConfig, finetune
    from .experiments.train.trainer import RUN_OUTPUTS

    task = _task(args)
    given = vars(args).keys() & {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{name: getattr(args, name) for name in given})
    if args.resume and cfg.save_steps <= 0:
        raise UsageError("--resume needs --save-steps (checkpoints to resume from).")
    result = finetune(args.model, task, cfg, output_dir=args.output_dir, resume=args.resume,
                      overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, the main process reports and saves
    metrics = {k: v for k, v in result.metrics.items() if k != "samples"}
    print(json.dumps({"task": task.name, "method": cfg.method, **metrics}))
    written = [label for name, label in RUN_OUTPUTS.items() if Path(args.output_dir, name).exists()]
    print(f"saved to {args.output_dir}: {', '.join(written)}", file=sys.stderr)
    return 0


def cmd_init(args) -> int:
    from .experiments.offline import initialize
    from .experiments.train import TrainConfig

    given = vars(args).keys() & set(INIT_SETTINGS)
    cfg = TrainConfig(**{name: getattr(args, name) for name in given})
    report = initialize(args.model, args.output_dir, cfg, kind=INIT_KINDS.get(args.task_type), dtype=args.dtype,
                        residual_fp32=args.residual_fp32, num_labels=args.num_labels, overwrite=args.overwrite)
    lines = report.table().splitlines()  # summary, header, rule, one row per layer
    rows = lines[3:]
    if not args.verbose and len(rows) > REPORT_ROWS:
        half = REPORT_ROWS // 2
        rows = [*rows[:half], f"... {len(rows) - 2 * half} more layers (--verbose shows all)", *rows[-half:]]
    print("\n".join([*lines[:3], *rows]))
    print(f"written: {args.output_dir}/residual_model (transformers), {args.output_dir}/adapter (PEFT)", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from .experiments.train import evaluate

    eval_only = args.eval_file if not (args.task or args.train_file) else None  # --eval-file alone: other data
    if not (args.task or args.train_file) and (args.n_train or args.n_eval):
        raise UsageError("--n-train/--n-eval go with --task.")
    task = _task(args) if (args.task or args.train_file) else None
    metrics = evaluate(args.run_dir, task, args.model, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                       eval_file=eval_only, revision=args.revision, dtype=args.dtype)
    shown = {k: v for k, v in metrics.items() if k != "samples"}
    if args.json:
        print(json.dumps(shown))
    else:
        for key, value in shown.items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


def cmd_bench(args) -> int:
    import inilora

    from .experiments import bench

    if args.quick and args.preset not in (None, "quick"):
        raise UsageError("--quick is the quick preset; drop --preset.")
    name = "quick" if args.quick else (args.preset or "full")
    suites, methods = bench.preset(name)
    if args.task or args.train_file:
        if not args.model:
            raise UsageError("a custom benchmark (--task/--train-file) needs --model.")
        if args.train_file and (args.n_train or args.n_eval):
            raise UsageError(FILES_WHOLE)
        label = args.task or os.path.splitext(os.path.basename(args.train_file))[0]
        suites = [bench.custom_suite(name, label, args.model, task=args.task, train_file=args.train_file,
                                     eval_file=args.eval_file)]
    elif args.model or args.eval_file or args.revision:
        raise UsageError("--model/--eval-file/--revision define a custom benchmark together with --task or "
                         "--train-file.")
    if args.tasks:
        unknown = sorted(set(args.tasks) - {s.name for s in suites})
        if unknown:
            raise UsageError(f"unknown task(s) {', '.join(unknown)} for preset {name}; it has "
                             f"{', '.join(s.name for s in suites)}.")
        suites = [s for s in suites if s.name in args.tasks]
    if args.methods:
        unknown = sorted(m for m in args.methods if bench.method_and_solver(m)[0] not in inilora.METHODS
                         and not m.startswith("peft:"))
        if unknown:
            raise UsageError(f"unknown method(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(map(bench.row_name, inilora.METHODS))} (or inilora:adam, the published fit).")
        for method in args.methods:
            bench.check_variant(method)
        methods = tuple(args.methods)
    if args.tuning and name != "tuned":
        raise UsageError("--tuning changes the tuned preset's protocol; add --preset tuned.")
    budget = {name: getattr(args, name, None) for name in BUDGET_SETTINGS}  # set only when given
    suites = [bench.with_overrides(s, n_train=args.n_train, n_eval=args.n_eval, revision=args.revision, **budget)
              for s in suites]
    out = args.out or os.path.join("runs", name)
    if name == "tuned":
        return _bench_tuned(args, suites, methods, out)
    if args.aggregate_only:
        result = bench.aggregate(out, make_plots=not args.no_plots)
        if not result["runs"]:
            raise UsageError(f"no finished runs under {out}.")
    else:
        start = time.time()  # bench.run loads every suite's data first: a bad task or file fails before any run
        result = bench.run(suites, methods, list(range(args.seeds)), out, jobs=args.jobs, threads=args.threads,
                           make_plots=not args.no_plots, log=lambda line: print(line, file=sys.stderr, flush=True))
        print(f"benchmark wall time: {time.time() - start:.0f} s", file=sys.stderr)
    print(result["table"])
    print(result["reading"])
    print(f"written: {out}/results.json, {out}/results.md" + "".join(f", {f}" for f in result["files"]),
          file=sys.stderr)
    return 1 if result.get("failures") else 0


def _bench_tuned(args, suites, methods, out) -> int:
    from .experiments.bench import tuned, tuned_preset

    if getattr(args, "lr", None):
        raise UsageError("--lr does not apply to the tuned preset: it chooses each method's learning rate.")
    overrides = tuned_preset.parse_overrides(args.tuning or [])
    adapter, full = tuned_preset.protocols("tuned", overrides)
    command = _reproducing_command(args, out)
    if args.aggregate_only:
        result = tuned.report(suites, methods, out, adapter, full, command, make_plots=not args.no_plots,
                              log=lambda line: print(line, file=sys.stderr))
    else:
        start = time.time()
        result = tuned.run(suites, methods, out, adapter, full, jobs=args.jobs, threads=args.threads,
                           command=command, log=lambda line: print(line, file=sys.stderr, flush=True),
                           first=tuned_preset.first_methods("tuned", overrides))
        print(f"benchmark wall time: {time.time() - start:.0f} s", file=sys.stderr)
    print(Path(out, "results.md").read_text())
    print(f"written: {out}/summary.json, {out}/results.json, {out}/results.md" + "".join(f", {f}" for f in
          result["files"]), file=sys.stderr)
    return 1 if result.get("failures") else 0


NOT_REPRODUCED = ("help", "jobs", "threads", "out", "aggregate_only", "no_plots")  # how a benchmark runs, not what


def _reproducing_command(args, out: str) -> str:
    """The ``inilora bench`` command line that makes the same runs as ``args``: every option given that changes
    what runs (the preset, data, methods, budget and tuning settings), then ``--out``."""
    import shlex

    words = ["inilora", "bench"]
    for action in args.bench_parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in NOT_REPRODUCED or value in (None, False, action.default):
            continue
        flag = action.option_strings[-1]
        if value is True:
            words.append(flag)
        elif isinstance(action, argparse._AppendAction):
            words += [word for item in value for word in (flag, str(item))]
        else:
            words += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return shlex.join([*words, "--out", out])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import logging
    import warnings

    from .experiments.quiet import drop_deepspeed_cpu_notice

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    drop_deepspeed_cpu_notice()
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # "Loading weights" bars; Trainer's own bar stays
        handler = {"train": cmd_train, "init": cmd_init, "eval": cmd_eval, "bench": cmd_bench}[args.command]
        return handler(args)
    except KeyboardInterrupt:
        print("inilora: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        # every bad-input error of inilora (InitError, AdapterLoadError, DataError, ModelError) is a ValueError
        if os.environ.get("INILORA_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"inilora {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

"""The page's view of ``make quick`` (``inilora bench --quick``, committed as results/quick/): what it runs, how
long it took from a fresh clone, and what it found, with lora at the tuned benchmark's rate on the same budget
beside it. Figures come from the runs; the words that say what they mean are checked against them."""

from __future__ import annotations

from inilora.experiments.bench.report import _fmt

from .formatting import MODEL_NAMES, claim_check
from .timings import min_s

TEXT = """One command, on a fresh machine (creates `.venv`, installs what it needs, runs LoRA vs IniLoRA (closed form)
vs PiSSA on {model} × {n_train:,} reviews, each at its own learning rate, over {seeds} seeds, and prints the table with a
short reading under it):

```bash
make quick
```

Measured from a fresh clone on {cpus} CPU cores, installing included: {make_quick}, of which {bench_seconds:.0f} s of benchmark
([`results/quick/README.md`](results/quick/README.md)). Its runs are committed in
[`results/quick/`](results/quick/results.md) ({n_train:,} reviews, {epochs:g} epochs at batch {batch}: {steps} steps, inputs cut at
{max_len} tokens): LoRA {lora} accuracy, above the majority class ({majority:.3f}) on every seed; IniLoRA {inilora}
and PiSSA {pissa}; no paired difference is outside seed noise (p = {inilora_p:.2f} and {pissa_p:.2f}). The learning rates
are {lr} for all three, inside the tuned grid; {at_tuned_lr}"""
# what LoRA does on the quick budget at the rate the tuned benchmark chose for it at its own budget, by the runs
STUCK = """the rate the tuned benchmark chose for LoRA at its {tuned_steps} steps of {tuned_batch} ({tuned_lr})
leaves LoRA at the majority class on all {seeds} seeds at this budget ({link}), so the quick preset shows a LoRA that
learns, not every method at its tuned rate."""
LEARNS = """at the rate the tuned benchmark chose for LoRA at its {tuned_steps} steps of {tuned_batch} ({tuned_lr}), LoRA
reaches {accuracy} accuracy on this budget, above the majority class on all {seeds} seeds ({link}): the quick
preset's one shared rate is not its tuned rate, and the tuned benchmark below gives every method its own."""
LINK = "[`results/quick/lora_at_tuned_lr`](results/quick/lora_at_tuned_lr/results.md)"
METHODS = ("lora", "inilora:svd", "pissa")


def _rate(lr: float) -> str:
    """``0.002`` -> ``2e-3``, as the pages write learning rates."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


_holds = claim_check("results/quick", "TEXT", __file__)


def _one(values, what: str):
    """The one value every run shares (a budget, a rate), or an error naming what differs."""
    values = set(values)
    _holds(len(values) == 1, f"one {what} for every run, not {sorted(values, key=str)}")
    return values.pop()


def readme_block(quick: dict, at_tuned_lr: dict, tuned: dict, timing: dict) -> str:
    """``quick``: results/quick/results.json; ``at_tuned_lr``: results/quick/lora_at_tuned_lr/results.json (lora at
    the tuned rate on the quick budget); ``tuned``: results/tuned/results.json (that rate, its grid and budget);
    ``timing``: results/quick/make_quick.json (``time make quick`` from a fresh clone)."""
    task = quick["summary"]["reviews"]
    rows, majority = task["rows"], task["majority"]
    _holds(set(rows) == set(METHODS), f"the quick preset runs {', '.join(METHODS)}")
    budget = lambda runs: _one(((run["n_train"], run["metrics"]["steps"], run["config"]["batch_size"],
                                 run["config"]["epochs"], run["config"]["max_len"]) for run in runs), "budget")
    n_train, steps, batch, epochs, max_len = budget(quick["runs"])
    lr = _one((run["lr"] for run in quick["runs"]), "learning rate")
    seeds = _one((tuple(row["seeds"]) for row in rows.values()), "set of seeds")
    _holds(all(value > majority for value in rows["lora"]["values"]["accuracy"].values()),
           "LoRA above the majority class on every seed")
    tests = {method: rows[method]["accuracy_vs_lora"] for method in METHODS[1:]}
    _holds(all(rows[method][f"{metric}_vs_lora"]["verdict"] == "within seed noise" for method in METHODS[1:]
               for metric in task["metrics"]), "no paired difference outside seed noise")
    tuned_lora = tuned["summary"]["tasks"]["reviews"]["methods"]["lora"]
    _holds(lr in tuned_lora["lr_grid"], "the quick rate is inside the tuned grid")
    tuned_lr = _one((run["lr"] for run in at_tuned_lr["runs"]), "learning rate")
    _holds(tuned_lr == tuned_lora["chosen_lr"], "lora_at_tuned_lr runs at the rate the tuned benchmark chose")
    _holds(budget(at_tuned_lr["runs"]) == (n_train, steps, batch, epochs, max_len), "lora_at_tuned_lr on this budget")
    at_tuned = at_tuned_lr["summary"]["reviews"]
    values = at_tuned["rows"]["lora"]["values"]["accuracy"].values()
    stuck = all(value == at_tuned["majority"] for value in values)
    _holds(stuck or all(value > at_tuned["majority"] for value in values),
           "lora at the tuned rate either stays at the majority class on every seed or is above it on every seed")
    tuned_steps, tuned_batch = _one(((run["metrics"]["steps"], run["config"]["batch_size"]) for run in tuned["runs"]
                                     if (run["task"], run["method"]) == ("reviews", "lora")), "tuned budget")
    invocation = _one(((i["command"], i["wall_seconds"], i["cpus"]) for i in quick["invocations"]), "invocation")
    _holds(invocation[2] == timing["cpus"], "the benchmark and the timed make quick on the same machine")
    return TEXT.format(
        model=MODEL_NAMES[task["model"]], n_train=n_train, seeds=len(seeds),
        cpus=timing["cpus"], make_quick=min_s(timing["real_seconds"]), bench_seconds=invocation[1], epochs=epochs,
        batch=batch, steps=steps, max_len=max_len, majority=majority, lora=_fmt(*rows["lora"]["accuracy"]),
        inilora=_fmt(*rows["inilora:svd"]["accuracy"]), pissa=_fmt(*rows["pissa"]["accuracy"]),
        inilora_p=tests["inilora:svd"]["p"], pissa_p=tests["pissa"]["p"], lr=_rate(lr),
        at_tuned_lr=(STUCK if stuck else LEARNS).format(
            tuned_steps=tuned_steps, tuned_batch=tuned_batch, tuned_lr=_rate(tuned_lr), seeds=len(values),
            accuracy=_fmt(*at_tuned["rows"]["lora"]["accuracy"]), link=LINK))

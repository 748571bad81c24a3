"""The page's advice on which method and solver to use — the lines under "Try it" and the list under "Choosing
a method and solver" — with the costs and errors it quotes read from the fit benchmark, the initialization-time table, the
tuned benchmark and the 4-bit error ratios, and the words comparing them checked against those figures."""

from __future__ import annotations

import statistics

from inilora.experiments.bench.plan import preset
from inilora.experiments.bench.tuned_preset import protocols
from inilora.experiments.bench.stats import TOST_LEVEL, paired_values, read_comparison, t_interval
from inilora.experiments.bench.tuned_report import declared_readings
from inilora.experiments.bench.tuning import higher_is_better, holm
from inilora.experiments.bench.verdict import MARGINS, paired_p

from .fit import by_column
from .formatting import METRIC_NAMES, MODEL_NAMES, bound, claim_check, listed, span
from .quant import removed_share

TRY_IT = """`solver="svd"` is the fit's closed-form optimum (Eckart–Young): ~{svd_4096:.1f} s per 4096×4096 matrix at r = {speed_r} on one CPU thread ([`results/init_speed.md`](results/init_speed.md)).
`solver="adam"`, the default, is the published 20,000-step Adam fit: {adam_minilm:.0f} s for MiniLM's {minilm_matrices} q/v matrices and
{adam_smollm2:.0f} s for SmolLM2-135M's {smollm2_matrices} on one CPU thread ([`results/fit_benchmark.md`](results/fit_benchmark.md)).
Choosing: each at its own tuned learning rate, published fit − closed form on the {fits_tasks} tasks both ran (an exploratory
comparison, not a declared one; p adjusted over those tasks ≥ {fits_adjusted:.3f}; [`results/tuned`](results/tuned/results.md)):
{fits_diffs}. Neither fit is shown better than the other, so start with `svd` for its cost; use `adam` to reproduce the paper."""

CHOOSING = """- **Fit IniLoRA with `solver="svd"`** (the closed form): at the fit's optimum to 1e-7, seconds per layer
  ([`results/fit_benchmark.md`](results/fit_benchmark.md)). At their tuned learning rates neither fit is shown better
  than the other (p adjusted over the {fits_tasks} tasks both ran = {fits_adjusted_span}; {fits_readings},
  [`results/tuned`](results/tuned/results.md)).
  Use `solver="adam"` (the default, 20,000 Adam steps) to reproduce the paper exactly. On 7B-size layers
  `solver="svd_randomized"` takes {randomized_7b}× the closed form's time ({randomized_4096:.2f} s vs {svd_4096:.2f} s at 4096², r = {speed_r}, one
  thread) and stays within {randomized_error} of the optimum ([`results/init_speed.md`](results/init_speed.md));
  on MiniLM's and SmolLM2's layers, {randomized_small}×.
- **PiSSA and IniLoRA start from the same product**, factored differently (singular basis vs the published
  fit's mixed basis); MiLoRA uses the smallest singular triplets instead. Plain `lora` is the baseline every
  comparison is made against.
- **IniLoRA-α/β in bf16**: α's product is ~20× larger than `W`, so keep its residual in fp32
  (`residual_fp32=True`); the report's drift says when it matters ([Precision](docs/api.md#precision)).
- **4-bit bases**: `pissa` and `inilora` remove {quant_removed} of the 4-bit error of the frozen weight; α/β *add* error
  ([`results/quant_error.md`](results/quant_error.md)) — avoid them with `quantize=`.
- **Which initialization, and the learning rate**: residual methods start with both factors non-zero and move
  faster per step than LoRA (B = 0), so compare methods only at their own tuned learning rates (`inilora bench
  --preset tuned`). At those rates no IniLoRA variant reliably beats plain `lora`
  ([the tuned comparison](docs/benchmark.md#the-tuned-comparison-the-one-that-answers-the-papers-question), {final_seeds} seeds, Holm's
  correction within the declared comparisons); tune the learning rate of whichever you pick. Against `lora`:
{versus_lora}"""


_holds = claim_check("the committed results", "TEXT", __file__)


def _cpu_columns(fit: dict) -> dict:
    _holds(fit["machine"]["threads"] == 1, "the fit benchmark on one CPU thread")
    return by_column([run for run in fit["runs"] if (run["device"], run["dtype"]) == ("cpu", "float32")])


SPEED_R = 16  # the rank the advice quotes from the initialization-time table
SEVEN_B = ("4096x4096", "4096x11008", "11008x4096")


def _solver_seconds(speed: dict) -> dict[str, dict[str, float]]:
    """Per shape at rank :data:`SPEED_R`, inilora's median seconds for each closed-form solver
    (results/init_speed.json, one CPU thread); also the randomized solver's worst excess over the optimum."""
    _holds(speed["threads"] == 1 and speed["device"] == "cpu", "the initialization times on one CPU thread")
    cells = {"svd vs pissa": "svd", "svd_randomized vs pissa_niter_4": "svd_randomized"}
    seconds: dict[str, dict[str, float]] = {}
    for row in speed["rows"]:
        if row["cell"] in cells and row["r"] == SPEED_R:
            seconds.setdefault(row["model"], {})[cells[row["cell"]]] = statistics.median(row["inilora_seconds"])
    return seconds


FITS = ("inilora:adam", "inilora:svd")  # published fit, closed form
FINAL_SEEDS = len(protocols("tuned")[0].final_seeds)  # a comparison is read once both methods have them all


def fits_compared(tuned: dict) -> list[dict]:
    """The two fits at their tuned learning rates, on every task where both have all their final seeds: the mean
    paired difference (published fit − closed form) with its 95 % and 90 % t intervals over seeds, the paired
    t-test's p, its step-down adjustment over those tasks, and the reading by the declared comparisons' rule and
    margins. Not one of the declared comparisons (so not "Holm"): advice on the solver, read as exploratory."""
    rows = []
    for task, entry in tuned["summary"]["tasks"].items():
        tests = [entry["methods"].get(name, {}).get("test") for name in FITS]
        if all(t and len(t["values"]) >= FINAL_SEEDS for t in tests):
            adam, svd = (dict(zip(t["seeds"], t["values"])) for t in tests)
            diffs = paired_values(adam, svd)
            rows.append({"task": task, "metric": entry["metric"], "p": paired_p(adam, svd),
                         "diff": sum(diffs) / len(diffs), "ci95": t_interval(diffs),
                         "ci90": t_interval(diffs, TOST_LEVEL), "margin": MARGINS[entry["metric"]]})
    adjusted = holm({row["task"]: 1.0 if row["p"] is None else row["p"] for row in rows})
    for row in rows:
        row["p_adjusted"] = adjusted[row["task"]]
        row["reading"] = "inconclusive" if row["p"] is None else read_comparison(
            row["diff"], row["p_adjusted"], row["margin"], [row["ci90"]], higher_is_better(row["metric"]))
    _holds(len(rows) >= 2, "the two fits compared on at least two tasks")
    _holds(all(row["reading"] not in ("better", "worse") for row in rows),
           "neither fit shown better than the other on any task")
    return rows


def counted_readings(results: dict, seeds: int) -> dict[str, dict[str, list[str]]]:
    """Per declared comparison of a tuned benchmark's ``results.json``, the tasks (of those with all ``seeds``
    final seeds) it reads better, worse, equivalent within the margin and inconclusive on (:func:`reading_of`'s
    words, checked against each row's figures)."""
    metrics = {task: entry["metric"] for task, entry in results["summary"]["tasks"].items()}
    return {comparison: {kind: [task for task, _ in kinds.get(kind, [])]
                         for kind in ("better", "worse", "equivalent", "inconclusive")}
            for comparison, kinds in declared_readings(results["declared"], metrics, seeds).items()}


def fully_read(readings: dict[str, dict[str, list[str]]]) -> set[str]:
    """The tasks on which every comparison of :func:`counted_readings` is read (has all its final seeds)."""
    tasks = [{task for kind in kinds.values() for task in kind} for kinds in readings.values()]
    return set.intersection(*tasks) if tasks else set()


def counted(kinds: dict[str, list[str]]) -> str:
    """One comparison's readings as the verdicts word them: "better on 1 of 6 tasks (hyperbaton), worse on 0, ..."."""
    read = sum(map(len, kinds.values()))
    return (f"better on {len(kinds['better'])} of {read} tasks{_named(kinds['better'])}, worse on "
            f"{len(kinds['worse'])}{_named(kinds['worse'])}, equivalent within the margin on "
            f"{len(kinds['equivalent'])}{_named(kinds['equivalent'])}, inconclusive on {len(kinds['inconclusive'])}")


def _against_lora(tuned: dict) -> list[str]:
    """Per declared comparison with ``lora``: on how many tasks (of those with all final seeds) it reads better
    and worse after Holm's correction within the declared family, naming them, and how many read equivalent
    within the margin or inconclusive."""
    parts = []
    for comparison, kinds in counted_readings(tuned, FINAL_SEEDS).items():
        if not comparison.endswith(" vs lora"):
            continue
        _holds(2 * len(kinds["better"]) <= sum(map(len, kinds.values())), "no IniLoRA variant reliably beats plain lora")
        parts.append(f"`{comparison.removesuffix(' vs lora')}`: {counted(kinds)}")
    return parts


def versus_lora(tuned: dict) -> str:
    # a sub-list: indented by 4 spaces, which GitHub and Python-Markdown (the site) both read as nested
    return ";\n".join(f"    - {part}" for part in _against_lora(tuned)) + "."


VERDICT = """{pending}Not at tuned learning rates. The tuned benchmark gives every method its own learning rate, chosen on a
validation split, then trains {final_seeds} seeds per task on {tasks} tasks ({models}) and reads each comparison
declared in the preset: better or worse after Holm's correction within that family, equivalent when the 90 % CI lies
inside the declared margin, otherwise inconclusive (not evidence of no difference). Against plain `lora`:
{versus_lora}.
Every table, the plots and the untuned runs: [the benchmark](docs/benchmark.md)."""


def verdict(tuned: dict) -> str:
    """The page's one-paragraph verdict (``tuned``: results/tuned/results.json): each declared comparison with
    ``lora``, counted over the tasks with all final seeds."""
    tasks = tuned["summary"]["tasks"]
    models = sorted({task["model"] for task in tasks.values()}, key=list(MODEL_NAMES).index)
    return VERDICT.format(pending=pending(tuned), final_seeds=FINAL_SEEDS, tasks=len(tasks), versus_lora=";\n".join(_against_lora(tuned)),
                          models=" and ".join(MODEL_NAMES[model] for model in models))


WHERE_IT_STANDS = "docs/benchmark.md#the-tuned-comparison-the-one-that-answers-the-papers-question"


def pending(tuned: dict) -> str:
    """A warning when the aggregate is not of the preset's tasks (made before they changed): which of its tasks
    the preset no longer has and which it has that the aggregate lacks; or, when it is, which of them still lack
    some declared comparison's final seeds (the counts are over the others); empty once every one is read."""
    current = [suite.task for suite in preset("tuned")[0]]
    counted = list(tuned["summary"]["tasks"])
    gone, new = [t for t in counted if t not in current], [t for t in current if t not in counted]
    if not gone and not new:
        read = fully_read(counted_readings(tuned, FINAL_SEEDS))
        running = [task for task in current if task not in read]
        if not running:
            return ""
        return (f"**Still running.** {listed(running)} {'has' if len(running) == 1 else 'have'} not yet every declared "
                f"comparison at all {FINAL_SEEDS} final seeds; each count below is over the tasks where its comparison "
                f"has them ({len(current) - len(running)} of {len(current)} tasks have all). The runs are committed as "
                f"they finish ([where it stands]({WHERE_IT_STANDS})).\n\n")
    return (f"**Pending reruns.** This is the last aggregate made before the benchmark's tasks changed: it counts "
            f"{', '.join(gone) or 'no task'} (no longer part of the preset) and lacks {', '.join(new) or 'no task'}. "
            "The runs under the current protocol are committed as "
            f"they finish ([where it stands]({WHERE_IT_STANDS})).\n\n")


def _named(tasks: list[str]) -> str:
    return f" ({', '.join(tasks)})" if tasks else ""


def try_it(speed: dict, fit: dict, tuned: dict) -> str:
    """The lines under the first example (``speed``: results/init_speed.json, ``fit``: results/fit_benchmark.json,
    ``tuned``: results/tuned/results.json): each solver's cost and the two fits compared at tuned rates."""
    adam = {model: cells["adam-batched"] for (model, rank), cells in _cpu_columns(fit).items() if rank == 8}
    return TRY_IT.format(svd_4096=_solver_seconds(speed)["4096x4096"]["svd"], speed_r=SPEED_R,
                         adam_minilm=adam["minilm"]["seconds"], minilm_matrices=adam["minilm"]["matrices"],
                         adam_smollm2=adam["smollm2"]["seconds"], smollm2_matrices=adam["smollm2"]["matrices"],
                         **_fits_fields(tuned))


def _fits_fields(tuned: dict) -> dict:
    rows = fits_compared(tuned)
    diffs = [f"{row['task']} {row['diff']:+.3f} {METRIC_NAMES.get(row['metric'], row['metric'])} (95 % CI "
             f"{row['ci95'][0]:+.3f} to {row['ci95'][1]:+.3f}, {_words(row)})" for row in rows]
    counts = {}
    for row in rows:
        counts[_words(row)] = counts.get(_words(row), 0) + 1
    return {"fits_tasks": len(rows), "fits_adjusted": min(row["p_adjusted"] for row in rows),
            "fits_adjusted_span": span([row["p_adjusted"] for row in rows], ".2g"), "fits_diffs": "; ".join(diffs),
            "fits_readings": ", ".join(f"{words} on {n}" for words, n in counts.items())}


def _words(row: dict) -> str:
    return f"equivalent within ±{row['margin']:g}" if row["reading"] == "equivalent" else row["reading"]


def choosing(fit: dict, speed: dict, tuned: dict, quant: dict) -> str:
    """The list under "Choosing a method and solver" (``quant``: results/quant_error.json; the others as for
    ``try_it``): the closed form's error, the randomized solver's time against it at 7B shapes and on small layers."""
    columns = _cpu_columns(fit)
    _holds(max(cells["svd"]["max_ratio"] for cells in columns.values()) - 1 <= 1e-7,
           "the closed form at the optimum to 1e-7")
    seconds = _solver_seconds(speed)
    _holds(max(seconds[shape]["svd"] for shape in SEVEN_B) < 10, "seconds per layer")
    at_7b = [seconds[shape]["svd_randomized"] / seconds[shape]["svd"] for shape in SEVEN_B]
    small = [cells["svd_randomized"] / cells["svd"] for model, cells in seconds.items() if model not in SEVEN_B]
    _holds(max(at_7b) < 1, "svd_randomized faster than the closed form at 7B shapes")
    randomized_excess = [row["inilora_excess"] for row in speed["rows"] if row["cell"].startswith("svd_randomized")]
    return CHOOSING.format(
        **_fits_fields(tuned), versus_lora=versus_lora(tuned), final_seeds=FINAL_SEEDS, randomized_7b=span(at_7b, ".2f"),
        randomized_4096=seconds["4096x4096"]["svd_randomized"], svd_4096=seconds["4096x4096"]["svd"], speed_r=SPEED_R,
        randomized_error=bound(max(randomized_excess)), randomized_small=span(small, ".2f"),
        quant_removed=removed_share(quant))

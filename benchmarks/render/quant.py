"""The 4-bit blocks (docs/quantization.md): the error ratio table and its reading (results/quant_error.json,
written by benchmarks/quant_error.py), and fine-tuning on a 4-bit residual (results/quant_finetune.json, written
by benchmarks/quant_finetune.py)."""

from __future__ import annotations

import json

from quant_error import REFIT, RUNS

from .formatting import MODEL_NAMES, claim_check

README_NAMES = {"inilora-alpha": "inilora-α", "inilora-beta": "inilora-β"}
README_DIGITS = {"inilora-alpha": 2, "inilora-beta": 2}  # ratios of 2-20: more digits say nothing


def readme_table(result: dict) -> str:
    """The page's view: a row per model and targets, a column per method, the mean ratio over targets (and for
    the refitted method, after each refit). A row whose methods covered different layers says which covered what."""
    methods = [m for m, _ in RUNS]
    refits = max(row["quant_iters"] for row in result["rows"])
    header = [README_NAMES.get(m, m) for m in methods]
    header[methods.index(REFIT)] = (f"{REFIT} (svd), after {' and '.join(str(i) for i in range(1, refits + 1))} "
                                    "LoftQ refits")
    lines = ["| model, targets | " + " | ".join(header) + " |", "|---|" + "---|" * len(methods)]
    groups: dict = {}
    for row in result["rows"]:
        groups.setdefault((row["model"], row["targets"]), {})[row["method"]] = row
    for (model, targets), rows in groups.items():
        covered: dict = {}  # which layers each method ran on -> the methods
        for method, row in rows.items():
            blocks = f"first {row['blocks']} blocks, " if row.get("blocks") else ""
            covered.setdefault(f"{blocks}{row['summary']['targets']}", []).append(method)
        *named, (most, _) = sorted(covered.items(), key=lambda item: len(item[1]))
        scope = "; ".join([f"{', '.join(ms)}: {layers}" for layers, ms in named]
                          + [f"others: {most}" if named else most])
        cells = [" → ".join(f"{mean:.{README_DIGITS.get(m, 4)}f}" for mean in rows[m]["summary"]["mean"])
                 if m in rows else "–" for m in methods]
        lines.append(f"| {MODEL_NAMES[model]} {'q/v' if targets == 'qv' else targets} ({scope}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _first_ratios(result: dict, methods: tuple[str, ...]) -> list[float]:
    """The mean ratio of each row of ``methods``, for their own factors (before any refit)."""
    return [row["summary"]["mean"][0] for row in result["rows"] if row["method"] in methods]


_holds = claim_check("results/quant_error.json", "READING or removed_share", __file__)


def removed_share(result: dict) -> str:
    """How much of the 4-bit error ``pissa`` and ``inilora`` remove, as the page says it ("7–9%": 1 − ratio over
    every model, widened to whole percents); the words around it are checked: they remove error, α/β add it."""
    import math

    removed = [round(100 * (1 - ratio), 9)  # 15.000000000000002 is 15
               for ratio in _first_ratios(result, ("pissa", REFIT))]
    _holds(min(removed) > 0, "PiSSA and IniLoRA remove part of the 4-bit error")
    _holds(min(_first_ratios(result, ("inilora-alpha", "inilora-beta"))) > 1, "IniLoRA-α/β add error")
    return f"{math.floor(min(removed))}–{math.ceil(max(removed))}%"


READING = """PiSSA and IniLoRA remove {removed} of the 4-bit error (`quant_iters` more), MiLoRA at most {milora:.1f}%; IniLoRA-α/β *add* error,
because their large random product makes the residual harder to quantize. `save_pretrained`/`from_pretrained`
rebuild byte-identical packed weights from the original full-precision base. `export_lora` and
`merge_and_unload` on a 4-bit residual are not exact (`Q(W_res) + BA ≠ W + ΔW`): they warn
(`QuantizedExportWarning`) with the size of the gap."""


def readme_reading(result: dict) -> str:
    """The paragraph under the page's table: what the residual methods remove, from the same rows."""
    removed = removed_share(result)
    refits = [row["summary"]["mean"] for row in result["rows"] if row["method"] == REFIT]
    _holds(all(len(means) > 1 and all(a > b for a, b in zip(means, means[1:])) for means in refits),
           "every LoftQ refit removes more")
    milora = _first_ratios(result, ("milora",))
    _holds(min(milora) > max(_first_ratios(result, ("pissa", REFIT))), "MiLoRA removes less than PiSSA and IniLoRA")
    return READING.format(removed=removed, milora=max(0.0, 100 * (1 - min(milora))))


QUANT_FINETUNE_METHODS = ("lora", "inilora", "pissa")  # the 4-bit rows the reading names


FINETUNE_READING = """Fine-tuning on a 4-bit residual, measured on CPU (MiniLM × reviews, {steps} steps, {seeds} seeds;
[`results/quant_finetune.md`](results/quant_finetune.md)): every run stays at the majority class, so only the
held-out loss separates them — QLoRA {lora}, 4-bit IniLoRA {inilora}, 4-bit PiSSA
{pissa} — no paired difference is outside seed noise (p = {inilora_p:.2f} and {pissa_p:.2f}). This budget is too small to say more."""


def finetune_reading(data: dict) -> str:
    """The page's paragraph on 4-bit fine-tuning (``data``: results/quant_finetune.json): the nf4 rows' held-out
    loss, and paired t-tests over seeds against QLoRA; its words are checked against the runs."""
    import math

    from inilora.experiments.bench.stats import paired_test

    holds = claim_check("results/quant_finetune.json", "FINETUNE_READING", __file__)

    rows = {row["method"]: row for row in data["summary"] if row["quantize"] == "nf4"}
    holds(set(rows) == set(QUANT_FINETUNE_METHODS), f"4-bit rows for {', '.join(QUANT_FINETUNE_METHODS)}")
    holds(len({run["accuracy"] for run in data["runs"]}) == 1, "every run stays at the majority class")
    seeds = {tuple(row["seeds"]) for row in rows.values()}
    holds(len(seeds) == 1, "the same seeds for every 4-bit row")
    loss = {method: dict(zip(row["seeds"], row["eval_loss"])) for method, row in rows.items()}
    tests = {method: paired_test(loss[method], loss["lora"], higher_is_better=False) for method in QUANT_FINETUNE_METHODS[1:]}
    holds(all(test["verdict"] == "within seed noise" for test in tests.values()),
          "no paired difference outside seed noise")
    steps = {math.ceil(run["n_train"] / (run["config"]["batch_size"] * run["config"]["grad_accum"]))
             * run["config"]["epochs"] for run in data["runs"]}
    holds(len(steps) == 1, "one budget for every run")
    shown = lambda method: f"{rows[method]['eval_loss_mean']:.4f} ± {rows[method]['eval_loss_std']:.4f}"
    return FINETUNE_READING.format(steps=f"{steps.pop():g}", seeds=len(seeds.pop()), lora=shown("lora"),
                          inilora=shown("inilora"), pissa=shown("pissa"), inilora_p=tests["inilora"]["p"],
                          pissa_p=tests["pissa"]["p"])


def results_markdown(result: dict) -> str:
    lines = [f"# 4-bit quantization error ratio per method ({result['quant']}, r = {result['r']}, alpha = {result['r']})",
             "", f"Command: `{result['command']}`  ", f"Versions: {result['versions']}  ",
             "Ratio per target: ‖deq(Q(W − s·B0A0)) + s·B0A0 − W‖_F / ‖deq(Q(W)) − W‖_F (plain QLoRA = 1.0). "
             "Mean over targets (min–max); for inilora the refits column is LoftQ-style refinement.", "",
             "| model | targets | method | ratio (mean, min–max) | after refits (mean) | seconds |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        s = row["summary"]
        refits = " → ".join(f"{m:.4f}" for m in s["mean"][1:]) or "-"
        blocks = f", first {row['blocks']} blocks" if row.get("blocks") else ""
        lines.append(f"| {row['model']} | {row['targets']} ({s['targets']}{blocks}) | {row['method']} | {s['mean'][0]:.4f} "
                     f"({s['min'][0]:.4f}–{s['max'][0]:.4f}) | {refits} | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def finetune_markdown(data: dict) -> str:
    rows, meta = data["summary"], data["meta"]
    lines = ["# 4-bit fine-tuning on CPU: QLoRA vs 4-bit IniLoRA vs 4-bit PiSSA (MiniLM x reviews)", "",
             "Budget: the quick preset (512 training / 400 held-out reviews, 2 epochs = 64 steps, batch 16, lr 2e-3, "
             "max_len 48, r = alpha = 8 on query/value, fp32 compute); seeds 0, 1, 2 (same data order and "
             "classifier head per seed). nf4 rows: every target's residual stored as a bitsandbytes NF4 "
             "`Linear4bit` (double quantization), the factors computed from the full-precision weight.", "",
             "At this budget every run stays at the majority class (accuracy 0.6625 = 265/400): accuracy does not "
             "separate the methods, the held-out loss does. Rows with fewer than 3 seeds were cut off by the deadline.",
             "",
             "| method | seeds | accuracy (mean ± std) | per seed | held-out loss (mean ± std) | per seed | s/run |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['label']} | {', '.join(map(str, row['seeds']))} | {row['accuracy_mean']:.3f} ± {row['accuracy_std']:.3f} | "
                     f"{', '.join(f'{a:.4f}' for a in row['accuracy'])} | {row['eval_loss_mean']:.4f} ± "
                     f"{row['eval_loss_std']:.4f} | {', '.join(f'{v:.4f}' for v in row['eval_loss'])} | "
                     f"{row['seconds_mean']:.0f} |")
    lines += ["", "s/run: wall time of one run (load, init, 64 steps, evaluation), 2 processes x 1 thread on a "
              "2-core machine shared with other work (`nice -n 10`); the timings are indicative only.", "",
              f"Commands (collected by `python benchmarks/quant_finetune.py` at commit {meta['commit']}):", "",
              "```bash", *meta["commands"], "```", "", f"Versions: {json.dumps(meta['versions'])}", ""]
    return "\n".join(lines)

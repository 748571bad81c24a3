"""The tuned benchmark's 4-bit arm (``--preset tuned-4bit``; results/tuned_4bit/results.json, which holds its
summary.json): the verdict in the words of the main one, and the advice for QLoRA users that follows from it.
Until the arm has run, both say so and claim nothing. Methods, tasks and seeds come from the preset."""

from __future__ import annotations

from inilora.experiments.bench.tuned_preset import arm, protocols

from .advice import counted, counted_readings, fully_read
from .formatting import MODEL_NAMES, claim_check, listed
from .quant import removed_share

PRESET, OUT = "tuned-4bit", "results/tuned_4bit"
ARM = arm(PRESET)
FINAL_SEEDS = len(protocols(PRESET)[0].final_seeds)
QLORA = "lora"  # on the arm's 4-bit residual
NAMES = {"lora": "QLoRA", "inilora:svd": "4-bit IniLoRA", "inilora:svd+loftq": "4-bit IniLoRA with LoftQ-style refits",
         "pissa": "4-bit PiSSA"}
COMMAND = f"inilora bench --preset {PRESET} --out {OUT}"


def _arm_line() -> str:
    named = [f"{NAMES.get(m, m)} (`{m}`)" for m in ARM["methods"]]
    methods = listed(named)
    return (f"The tuned benchmark's 4-bit arm (`{COMMAND}`) trains {methods} on an {ARM['quantize']} residual, each "
            f"at its own learning rate chosen on validation, {FINAL_SEEDS} final seeds, on {listed(ARM['tasks'])}")



def _name(comparison: str) -> str:
    method, reference = comparison.split(" vs ")
    return f"{NAMES.get(method, method)} vs {NAMES.get(reference, reference)}"


def verdict(results: dict | None) -> str:
    """The README's 4-bit verdict (``results``: the arm's results.json, None before it exists)."""
    if results is None:
        return (f"Not measured yet. {_arm_line()} (MiniLM). It has not been run, so nothing here says whether a "
                "4-bit IniLoRA or PiSSA start fine-tunes better than QLoRA; what is measured is the start's lower "
                "4-bit error ([4-bit and offline](docs/quantization.md)).")
    readings = counted_readings(results, FINAL_SEEDS)
    tasks = results["summary"]["tasks"]
    models = sorted({task["model"] for task in tasks.values()}, key=list(MODEL_NAMES).index)
    head = f"{_arm_line()} ({' and '.join(MODEL_NAMES[m] for m in models)}), and reads its declared comparisons " \
           "as the main verdict does."
    if not readings:
        return f"{head} Under way: no declared comparison has all its final seeds yet ({len(results['runs'])} runs)."
    lines = [f"{_name(comparison)}: {counted(kinds)}" for comparison, kinds in readings.items()]
    return (f"{head}{_pending(readings)}\n" + ";\n".join(lines) + ".\nEvery column, each start's error ratio and "
            f"the gap to full-precision `lora`: [`{OUT}`]({OUT}/results.md).")


def _pending(readings: dict[str, dict[str, list[str]]]) -> str:
    """" Read so far on A; B and C are still running." while some of the arm's tasks are not read."""
    read = fully_read(readings)
    left = [task for task in ARM["tasks"] if task not in read]
    if not left:
        return ""
    done = [task for task in ARM["tasks"] if task in read]
    return (f" Read so far on {listed(done)}; {listed(left)} {'is' if len(left) == 1 else 'are'} still running, "
            "so what follows is the arm's first part, not its verdict.")


def _advice_for(method: str, kinds: dict[str, list[str]]) -> str:
    """What a QLoRA user should do about ``method``, by the rule its readings against QLoRA meet."""
    name, read = NAMES.get(method, method), sum(map(len, kinds.values()))
    if kinds["worse"]:
        return f"{name} was worse than QLoRA on {', '.join(kinds['worse'])}: keep QLoRA there"
    if kinds["better"] and len(kinds["better"]) == read:
        return f"{name} beat QLoRA on every task measured ({', '.join(kinds['better'])}): switch to it"
    if kinds["better"]:
        return (f"{name} beat QLoRA on {', '.join(kinds['better'])} and was worse on none: worth trying, at its own "
                "tuned learning rate")
    if len(kinds["equivalent"]) == read:
        return f"{name} was equivalent to QLoRA within the margin on every task: switching neither helps nor hurts"
    return (f"{name} was not shown better or worse than QLoRA ({len(kinds['inconclusive'])} of {read} tasks "
            "inconclusive): its lower start error is not shown to matter after tuning")


def _ratios(results: dict) -> str:
    ratios = {}
    for task in results["summary"]["tasks"].values():
        for method, entry in task["methods"].items():
            if entry.get("error_ratio", {}).get("mean") is not None:
                ratios.setdefault(method, []).append(entry["error_ratio"]["mean"])
    return ", ".join(f"{NAMES.get(m, m)} {min(v):.3f}" + (f"–{max(v):.3f}" if f"{max(v):.3f}" != f"{min(v):.3f}" else "")
                     for m, v in ratios.items())


def advice(results: dict | None, quant: dict) -> str:
    """The advice for QLoRA users on the 4-bit page (``results``: the arm's results.json or None; ``quant``:
    results/quant_error.json), following from the arm's readings against QLoRA."""
    removed = removed_share(quant)
    if results is None:
        return (f"**For QLoRA users.** No advice from fine-tuning yet. {_arm_line()} (MiniLM); it has not been "
                f"run. What is measured is the start: 4-bit IniLoRA and PiSSA remove {removed} "
                "of the 4-bit error (above), and a lower start error is not a better fine-tuned model until the arm "
                "shows it. To measure it on your own data: `inilora bench --preset tuned-4bit --model M --train-file "
                "F`.")
    holds = claim_check(f"{OUT}/results.json", "advice", __file__)
    readings = counted_readings(results, FINAL_SEEDS)
    versus = {c.split(" vs ")[0]: kinds for c, kinds in readings.items() if c.endswith(f" vs {QLORA}")}
    if not versus:
        return (f"**For QLoRA users.** The 4-bit arm is under way (`{COMMAND}`): no comparison with QLoRA has all "
                "its final seeds yet, so there is no advice from fine-tuning yet.")
    holds(all(sum(map(len, kinds.values())) >= 1 for kinds in versus.values()), "each comparison read on a task")
    return (f"**For QLoRA users** (the 4-bit arm at tuned learning rates, [`{OUT}`]({OUT}/results.md)"
            + (f"; so far only {listed([task for task in ARM['tasks'] if task in fully_read(readings)])}, the rest "
               "still running" if _pending(readings) else "") + "): "
            + "; ".join(_advice_for(method, kinds) for method, kinds in versus.items())
            + f". Start error ratios (QLoRA = 1): {_ratios(results)}; whether they predict the result: "
            f"[the scatter]({OUT}/error_ratio_vs_test.png).")

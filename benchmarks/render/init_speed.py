"""results/init_speed.md, from results/init_speed.json (benchmarks/init_speed.py): inilora's initialization time
beside PEFT's own path, with each side's error, one row per shape, rank and cell."""

from __future__ import annotations

import statistics


def _loads(rows: list, cpus: int) -> str:
    """What the rows that record it say about the machine's load while they ran."""
    loads = [load for row in rows for load in row.get("loadavg_1min", ())]
    if not loads:
        return ""
    recorded = sum(1 for row in rows if "loadavg_1min" in row)
    return (f" {recorded} rows record the 1-minute load average before and after them: {min(loads):.1f}–{max(loads):.1f} "
            f"on {cpus} cores (above 1: other work ran beside the measured thread).")


def results_markdown(data: dict) -> str:
    m = data["machine"]
    gits = [row.get("git", data["git"]) for row in data["rows"]]  # rows of a run before rows recorded their own
    commits = sorted({git["commit"][:7] + (" (dirty)" if git["dirty"] else "") for git in gits})
    runs = sorted({(len(row["inilora_seconds"]), len(row["peft_seconds"])) for row in data["rows"]})
    warmed = sum(1 for row in data["rows"] if row.get("warmup"))
    lines = [f"# Initialization time: inilora / PEFT ({m.get('gpu') or m['cpu']}, {data['threads']} thread(s))", "",
             f"Rows measured at commit(s) {', '.join(commits)}; torch {data['versions']['torch']}, peft "
             f"{data['versions']['peft']}. Each row is the median of its interleaved runs (inilora, PEFT: "
             f"{', '.join(f'{a}/{b}' for a, b in runs)} runs; the JSON lists every run). Excess = error / Eckart–Young "
             "optimum − 1, worst target. `lora`'s target: 1.1× PEFT + 50 ms, as a ratio."
             + (f" {warmed} of {len(data['rows'])} rows first ran each side once, untimed (warm-up)." if warmed else "")
             + _loads(data["rows"], m["cpus"]),
             "Target weights have a decaying spectrum (benchmarks/init_speed.py); one matrix stands for each 7B shape; "
             "\"(once)\": PEFT's full SVD, the same work at every r, measured at the first rank and reused.", "",
             "| shape | r | cell | inilora s | PEFT s | ratio | inilora excess | PEFT excess |",
             "|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        excess = [("—" if row[k] is None else f"{row[k]:.1e}") for k in ("inilora_excess", "peft_excess")]
        bound = f" (target ≤ {row['lora_bound']:.2f})" if "lora_bound" in row else ""
        lines.append(f"| {row['model']} | {row['r']} | {row['cell']} | {statistics.median(row['inilora_seconds']):.3f} "
                     f"| {statistics.median(row['peft_seconds']):.3f}{' (once)' if row['peft_measured_once'] else ''} "
                     f"| {row['ratio']:.2f}{bound} | {excess[0]} | {excess[1]} |")
    return "\n".join(lines) + "\n"

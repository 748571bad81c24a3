"""results/tuned/task_screening.md, from the screening's record (results/tuned/task_screening.json, written by
benchmarks/screen_tasks.py)."""

from __future__ import annotations

from screen_tasks import NEAR


def results_markdown(report: dict) -> str:
    lines = ["# Task screening: plain LoRA on MiniLM vs the majority class (validation split)", "",
             "Commands (in the order they ran; each run's own settings are in the JSON):", "",
             *[f"    {c}" for c in report.get("commands", [report["command"]])], "", f"Commit {report['provenance']['commit'][:12]}"
             f"{' (dirty)' if report['provenance']['dirty'] else ''}; packages "
             + ", ".join(f"{k} {v}" for k, v in report["provenance"]["packages"].items()) + ".  ",
             f"Setup: {report['setup']}", "",
             "| task | train part | test part | classes | val majority | best val acc | best lr | lrs tried | CPU s | verdict | why |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in report["tasks"].values():
        lrs = ", ".join(f"{float(lr):g}: {r['val_accuracy']:.3f}" for lr, r in entry["runs"].items())
        lines.append(f"| {entry['task']} | {entry['n_train_part']} | {entry['n_test_part']} | {len(entry['classes'])} "
                     f"| {entry['majority_val']:.3f} | {entry.get('best_val_accuracy', float('nan')):.3f} "
                     f"| {entry.get('best_lr', float('nan')):g} | {lrs} | {entry.get('cpu_seconds', 0):.0f} "
                     f"| {entry.get('status', 'not run')} | {entry.get('why', 'not run')} |")
    for entry in report["tasks"].values():
        for old in entry.get("superseded", []):
            lrs = ", ".join(f"{float(lr):g}: {r['val_accuracy']:.3f}" for lr, r in old["runs"].items())
            lines += ["", f"Set aside: {entry['task']}'s runs on an earlier split (data {old['data']}; now "
                          f"{entry['data']}), not counted: {lrs}."]
    audited = [e for e in report["tasks"].values() if "neighbours" in e]
    if audited:
        lines += ["", f"Near-duplicates (`--neighbours`; no training): for each validation example, the training example "
                      f"sharing the most words (Jaccard); near = at least {NEAR:g}. A neighbour accuracy at or below the "
                      f"majority class means the near-duplicates carry no label a model could remember.", "",
                  "| task | validation | training | near-duplicate share | neighbour's label right | majority |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {e['task']} | {a['n_held']} | {a['n_train']} | {a['near_share']:.3f} | "
                  f"{a['neighbour_accuracy']:.3f} | {a['majority']:.3f} |" for e in audited for a in [e["neighbours"]]]
    lines += ["", f"Total CPU time of the training runs: {report['cpu_seconds_total']:.0f} s "
              f"({report['cpu_seconds_total'] / 3600:.2f} CPU hours)."]
    return "\n".join(lines) + "\n"

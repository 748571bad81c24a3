"""4-bit fine-tuning on CPU (issue 10, item 6): QLoRA vs 4-bit IniLoRA vs 4-bit PiSSA, and the same methods in
full precision, at the quick preset's budget (MiniLM x 512 reviews, 2 epochs). The runs are made by the
benchmark command (resumable); this script collects them into results/quant_finetune.{json,md}.

    nice -n 10 inilora bench --preset quick --methods lora,inilora,pissa --quantize nf4 --jobs 2 --threads 1 \\
        --out runs/quant_finetune/nf4 --no-plots
    nice -n 10 inilora bench --preset quick --methods lora,inilora,pissa --jobs 2 --threads 1 \\
        --out runs/quant_finetune/fp32 --no-plots
    python benchmarks/quant_finetune.py
"""

from __future__ import annotations

import json
import statistics
import sys
from importlib.metadata import version
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "quant_finetune"
OUT = ROOT / "results" / "quant_finetune"
METHODS = ("lora", "inilora", "pissa")
LABELS = {("lora", "nf4"): "QLoRA (lora, nf4)", ("inilora", "nf4"): "4-bit IniLoRA (inilora svd, nf4)",
          ("pissa", "nf4"): "4-bit PiSSA (pissa, nf4)", ("lora", None): "LoRA (fp32)",
          ("inilora", None): "IniLoRA (inilora svd, fp32)", ("pissa", None): "PiSSA (fp32)"}


def collect() -> list[dict]:
    runs = []
    for path in sorted(RUNS.glob("*/runs/reviews/*/seed*.json")):
        record = json.loads(path.read_text())
        runs.append({"method": record["method"], "quantize": record["config"].get("quantize"), "seed": record["seed"],
                     "accuracy": record["metrics"]["accuracy"], "eval_loss": record["metrics"]["eval_loss"],
                     "seconds": record["seconds"], "train_seconds": round(record["train_seconds"], 1),
                     "init_seconds": record["init"]["seconds"], "max_drift": record["init"]["max_drift"],
                     "started": record["started"], "threads": record["threads"], "config": record["config"],
                     "n_train": record["n_train"], "n_eval": record["n_eval"], "versions": record["provenance"]["versions"] if "provenance" in record else record["versions"]})
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for quantize in ("nf4", None):
        for method in METHODS:
            group = sorted((r for r in runs if r["method"] == method and r["quantize"] == quantize),
                           key=lambda r: r["seed"])
            if not group:
                continue
            acc, loss = [r["accuracy"] for r in group], [r["eval_loss"] for r in group]
            rows.append({"label": LABELS[method, quantize], "method": method, "quantize": quantize,
                         "seeds": [r["seed"] for r in group], "accuracy": acc, "eval_loss": loss,
                         "accuracy_mean": statistics.mean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                         "eval_loss_mean": statistics.mean(loss),
                         "eval_loss_std": statistics.stdev(loss) if len(loss) > 1 else 0.0,
                         "seconds_mean": statistics.mean(r["seconds"] for r in group)})
    return rows


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from inilora.experiments.provenance import git_state, versions

    runs = collect()
    if not runs:
        print(f"no runs under {RUNS}; run the bench commands in this script's docstring first", file=sys.stderr)
        return 1
    invocations = [i["command"] for sub in sorted(RUNS.iterdir()) if (sub / "invocations.json").is_file()
                   for i in json.loads((sub / "invocations.json").read_text())]
    meta = {"commit": git_state(str(ROOT))["commit"], "commands": invocations,
            "versions": {**versions(), "bitsandbytes": version("bitsandbytes")}}
    rows = summarize(runs)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=1))
    print(f"wrote {OUT.with_suffix('.json')}; python benchmarks/render rewrites its Markdown and the blocks that "
          "show it")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The tuned benchmark end to end on a tiny model: the schedule runs the grid, grows it past an edge,
adds the final seeds at the rate chosen on validation, resumes, and writes summary.json in its fixed shape."""

import json

import pytest

import tiny
from inilora.experiments import bench
from inilora.experiments.bench import tuned
from inilora.experiments.bench.schedule import Protocol

SHAPE_METHOD = {"lr_grid", "chosen_lr", "val_by_lr", "test", "steps_to_lora_final", "val_loss_auc"}
SHAPE_TEST = {"mean", "std", "seeds", "values", "p_vs_lora", "p_holm", "win_rate_vs_lora"}


def test_tuned_benchmark_runs_its_schedule_and_writes_the_summary(tmp_path):
    bert = tiny.bert_folder(tmp_path / "bert")
    data = tiny.write_jsonl(tmp_path / "toy.jsonl", tiny.sentiment_rows(80))
    test = tiny.write_jsonl(tmp_path / "toy_test.jsonl", tiny.sentiment_rows(30, seed=1))
    suite = bench.Suite("toy", str(bert), train_file=str(data), eval_file=str(test), validation=True,
                        config={"epochs": 1.0, "batch_size": 8, "max_len": 32, "logging_steps": 2})
    adapter = Protocol((1e-4, 1e-3), tune_seeds=(0,), final_seeds=(0, 1), max_extensions=1)
    out = tmp_path / "out"
    methods = ("lora", "inilora:svd")
    result = tuned.run([suite], methods, out, adapter, adapter, jobs=1, command="test", progress=False,
                       log=lambda line: None)
    assert not result["failures"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"command", "cpu_hours", "tasks"} and summary["cpu_hours"] > 0
    task = summary["tasks"]["toy"]
    assert task["metric"] == "accuracy" and 0.3 <= task["majority"] <= 0.7
    for method in methods:
        entry = task["methods"][method]
        assert set(entry) == SHAPE_METHOD and set(entry["test"]) == SHAPE_TEST
        grid, chosen = entry["lr_grid"], entry["chosen_lr"]
        assert chosen in grid and sorted(grid) == grid
        runs = sorted(out.glob(f"runs/toy/{method.removesuffix(':svd')}/lr*/seed*.json"))
        # the grid at seed 0, a third rate if the best sat at an edge, then seed 1 at the chosen rate
        assert len(runs) == len(grid) + 1 and len(grid) in (2, 3)
        if len(grid) == 3:
            assert chosen != 1e-4 or grid[0] < 1e-4 and chosen in (grid[0], grid[1])
        assert entry["test"]["seeds"] == [0, 1] and len(entry["test"]["values"]) == 2
        record = json.loads(runs[0].read_text())
        assert len(record["val_curve"]) == 8 and len(record["predictions"]) == 30
        assert record["provenance"]["versions"]["torch"] and "commit" in record["provenance"]
    assert task["methods"]["lora"]["test"]["p_vs_lora"] is None
    assert task["methods"]["inilora:svd"]["test"]["win_rate_vs_lora"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert (out / "tuning_curves.png").stat().st_size > 1000 and "inilora:svd" in (out / "results.md").read_text()
    # resuming runs nothing more; a changed budget redoes the runs
    again = tuned.run([suite], methods, out, adapter, adapter, jobs=1, progress=False, log=lambda line: None)
    assert json.loads((out / "summary.json").read_text())["tasks"] == summary["tasks"] and not again["failures"]
    ledger = tuned.Ledger(out, [bench.with_overrides(suite, max_len=24)], methods, {"toy": suite.data_digest()})
    assert all(not scores for scores in ledger.scores.values())


def test_the_tuned_preset_follows_the_protocol_of_the_issue():
    suites, methods = bench.preset("tuned")
    adapter, full = tuned.protocols("tuned")
    for protocol in (adapter, full):
        assert len(protocol.lr_grid) >= 4 and protocol.lr_grid[-1] / protocol.lr_grid[0] >= 30 - 1e-9
        assert len(protocol.tune_seeds) >= 2 and len(protocol.final_seeds) >= 5
    assert all(suite.validation for suite in suites)
    assert sum(m.startswith("peft:") for m in methods) >= 3 and methods[0] == "lora"


def test_the_first_methods_run_on_every_task_before_the_rest(tmp_path):
    suites = [bench.Suite(name, "minilm", task="reviews", validation=True) for name in ("a", "b")]
    methods = ("lora", "milora", "inilora:svd")
    adapter = Protocol((1e-4, 1e-3), tune_seeds=(0,), final_seeds=(0, 1))
    ledger = tuned.Ledger(tmp_path, suites, methods, {"a": "x", "b": "y"})
    todo, total = tuned.pending(ledger, suites, methods, adapter, adapter, set(), first=("lora", "inilora:svd"))
    order = [(spec.suite.name, spec.method) for spec in todo]
    assert order == [("a", "lora")] * 2 + [("a", "inilora:svd")] * 2 + [("b", "lora")] * 2 + \
        [("b", "inilora:svd")] * 2 + [("a", "milora")] * 2 + [("b", "milora")] * 2
    assert total == 6 * 3  # each (task, method): 2 grid runs + 1 more final seed
    plain, _ = tuned.pending(ledger, suites, methods, adapter, adapter, set())
    assert [(s.suite.name, s.method) for s in plain][:6] == [("a", "lora")] * 2 + [("a", "milora")] * 2 + \
        [("a", "inilora:svd")] * 2
    first = tuned.first_methods("tuned")
    _, preset_methods = bench.preset("tuned")
    assert set(first) <= set(preset_methods) and {"lora", "inilora:svd", "pissa", "inilora-alpha",
                                                  "inilora-beta"} <= set(first)
    assert sum(m.startswith("peft:") for m in first) >= 3

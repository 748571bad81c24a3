"""The tuned benchmark end to end on a tiny model: the schedule runs the grid, grows it past an edge,
adds the final seeds at the rate chosen on validation, resumes, and writes summary.json in its fixed shape."""

import json
import os

import pytest

import tiny
from inilora.experiments import bench
from inilora.experiments.bench import tuned, tuned_preset
from inilora.experiments.bench.schedule import Protocol

SHAPE_METHOD = {"lr_grid", "chosen_lr", "val_by_lr", "test", "steps_to_lora_final", "val_loss_auc"}
SHAPE_TEST = {"mean", "std", "seeds", "values", "p_vs_lora", "p_adjusted_all_methods", "win_rate_vs_lora"}
SHAPE_DECLARED = {"comparison", "delta", "ci95", "ci95_two_level", "margin", "p", "p_holm", "reading"}


def test_tuned_benchmark_runs_its_schedule_and_writes_the_summary(tmp_path):
    bert = tiny.bert_folder(tmp_path / "bert")
    data = tiny.write_jsonl(tmp_path / "toy.jsonl", tiny.sentiment_rows(80))
    tiny_test = tiny.sentiment_rows(30, seed=1)
    test = tiny.write_jsonl(tmp_path / "toy_test.jsonl", tiny_test)
    suite = bench.Suite("toy", str(bert), train_file=str(data), eval_file=str(test), validation=True,
                        config={"epochs": 1.0, "batch_size": 8, "max_len": 32, "logging_steps": 2})
    adapter = Protocol((1e-4, 1e-3), tune_seeds=(0,), final_seeds=(0, 1), max_extensions=1)
    out = tmp_path / "out"
    methods = ("lora", "inilora:svd")
    digests = {"toy": suite.data_digest()}
    # before any run: per method 2 rates at seed 0 + seed 1 at the chosen rate; no cost known yet
    assert tuned.cpu_hours_left(tuned.Ledger(out, [suite], methods, digests), [suite], methods, adapter,
                                adapter) == (6, None)
    out.mkdir()
    (out / tuned.STOP_FILE).touch()  # a stop request left from an earlier sitting is ignored ...
    lines, midway = [], []

    def stop_after_the_first_run(line):  # ... one made while it runs ends it after the runs in flight
        lines.append(line)
        if line.startswith("toy lora"):
            (out / tuned.STOP_FILE).touch()
            midway.extend(json.loads((out / tuned.SITTINGS).read_text()))

    tuned.run([suite], methods, out, adapter, adapter, jobs=1, command="test", progress=False,
              log=stop_after_the_first_run)
    assert "about 6 runs on 1 task(s), 0 already done, 6 to go;" in lines[0] and lines[-1].startswith("stopped on request")
    assert len(list(out.glob("runs/toy/*/lr*/seed*.json"))) == 1 and not (out / tuned.STOP_FILE).exists()
    # each sitting is recorded beside the runs (a commit of runs/ alone keeps it), a legacy record carried over
    (sitting,) = json.loads((out / tuned.SITTINGS).read_text())
    assert sitting["command"] and sitting["runs_done"] == 1 and sitting["jobs"] == 1 and sitting["ended"]
    # ... and updated after every run, so a runner killed midway leaves its record too
    assert [(s["started"], s["runs_done"], s["ended"]) for s in midway] == [(sitting["started"], 1, False)]
    (out / tuned.LEGACY_SITTINGS).write_text((out / tuned.SITTINGS).read_text())
    (out / tuned.SITTINGS).unlink()
    result = tuned.run([suite], methods, out, adapter, adapter, jobs=1, command="test", progress=False,
                       log=lines.append)  # the next call runs the rest
    assert not result["failures"]
    run_files = len(list(out.glob("runs/toy/*/lr*/seed*.json")))
    assert [s["runs_done"] for s in json.loads((out / tuned.SITTINGS).read_text())] == [1, run_files - 1]
    assert not (out / tuned.LEGACY_SITTINGS).exists()
    done = tuned.Ledger(out, [suite], methods, digests)
    assert tuned.cpu_hours_left(done, [suite], methods, adapter, adapter) == (0, 0.0)
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
        assert record["provenance"]["machine"]["cpus"] == os.cpu_count()
    assert task["methods"]["lora"]["test"]["p_vs_lora"] is None
    (declared,) = task["declared"]
    assert SHAPE_DECLARED <= set(declared) and declared["comparison"] == "inilora:svd vs lora"
    assert declared["margin"] == 0.01 and declared["reading"] in ("better", "worse", "equivalent", "inconclusive")
    # today's factors for a run's spec, made without training, are the ones its run recorded (what a resume checks)
    from inilora.experiments.bench.execute import init_digest

    for method in methods:
        record = json.loads(sorted(out.glob(f"runs/toy/{method.removesuffix(':svd')}/lr*/seed1.json"))[0].read_text())
        spec = bench.RunSpec(suite, method, 1, lr=record["lr"])
        assert init_digest(spec) == record["init"]["digest"] != init_digest(bench.RunSpec(suite, method, 0))
    assert task["methods"]["inilora:svd"]["test"]["win_rate_vs_lora"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert (out / "tuning_curves.png").stat().st_size > 1000 and "inilora:svd" in (out / "results.md").read_text()
    # resuming runs nothing more; a changed budget redoes the runs
    again = tuned.run([suite], methods, out, adapter, adapter, jobs=1, progress=False, log=lambda line: None)
    assert json.loads((out / "summary.json").read_text())["tasks"] == summary["tasks"] and not again["failures"]
    ledger = tuned.Ledger(out, [bench.with_overrides(suite, max_len=24)], methods, {"toy": suite.data_digest()})
    assert all(not scores for scores in ledger.scores.values())
    # a run whose validation curve has fewer points than the protocol asks (8 here) is redone
    sparse = sorted(out.glob("runs/toy/lora/lr*/seed*.json"))[-1]
    original = sparse.read_text()
    sparse.write_text(json.dumps({**json.loads(original), "val_curve": json.loads(original)["val_curve"][1::2]}))
    assert sum(map(len, tuned.Ledger(out, [suite], methods, digests).records.values())) == run_files - 1
    sparse.write_text(original)
    assert sum(map(len, tuned.Ledger(out, [suite], methods, digests).records.values())) == run_files
    # data that can no longer be loaded (an archive gone from its index): the runs still count under the digest
    # they recorded, and no run is added; runs that disagree on the digest count for nothing
    (declared_before,) = json.loads((out / "results.json").read_text())["declared"]["toy"]
    data.rename(tmp_path / "gone.jsonl")
    lines.clear()
    gone = tuned.run([suite], methods, out, adapter, adapter, jobs=1, progress=False, log=lines.append)
    assert lines[0].startswith("toy: data unavailable here") and "does not exist" in lines[0]
    # its runs still count, but not in the progress count of this sitting, which adds none to it
    assert "about 0 runs on 0 task(s), 0 already done, 0 to go" in lines[1] and gone["tasks"] == summary["tasks"] and not gone["failures"]
    # the two-level interval needs the test answers: saved beside the runs by every report that loaded the data
    (row,) = gone["declared"]["toy"]
    assert row == declared_before and row["ci95_two_level"] is not None and "two_level_carried" not in row
    key = json.loads((out / "answers" / "toy.json").read_text())
    assert key["data"] == digests["toy"]
    assert [r["label"] for r in key["test"]] == [["neg", "pos"].index(r["label"]) for r in tiny_test]
    # without them (or with answers to other data), they are carried from the last report where nothing changed
    key["data"] = "0" * 16
    (out / "answers" / "toy.json").write_text(json.dumps(key))
    (row,) = tuned.report([suite], methods, out, adapter, adapter, make_plots=False, log=lines.append)["declared"]["toy"]
    assert row["two_level_carried"] and row["ci95_two_level"] == declared_before["ci95_two_level"]
    assert len(list(out.glob("runs/toy/*/lr*/seed*.json"))) == run_files
    first = sorted(out.glob("runs/toy/lora/lr*/seed*.json"))[0]
    record = json.loads(first.read_text())
    record["spec"]["data"] = "0" * 16
    first.write_text(json.dumps(record))
    assert tuned.report([suite], methods, out, adapter, adapter, make_plots=False,
                        log=lines.append)["tasks"] == {}
    assert lines[-1].endswith("none of its runs counts (2 digests recorded); no run is added")


def test_the_tuned_preset_follows_the_protocol_of_the_issue():
    suites, methods = bench.preset("tuned")
    adapter, full = tuned_preset.protocols("tuned")
    for protocol in (adapter, full):
        assert len(protocol.lr_grid) >= 4 and protocol.lr_grid[-1] / protocol.lr_grid[0] >= 30 - 1e-9
        assert len(protocol.tune_seeds) >= 2 and len(protocol.final_seeds) >= 5 and protocol.refine
    assert all(suite.validation for suite in suites)
    assert sum(m.startswith("peft:") for m in methods) >= 3 and methods[0] == "lora"
    assert {s.name: s.metric for s in suites if s.metric} == {"gsm_symbolic": "eval_loss"}
    with pytest.raises(ValueError, match="metric must be 'eval_loss'"):
        bench.Suite("x", "minilm", task="reviews", metric="f1")


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
    first = tuned_preset.first_methods("tuned")
    _, preset_methods = bench.preset("tuned")
    assert list(first) == list(preset_methods)  # every declared method, inilora:adam included, in its order


def _complete_results() -> dict:
    """A results.json content meeting issue 13's must-show: 4 MiniLM tasks and both SmolLM2 tasks, every
    adapter method on a 4-rate grid over 30x at 2 seeds, 5 final seeds, a Holm p, 3 PEFT peers."""
    grid, chosen = [2e-4, 6e-4, 2e-3, 6e-3], 6e-4
    methods = ["lora", "inilora:svd", "peft:olora", "peft:gaussian", "peft:lora_ga"]
    tasks, runs, curve = {}, [], {"val_curve": [[step, 1.0, None] for step in range(1, 9)], "metrics": {"steps": 12}}
    for name, model in [("reviews", "minilm"), ("a", "minilm"), ("b", "minilm"), ("c", "minilm"),
                        ("chain_sum", "smollm2"), ("gsm_symbolic", "smollm2")]:
        entries = {}
        for method in methods:
            runs += [{"task": name, "method": method, "lr": lr, "seed": s, **curve} for lr in grid for s in (0, 1)]
            runs += [{"task": name, "method": method, "lr": chosen, "seed": s, **curve} for s in (2, 3, 4)]
            p = None if method == "lora" else 0.5
            entries[method] = {"lr_grid": grid, "chosen_lr": chosen, "val_by_lr": {},
                               "test": {"seeds": [0, 1, 2, 3, 4], "p_adjusted_all_methods": p}}
        tasks[name] = {"model": model, "methods": entries}
    return {"summary": {"command": "inilora bench --preset tuned", "cpu_hours": 1.0, "tasks": tasks}, "runs": runs}


def test_the_must_show_check_lists_exactly_what_is_missing(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from check_tuned import PLOTS, unmet

    for plot in PLOTS:
        (tmp_path / plot).write_bytes(b"png")
    results = _complete_results()
    readme = " ".join(f"**{name}**" for name in results["summary"]["tasks"])
    assert unmet(results, tmp_path, readme) == []
    results["runs"] = [r for r in results["runs"] if not (r["task"] == "a" and r["method"] == "peft:olora"
                                                          and r["lr"] == 2e-4 and r["seed"] == 1)]
    results["summary"]["tasks"]["b"]["methods"]["inilora:svd"]["test"]["seeds"] = [0, 1, 2, 3]
    del results["summary"]["tasks"]["gsm_symbolic"]
    results["summary"]["tasks"]["c"]["methods"]["lora"]["lr_grid"] = [2e-4, 6e-4, 2e-3, 5.9e-3]
    (tmp_path / PLOTS[0]).unlink()
    results["runs"][0]["val_curve"] = results["runs"][0]["val_curve"][1::2]  # 4 evaluations in 12 steps
    assert unmet(results, tmp_path, readme) == [
        "reviews: 1 run(s) log the validation loss < 8 times",
        "task gsm_symbolic has no runs yet",
        "a / peft:olora: 1 rate(s) with < 2 tuning seeds (0.0002)", "a: 2 complete PEFT peer(s), needs >= 3",
        "b / inilora:svd: 4 of 5 final seeds",
        "c / lora: grid [0.0002, 0.0006, 0.002, 0.0059]: needs >= 4 rates over >= 30x",
        "c / lora: 1 rate(s) with < 2 tuning seeds (0.0059)",
        f"plot {PLOTS[0]} missing"]


def test_a_generation_suite_compared_on_its_loss_end_to_end(tmp_path):
    """metric = "eval_loss" on a tiny causal LM: the rate is the one with the lowest validation loss and the
    test values are the final runs' held-out losses."""
    llama = tiny.llama_folder(tmp_path / "llama")
    data = tiny.write_jsonl(tmp_path / "qa.jsonl", tiny.answer_rows(32))
    test = tiny.write_jsonl(tmp_path / "qa_test.jsonl", tiny.answer_rows(8, seed=1))
    suite = bench.Suite("qa", str(llama), train_file=str(data), eval_file=str(test), validation=True,
                        metric="eval_loss", config={"epochs": 1.0, "batch_size": 8, "max_len": 32,
                                                    "max_new_tokens": 3, "logging_steps": 1})
    adapter = Protocol((1e-4, 3e-2), tune_seeds=(0,), final_seeds=(0,), max_extensions=0)
    out = tmp_path / "out"
    result = tuned.run([suite], ("lora",), out, adapter, adapter, jobs=1, command="test", progress=False,
                       log=lambda line: None)
    assert not result["failures"]
    results = json.loads((out / "results.json").read_text())
    task = results["summary"]["tasks"]["qa"]
    assert task["metric"] == "eval_loss" and task["majority"] is None
    entry, runs = task["methods"]["lora"], results["runs"]
    val_loss = {r["lr"]: r["val"]["loss"] for r in runs}
    assert len(runs) == 2 and val_loss[1e-4] != val_loss[3e-2]
    assert all(r["val"]["metric"] is None for r in runs)  # chosen by the loss: the validation is not decoded
    assert all(r["test"]["metric"] is not None for r in runs)  # the test split still is (exact match kept)
    assert entry["chosen_lr"] == min(val_loss, key=val_loss.get)  # the lower loss, whatever exact match says
    assert entry["val_by_lr"] == pytest.approx({f"{lr:.3g}": loss for lr, loss in val_loss.items()})
    chosen = next(r for r in runs if r["lr"] == entry["chosen_lr"])
    assert entry["test"]["values"] == pytest.approx([chosen["test"]["loss"]])



def test_every_method_and_solver_has_an_init_version_and_older_records_read_as_the_first():
    from inilora.experiments.bench.plan import FIRST_INIT_VERSION, init_version
    from inilora.methods import REGISTRY

    _, methods = bench.preset("tuned")
    rows = {*methods, *(f"{name}:{solver}" for name, m in REGISTRY.items() for solver in m.solvers)}
    versions = {row: init_version(row) for row in rows}
    assert all(isinstance(versions[row], int) for row in rows if not row.startswith("peft:")), versions
    assert versions["inilora:adam"] is not None and versions["peft:olora"] is None
    suite = bench.Suite("toy", "minilm", task="reviews", validation=True)
    for method in ("lora", "inilora:adam", "inilora:svd"):
        spec = bench.RunSpec(suite, method, 0, lr=1e-3)
        recorded = {k: v for k, v in spec.key().items() if k != "init_version"}
        # a spec recorded before every method had a version counts while the method is at its first one
        assert spec.matches(recorded) == (init_version(method) == FIRST_INIT_VERSION)
        assert spec.matches(spec.key()) and not spec.matches({**spec.key(), "init_version": init_version(method) + 1})


def _record(ledger, suite, method, lr, seed, digest) -> dict:
    from inilora.experiments.train.trainer import VAL_EVALUATIONS, evaluation_steps

    return {"task": suite.name, "method": method, "lr": lr, "seed": seed,
            "spec": ledger.spec(suite, method, lr, seed).key(),
            "val": {"metric": 0.5, "loss": 1.0}, "metrics": {"steps": 16}, "init": {"digest": digest},
            "val_curve": [[step, 1.0, 0.5] for step in evaluation_steps(16, VAL_EVALUATIONS)]}


def test_runs_made_from_other_initial_factors_than_todays_are_redone(tmp_path):
    suite = bench.Suite("toy", "minilm", task="reviews", validation=True)
    adapter = Protocol((1e-4, 1e-3), tune_seeds=(0,), final_seeds=(0, 1), max_extensions=0)
    empty = tuned.Ledger(tmp_path, [suite], ("lora",), {"toy": "x"})
    # seed 0's two grid runs recorded different factors (made on different machines, say): today's decide
    for lr, digest in ((1e-4, "old"), (1e-3, "new")):
        path = empty.spec(suite, "lora", lr, 0).path(tmp_path)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_record(empty, suite, "lora", lr, 0, digest)))
    asked = []

    def today(spec):
        asked.append((spec.method, spec.seed))
        return "new"

    ledger = tuned.Ledger(tmp_path, [suite], ("lora",), {"toy": "x"}, init_digest=today)
    assert asked == [("lora", 0)] and list(ledger.scores["toy", "lora"]) == [(1e-3, 0)]
    assert [r["lr"] for r in ledger.dropped] == [1e-4]
    todo, _ = tuned.pending(ledger, [suite], ("lora",), adapter, adapter, set())
    assert [(spec.lr, spec.seed) for spec in todo] == [(1e-4, 0)]  # redone
    # once redone, the runs agree and need no check; a run made now sets today's factors for its seed
    redone = empty.spec(suite, "lora", 1e-4, 0).path(tmp_path)
    redone.write_text(json.dumps(_record(empty, suite, "lora", 1e-4, 0, "new")))
    agreed = tuned.Ledger(tmp_path, [suite], ("lora",), {"toy": "x"}, init_digest=lambda spec: pytest.fail())
    assert len(agreed.scores["toy", "lora"]) == 2 and not agreed.dropped
    agreed.add(suite, _record(agreed, suite, "lora", 1e-3, 1, "newer"), made_now=True)  # seed 1: its own factors
    assert len(agreed.scores["toy", "lora"]) == 3 and not agreed.dropped
    agreed.add(suite, _record(agreed, suite, "lora", 1e-2, 0, "newer"), made_now=True)  # a grown grid's rate
    assert sorted(agreed.scores["toy", "lora"]) == [(1e-3, 1), (1e-2, 0)]
    assert sorted(r["lr"] for r in agreed.dropped) == [1e-4, 1e-3]
    agreed.add(suite, _record(agreed, suite, "lora", 1e-3, 0, "new"))  # a stale one read later does not count
    assert len(agreed.scores["toy", "lora"]) == 2


def test_the_tuned_protocol_on_your_own_data_from_the_command_line(tmp_path, capsys):
    """`inilora bench --preset tuned --train-file ... --eval-file ...` runs the preset's protocol on the user's file:
    validation carved from it, the grid, the half-steps, the final seeds, a filled summary, a command that
    reproduces it, and a resume that redoes nothing."""
    import shlex

    from inilora import cli

    bert = tiny.bert_folder(tmp_path / "bert")
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(60))
    test = tiny.write_jsonl(tmp_path / "test.jsonl", tiny.sentiment_rows(20, seed=1))
    out = tmp_path / "out"
    argv = ["bench", "--preset", "tuned", "--model", str(bert), "--train-file", str(train), "--eval-file", str(test),
            "--methods", "lora,inilora:svd", "--max-steps", "4", "--batch-size", "8", "--max-len", "32",
            "--tuning", "lr_grid=[1e-3, 1e-2]", "--tuning", "tune_seeds=[0]", "--tuning", "final_seeds=[0, 1]",
            "--tuning", "max_extensions=0", "--out", str(out)]
    assert cli.main([*argv, "--jobs", "2", "--no-plots"]) == 0
    runs = [json.loads(path.read_text()) for path in sorted(out.glob("runs/train/*/lr*/seed*.json"))]
    # per method: the 2 rates, the 2 half-steps around the better one (seed 0), then seed 1 at the chosen rate
    assert len(runs) == 2 * 5 and {r["method"] for r in runs} == {"lora", "inilora:svd"}
    assert all(r["val"] is not None and r["val"]["n"] == 12 and r["val_curve"] for r in runs)  # 20 % of 60 carved
    assert all(r["n_train"] == 48 and r["spec"]["validation"] is True for r in runs)  # trained on the rest only
    summary = json.loads((out / "summary.json").read_text())
    task = summary["tasks"]["train"]
    for method in ("lora", "inilora:svd"):
        entry = task["methods"][method]
        assert len(entry["lr_grid"]) == 4 and {1e-3, 1e-2} < set(entry["lr_grid"])
        assert entry["chosen_lr"] in entry["lr_grid"] and entry["test"]["seeds"] == [0, 1]
        best = max(entry["val_by_lr"], key=entry["val_by_lr"].get)  # chosen on validation (ties: lower loss)
        assert entry["val_by_lr"][f"{entry['chosen_lr']:.3g}"] == entry["val_by_lr"][best]
    assert task["converged"] in (True, False) and task["val_loss_fall_last_quarter"] is not None
    (row,) = json.loads((out / "results.json").read_text())["declared"]["train"]
    assert row["comparison"] == "inilora:svd vs lora" and row["n"] == 2
    (declared,) = task["declared"]  # summary.json: the declared comparison in its published shape
    assert SHAPE_DECLARED <= set(declared) and declared["comparison"] == "inilora:svd vs lora"
    # the recorded command names the data and the protocol's settings; run again, it finds everything done
    command = shlex.split(summary["command"])
    assert command[:2] == ["inilora", "bench"]
    assert {"--train-file", "--eval-file", "--model", "--tuning"} <= set(command)
    capsys.readouterr()
    assert cli.main([*command[1:], "--no-plots"]) == 0
    assert "about 10 runs on 1 task(s), 10 already done, 0 to go" in capsys.readouterr().err
    assert len(list(out.glob("runs/train/*/lr*/seed*.json"))) == 10
    assert json.loads((out / "summary.json").read_text())["tasks"] == summary["tasks"]


@pytest.mark.parametrize("extra, message", [
    (["--tuning", "lr_grid=[1e-3,"], "expected a tuning setting KEY=VALUE"),
    (["--tuning", "lr_grids=[1e-3, 1e-2]"], "unknown tuning setting(s) lr_grids; the tuned preset's [tuning] table"),
    (["--tuning", "lr_grid=[1e-2, 1e-3]"], "lr_grid must hold >= 2 ascending learning rates"),
])
def test_tuning_settings_are_checked_before_any_run(tmp_path, capsys, extra, message):
    from inilora import cli

    assert cli.main(["bench", "--preset", "tuned", "--tasks", "reviews", "--out", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err and not any(tmp_path.iterdir())
    assert cli.main(["bench", "--tasks", "reviews", "--tuning", "refine=false"]) == 2
    assert "--tuning changes the tuned preset's protocol" in capsys.readouterr().err

"""The benchmark's bookkeeping: the plan, resumability, the paired test and the table (no training)."""

import json
import math
from pathlib import Path

import pytest

from inilora.errors import InitError
from inilora.experiments import bench


def test_paired_test_verdicts():
    lora = {0: 0.80, 1: 0.82, 2: 0.78}
    better = bench.paired_test({0: 0.85, 1: 0.88, 2: 0.83}, lora)
    assert better["verdict"] == "better" and better["p"] < 0.05 and better["diff_mean"] == pytest.approx(0.0533, abs=1e-3)
    noisy = bench.paired_test({0: 0.90, 1: 0.75, 2: 0.80}, lora)
    assert noisy["verdict"] == "within seed noise" and noisy["p"] > 0.05
    # lower is better for a loss
    assert bench.paired_test({0: 0.5, 1: 0.52, 2: 0.49}, {0: 0.6, 1: 0.61, 2: 0.6},
                             higher_is_better=False)["verdict"] == "better"
    # the same difference on every seed (none, or a constant shift): the t-test is undefined, never p = 0 or 1
    for same in (dict(lora), {s: v - 0.01 for s, v in lora.items()}):
        test = bench.paired_test(same, lora)
        assert test["verdict"] == "undefined" and math.isnan(test["p"])
    assert bench.paired_test({0: 0.9}, {0: 0.8})["verdict"] == "too few seeds"
    assert bench.paired_test({3: 0.9}, lora)["n"] == 0  # only seeds both have are paired


def _run(method, seed, accuracy, loss, task="toy"):
    return {"task": task, "model": "m", "kind": "classification", "method": method, "seed": seed, "n_train": 10,
            "n_eval": 5, "config": {}, "seconds": 1.0, "metrics": {"accuracy": accuracy, "eval_loss": loss},
            "loss_history": [[1, 0.7], [2, 0.6 + 0.01 * seed]]}


def test_summary_table_and_plots(tmp_path):
    runs = [_run("lora", s, 0.80 + 0.01 * s, 0.50) for s in range(3)]
    runs += [_run("inilora-alpha", s, 0.70 + 0.01 * s, 0.60 + 0.01 * s) for s in range(3)]
    runs += [_run("inilora:adam", s, 0.81 + 0.01 * s, 0.50) for s in range(3)]
    summary = bench.summarize(runs)["toy"]
    assert list(summary["rows"]) == ["lora", "inilora:adam", "inilora-alpha"]
    alpha = summary["rows"]["inilora-alpha"]
    assert alpha["accuracy"][0] == pytest.approx(0.71) and alpha["accuracy"][1] == pytest.approx(0.01)
    assert alpha["accuracy_vs_lora"]["verdict"] == "undefined" and alpha["eval_loss_vs_lora"]["verdict"] == "worse"
    table = bench.markdown({"toy": summary})
    # a constant -0.10 on every seed: no spread, so no p (it printed "p=0.00 (worse)")
    assert "| inilora-alpha | 3 | 0.710 ± 0.010 | -0.100, p undefined (same difference on every seed) |" in table
    assert "p=0.00" not in table
    for path in (tmp_path / "runs" / "toy" / r["method"] / f"seed{r['seed']}.json" for r in runs):
        path.parent.mkdir(parents=True, exist_ok=True)
    for r in runs:
        (tmp_path / "runs" / "toy" / r["method"] / f"seed{r['seed']}.json").write_text(json.dumps(r))
    result = bench.aggregate(tmp_path)
    assert result["runs"] == 9 and (tmp_path / "results.md").read_text() == result["table"]
    assert ("inilora-alpha: -0.100 accuracy vs lora on every one of 3 seeds (p undefined: the same difference on "
            "every seed") in result["reading"]
    assert "p = 0.00" not in result["reading"]
    assert json.loads((tmp_path / "results.json").read_text().replace("NaN", "null"))["summary"]["toy"]["rows"][
        "inilora:adam"]["accuracy_vs_lora"]["p"] is None
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("loss_curves.png", "final_metrics.png"))


def test_the_reading_says_whether_lora_learned():
    from inilora.experiments.bench.report import reading

    def summary(majority, lora):
        runs = [{**_run("lora", s, lora + 0.001 * s, 0.5), "majority": majority} for s in range(3)]
        runs += [{**_run("pissa", s, lora + 0.003 * (s % 2), 0.5), "majority": majority} for s in range(3)]
        return bench.summarize(runs)

    learned = reading(summary(0.642, 0.80))
    assert "+15.9 points over the majority class (0.642) on every seed" in learned
    assert "pissa: +0.000 accuracy vs lora (paired over 3 seeds, p = 1.00): within seed noise." in learned
    assert "too small to compare initializations" in reading(summary(0.642, 0.642))
    runs = [{**_run("lora", s, v, 0.5), "majority": 0.642} for s, v in enumerate((0.80, 0.79, 0.645))]
    assert ("above the majority class (0.642) on 2 of 3 seeds; seed(s) 2 (0.645) ended no more than 2 points above "
            "it") in reading(bench.summarize(runs))


def test_the_reading_says_below_the_majority_class_and_shows_no_spread_for_one_seed():
    """One seed of 0.500 against a majority class of 0.667: not "0.500 ± 0.000, at the majority class"."""
    from inilora.experiments.bench.report import markdown, reading

    runs = [{**_run("lora", 0, 0.5, 0.7), "majority": 0.667}, {**_run("pissa", 0, 0.6, 0.7), "majority": 0.667}]
    summary = bench.summarize(runs)
    text = reading(summary)
    assert "lora reaches accuracy 0.500 (one seed), below the majority class (0.667)" in text
    assert "±" not in text and "at the majority" not in text and "p =" not in text
    assert "pissa: +0.100 vs lora on one seed (too few to judge)" in text
    table = markdown(summary)
    assert "| lora | 1 | 0.500 (one seed) |" in table and "| pissa | 1 | 0.600 (one seed) | +0.100 (too few seeds) |" in table
    # "at" only when the two figures print the same
    at = bench.summarize([{**_run("lora", s, 0.6666, 0.7), "majority": 0.667} for s in range(2)])
    assert "0.667 ± 0.000, at the majority class (0.667)" in reading(at)
    near = bench.summarize([{**_run("lora", s, 0.68, 0.7), "majority": 0.667} for s in range(2)])
    assert "less than 2 points above the majority class (0.667)" in reading(near)


def test_plan_is_seed_major_and_resumes_only_matching_runs(tmp_path):
    suite = bench.Suite("toy", "m", task="reviews", n_train=10, config={"lr": 1e-3}, full={"lr": 1e-5}, base=True,
                        extra=("inilora:adam",))
    specs = bench.plan([suite], ("lora", "inilora:svd"), [0, 1])
    assert [(s.method, s.seed) for s in specs] == [
        ("lora", 0), ("inilora:svd", 0), ("full", 0), ("lora", 1), ("inilora:svd", 1), ("full", 1), ("base", 0),
        ("inilora:adam", 0), ("inilora:adam", 1)]
    assert bench.method_and_solver("inilora:adam") == ("inilora", "adam")
    assert bench.method_and_solver("pissa") == ("pissa", "svd")
    spec = specs[0]
    assert not spec.done(tmp_path)
    spec.path(tmp_path).parent.mkdir(parents=True)
    spec.path(tmp_path).write_text(json.dumps({"spec": spec.key()}))
    assert spec.done(tmp_path)
    changed = bench.plan([bench.with_overrides(suite, n_train=20)], ("lora",), [0])[0]
    assert changed.path(tmp_path) == spec.path(tmp_path) and not changed.done(tmp_path)  # another budget: redo
    assert bench.with_overrides(suite, max_steps=3).config == {"lr": 1e-3, "max_steps": 3}
    assert specs[2].key()["config"]["lr"] == 1e-5  # full fine-tuning's own learning rate


@pytest.mark.parametrize("name", sorted(bench.PRESETS))
def test_every_preset_loads_its_tasks_and_plans_every_method_and_seed(name):
    from inilora.experiments import models, train

    suites, methods = bench.preset(name)
    for suite in suites:
        if suite.task.startswith("bb:"):  # BIG-bench: its loader has its own tests (no 358 MB download here)
            continue
        task, validation = suite.load()  # the data really loads, at the stated sizes
        assert (len(task.train), len(task.eval)) == (suite.n_train, suite.n_eval)
        assert (validation is not None) == suite.validation
        assert suite.model in models.ALIASES
        for method in (*methods, *suite.extra):
            method, solver = bench.method_and_solver(method)
            train.TrainConfig(**suite.config, method=method,  # validates every setting
                              solver=solver if train.config.has_fit(method) else None)
    seeds = [0, 1, 2]
    specs = bench.plan(suites, methods, seeds)
    runs = [(spec.suite.name, spec.method, spec.seed) for spec in specs]
    assert len(runs) == len(set(runs))  # no run twice
    expected = {(suite.name, method, seed) for suite in suites for seed in seeds
                for method in (*methods, *suite.extra, *(["full"] if suite.full is not None else []))}
    expected |= {(suite.name, "base", seeds[0]) for suite in suites if suite.base}
    assert set(runs) == expected
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        bench.preset("huge")

def test_rows_name_inilora_solver_and_older_results_still_read(tmp_path):
    """`inilora` is the Adam fit in `train` and the closed form in older benchmarks: bench rows name the
    solver, a bare `inilora` is refused, and older run files (method "inilora", folder inilora/) read as
    inilora:svd — the committed results/full aggregates with the new names and keeps its numbers."""
    import shutil

    with pytest.raises(InitError, match="'inilora' is ambiguous.*inilora:svd.*inilora:adam"):
        bench.check_variant("inilora")
    bench.check_variant("inilora:svd")
    assert bench.row_name("inilora") == "inilora:svd" and bench.row_name("inilora:adam") == "inilora:adam"
    assert bench.row_name("lora") == "lora" and bench.method_and_solver("inilora") == ("inilora", "svd")
    for name in bench.PRESETS:
        methods = bench.preset(name)[1]
        assert "inilora:svd" in methods and "inilora" not in methods
    suite = bench.Suite("reviews", "minilm", task="reviews")
    assert bench.RunSpec(suite, "inilora:svd", 0).path(tmp_path).parent.name == "inilora"  # the older folder
    assert bench.RunSpec(suite, "inilora:adam", 0).path(tmp_path).parent.name == "inilora-adam"
    committed = Path(__file__).parents[1] / "results" / "full"
    old = json.loads((committed / "results.json").read_text())
    shutil.copytree(committed / "runs", tmp_path / "runs")
    assert json.loads((tmp_path / "runs/reviews/inilora/seed0.json").read_text())["method"] == "inilora"
    new = bench.aggregate(tmp_path, make_plots=False)
    assert new["runs"] == len(old["runs"]) == 68
    for task, summary in json.loads((tmp_path / "results.json").read_text())["summary"].items():
        rows, before = summary["rows"], old["summary"][task]["rows"]
        assert "inilora" not in rows and {"inilora:svd", "inilora:adam"} <= set(rows)
        for row, earlier in ((rows["inilora:svd"], before["inilora"]), (rows["inilora:adam"], before["inilora:adam"])):
            # the same difference on every seed was given p = 1 (none) or 0 (a shift) when these were committed;
            # it is undefined now, with the same mean difference
            undefined = [k for k, v in row.items() if k.endswith("_vs_lora") and v["verdict"] == "undefined"]
            for key in undefined:
                assert earlier[key]["p"] in (0.0, 1.0) and earlier[key]["diff_mean"] == row[key]["diff_mean"]
            assert {k: v for k, v in row.items() if k != "values" and k not in undefined} == \
                {k: v for k, v in earlier.items() if k not in undefined}  # per-seed values are new
    assert "| inilora:svd | 3 |" in new["table"] and "| inilora | " not in new["table"]


def test_the_quick_preset_gives_each_method_a_rate_from_the_tuned_grid():
    """The quick preset states each method's rate, and it is one the tuned benchmark tries (so its runs can be
    compared with the tuned ones); it may differ from the tuned choice (a shorter budget: results/quick)."""
    from inilora.experiments.bench import tuned_preset

    suites, methods = bench.preset("quick")
    grid = tuned_preset.protocols("tuned")[0].lr_grid
    reviews = next(s for s in suites if s.task == "reviews")
    for method in methods:
        assert any(reviews.per_method[method]["lr"] == pytest.approx(lr) for lr in grid), method
    # a learning rate given on the command line sets every method's, over the preset's own
    overridden = bench.with_overrides(reviews, lr=6e-4, n_train=None)
    assert {bench.RunSpec(overridden, m, 0).config()["lr"] for m in methods} == {6e-4}
    assert {bench.RunSpec(reviews, m, 0).config()["lr"] for m in methods} != {6e-4}


def test_every_method_and_solver_records_an_init_version_and_a_run_key_names_it_once_bumped():
    from inilora.experiments.bench.plan import init_version
    from inilora.methods import REGISTRY

    rows = [f"{m.name}:{s}" for m in REGISTRY.values() for s in m.solvers] + [
        m.name for m in REGISTRY.values() if not m.has_fit]
    assert "inilora:adam" in rows and "lora" in rows and "inilora-beta" in rows
    versions = {row: init_version(row) for row in rows}
    assert all(isinstance(v, int) and v >= 1 for v in versions.values()), versions
    # svd: the fp64 split at the rank; svd_randomized: the cautious Krylov stop
    assert versions["inilora:svd"] == 6 and versions["inilora:svd_randomized"] == 8
    assert versions["pissa"] == versions["milora"] == 3 and versions["inilora:adam"] == versions["lora"] == 1  # fp64
    suite = bench.Suite("toy", "m", task="reviews", n_train=10, config={"lr": 1e-3})
    keys = {row: bench.RunSpec(suite, row, 0).key() for row in ("lora", "inilora:adam", "inilora:svd", "pissa")}
    # version 1 is what runs recorded before any bump were made with: their keys stay as they were
    assert "init_version" not in keys["lora"] and "init_version" not in keys["inilora:adam"]
    assert keys["inilora:svd"]["init_version"] == 6 and keys["pissa"]["init_version"] == 3

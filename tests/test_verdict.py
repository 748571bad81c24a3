"""summary.json entries from synthetic run records: selection on validation, finals, Holm, convergence."""

import pytest

from inilora.experiments.bench.schedule import Protocol
from inilora.experiments.bench.verdict import declared_verdict, paired_p, summarize_task

GRID = (1e-4, 3e-4, 1e-3, 3e-3)


def _records(method, best_lr, test_offset, speed):
    """Runs of one method on the whole schedule: validation peaks at ``best_lr``; the test metric is
    0.7 + test_offset + a seed effect; the validation accuracy curve rises at ``speed`` per 10 steps."""
    runs = []
    for lr in GRID:
        for seed in range(5):
            if lr != best_lr and seed > 1:
                continue
            val = 0.8 if lr == best_lr else 0.6
            # a test metric that selection must not read: highest at a learning rate that is not chosen
            test = 0.7 + test_offset + 0.01 * seed if lr == best_lr else 0.99
            curve = [[step, 1.0 - step / 200, min(val, 0.5 + speed * step / 10)] for step in range(0, 90, 10)]
            runs.append({"method": method, "lr": lr, "seed": seed, "val": {"metric": val, "loss": 0.5},
                         "val_curve": curve, "test": {"metric": test, "loss": 0.5}})
    return runs


def test_summary_chooses_on_validation_and_tests_the_finals():
    runs = (_records("lora", 1e-3, 0.0, 0.02) + _records("inilora:svd", 3e-4, 0.05, 0.05)
            + _records("pissa", 1e-3, 0.0, 0.02))
    # pissa: the same as lora plus a seed-dependent wobble, so its difference is not constant
    for r in runs:
        if r["method"] == "pissa" and r["lr"] == 1e-3:
            r["test"]["metric"] += 0.003 * (r["seed"] % 2)
    protocols = {m: Protocol(GRID) for m in ("lora", "inilora:svd", "pissa")}
    methods = summarize_task(runs, protocols, "classification")
    lora, ini = methods["lora"], methods["inilora:svd"]
    assert lora["chosen_lr"] == 1e-3 and ini["chosen_lr"] == 3e-4
    assert ini["test"]["seeds"] == [0, 1, 2, 3, 4]
    assert ini["test"]["mean"] == pytest.approx(0.75 + 0.02)
    assert ini["test"]["p_vs_lora"] == 0.0  # a constant +0.05 on every seed
    assert ini["test"]["win_rate_vs_lora"] == 1.0
    assert lora["test"]["p_vs_lora"] is None
    # Holm over {inilora, pissa}: never below the raw p
    for m in ("inilora:svd", "pissa"):
        assert methods[m]["test"]["p_holm"] >= methods[m]["test"]["p_vs_lora"]
    # lora's curve ends at step 80 at 0.5 + 0.02 * 8 = 0.66; inilora (0.05 per 10 steps) first logs
    # >= 0.66 at step 40; pissa, as fast as lora, only at step 80
    assert ini["steps_to_lora_final"] == 40
    assert methods["pissa"]["steps_to_lora_final"] == 80
    assert ini["val_by_lr"]["0.0003"] == pytest.approx(0.8)
    verdict = {row["comparison"]: row for row in declared_verdict(methods)}
    assert set(verdict) == {"inilora:svd vs lora", "inilora:svd vs pissa"}
    assert verdict["inilora:svd vs lora"]["diff_mean"] == pytest.approx(0.05)


def test_validation_by_lr_is_what_the_choice_read_the_tuning_seeds():
    """A final seed that fails on validation does not drag its rate below a neighbour it beat at selection."""
    runs = _records("lora", 1e-3, 0.0, 0.02)
    for r in runs:
        if r["lr"] == 1e-3 and r["seed"] >= 2:
            r["val"]["metric"] = 0.1  # finals run after the choice: they cannot change it, nor its reported score
    entry = summarize_task(runs, {"lora": Protocol(GRID)}, "classification")["lora"]
    assert entry["chosen_lr"] == 1e-3
    assert entry["val_by_lr"]["0.001"] == pytest.approx(0.8)  # seeds 0 and 1; all five would give 0.38
    assert entry["val_by_lr"]["0.001"] > max(v for lr, v in entry["val_by_lr"].items() if lr != "0.001")


def test_a_method_short_of_its_final_seeds_stays_out_of_the_holm_family():
    """Interim p's would join the family and raise the Holm p of the complete comparisons."""
    runs = (_records("lora", 1e-3, 0.0, 0.02) + _records("pissa", 1e-3, 0.0, 0.02)
            + _records("inilora-alpha", 1e-3, 0.02, 0.02))
    for r in runs:
        if r["method"] == "pissa":  # p's strictly between 0 and 1, alpha's above pissa's
            r["test"]["metric"] += 0.004 * (r["seed"] % 2)
        if r["method"] == "inilora-alpha":
            r["test"]["metric"] -= 0.03 * (r["seed"] % 2)
    everything = summarize_task(runs, {m: Protocol(GRID) for m in ("lora", "pissa", "inilora-alpha")},
                                "classification")
    assert everything["pissa"]["test"]["p_holm"] > everything["pissa"]["test"]["p_vs_lora"]  # a family of two
    runs = [r for r in runs if not (r["method"] == "inilora-alpha" and r["seed"] == 4)]
    methods = summarize_task(runs, {m: Protocol(GRID) for m in ("lora", "pissa", "inilora-alpha")},
                             "classification")
    alpha, pissa = methods["inilora-alpha"]["test"], methods["pissa"]["test"]
    assert alpha["seeds"] == [0, 1, 2, 3] and alpha["p_vs_lora"] is None and alpha["p_holm"] is None
    assert pissa["p_holm"] == pytest.approx(pissa["p_vs_lora"])  # alone in its family now
    rows = {row["comparison"]: row for row in declared_verdict(methods, seeds=5)}
    assert rows["inilora-alpha vs lora"]["n"] == 4 and rows["inilora-alpha vs lora"]["p"] is None
    assert rows["inilora-alpha vs lora"]["diff_mean"] == pytest.approx(0.005)
    assert declared_verdict(methods)[0]["p"] > 0  # without a required count, 4 seeds are tested


def test_paired_p_agrees_with_scipy():
    from scipy import stats

    a, b = {0: 0.7, 1: 0.72, 2: 0.69}, {0: 0.68, 1: 0.71, 2: 0.70}
    assert paired_p(a, b) == pytest.approx(stats.ttest_rel([0.7, 0.72, 0.69], [0.68, 0.71, 0.70]).pvalue)
    assert paired_p({0: 1.0}, {0: 0.0}) is None


def test_item_level_bootstrap_separates_a_real_gap_from_one_example():
    import random

    from inilora.experiments.bench.verdict import paired_bootstrap_p

    rng = random.Random(0)
    base = {s: [rng.random() < 0.7 for _ in range(400)] for s in range(5)}
    better = {s: [True if i < 60 else h for i, h in enumerate(hits)] for s, hits in base.items()}

    def churn(hits):  # 10 wrong answers made right, 9 right ones made wrong: +1 example, much noise
        wrong, right = [i for i, h in enumerate(hits) if not h][:10], [i for i, h in enumerate(hits) if h][:9]
        return [not h if i in wrong or i in right else h for i, h in enumerate(hits)]

    one_more = {s: churn(hits) for s, hits in base.items()}
    assert paired_bootstrap_p(base, base) == 1.0
    strong = paired_bootstrap_p(better, base)
    assert strong < 0.01 and strong == paired_bootstrap_p(base, better)  # symmetric in its arguments
    assert paired_bootstrap_p(one_more, base) > 0.3
    assert paired_bootstrap_p(better, {7: base[0]}) is None  # no common seed


def test_declared_verdict_reports_item_level_p_with_holm():
    runs = _records("lora", 1e-3, 0.0, 0.02) + _records("inilora:svd", 3e-4, 0.05, 0.05) + \
        _records("inilora-alpha", 1e-3, 0.0, 0.02)
    methods = summarize_task(runs, {m: Protocol(GRID) for m in ("lora", "inilora:svd", "inilora-alpha")},
                             "classification")
    base = [i % 3 != 0 for i in range(300)]
    hits = {"lora": {s: base for s in range(5)},
            "inilora:svd": {s: [True] * 300 for s in range(5)},
            "inilora-alpha": {s: base for s in range(5)}}
    rows = {row["comparison"]: row for row in declared_verdict(methods, hits)}
    assert rows["inilora:svd vs lora"]["p_items"] < 0.01 and rows["inilora-alpha vs lora"]["p_items"] == 1.0
    for row in rows.values():
        assert row["p_items_holm"] >= row["p_items"]
    assert all(row["p_items"] is None for row in declared_verdict(methods))


def test_example_hits_scores_classes_and_answers_and_refuses_a_length_mismatch():
    from inilora.errors import DataError
    from inilora.experiments.tasks import example_hits

    rows = [{"label": 1}, {"label": 0}]
    assert example_hits("classification", rows, [1, 1]) == [True, False]
    assert example_hits("generation", [{"answer": " 42 "}, {"answer": "7"}], ["42", "8"]) == [True, False]
    with pytest.raises(DataError, match="1 predictions for 2 examples"):
        example_hits("classification", rows, [1])


def test_the_readme_verdict_reads_only_complete_comparisons_after_holm():
    from inilora.experiments.bench.tuned_report import verdict_lines

    rows = [{"comparison": "inilora:svd vs lora", "diff_mean": 0.012, "n": 5, "p": 0.001, "p_holm": 0.01, "p_items_holm": 0.2},
            {"comparison": "inilora-alpha vs lora", "diff_mean": -0.02, "n": 5, "p": 0.001, "p_holm": 0.004, "p_items_holm": None},
            {"comparison": "inilora-beta vs lora", "diff_mean": 0.03, "n": 5, "p": 0.001, "p_holm": 0.08, "p_items_holm": 0.01},
            {"comparison": "inilora:svd vs pissa", "diff_mean": 0.05, "n": 2, "p": 0.001, "p_holm": 0.001, "p_items_holm": 0.001}]
    lines = verdict_lines(rows, 5)
    assert lines[0] == "- inilora:svd vs lora: +0.012 (Holm p 0.010 over seeds, 0.200 over test examples): better."
    assert lines[1] == "- inilora-alpha vs lora: -0.020 (Holm p 0.004 over seeds): worse."
    assert lines[2].endswith("no difference after correction.")  # seeds decide; items only complement
    assert lines[3] == "- inilora:svd vs pissa: waiting for the final runs (2 of 5 paired seeds)."
    # a task compared on its loss: a lower value is the better one
    lines = verdict_lines(rows, 5, higher=False)
    assert lines[0].endswith(": worse.") and lines[1].endswith(": better.")
    assert lines[-1] == ("- Holm's correction is over the 4 of the 6 declared comparisons with a p so far: a Holm "
                         "p can only grow as the others arrive.")
    rows += [{"comparison": f"c{i}", "diff_mean": 0.0, "n": 5, "p": 0.5, "p_holm": 1.0} for i in range(2)]
    assert len(verdict_lines(rows, 5)) == 6  # the whole family has a p: no note


def test_the_overview_sorts_each_declared_comparison_by_task_and_direction():
    from inilora.experiments.bench.tuned_report import overview_lines

    def row(name, diff, p_holm, n=5):
        return {"comparison": name, "diff_mean": diff, "n": n, "p": p_holm, "p_holm": p_holm}

    declared = {"reviews": [row("inilora:svd vs lora", 0.003, 0.47), row("inilora-alpha vs lora", -0.02, 0.01)],
                "hyperbaton": [row("inilora:svd vs lora", 0.026, 0.007), row("inilora-alpha vs lora", -0.01, None, 4)],
                "gsm_symbolic": [row("inilora:svd vs lora", -0.05, 0.02)]}  # a loss: lower is better
    lines = overview_lines(declared, {"reviews": "accuracy", "hyperbaton": "accuracy", "gsm_symbolic": "eval_loss"}, 5)
    table = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[1:] for line in lines if line.startswith("| inilora")}
    assert table["inilora:svd vs lora"] == ["hyperbaton (+0.026), gsm_symbolic (-0.050)", "reviews", "–", "–"]
    assert table["inilora-alpha vs lora"] == ["–", "–", "reviews (-0.020)", "hyperbaton"]
    assert list(table) == ["inilora:svd vs lora", "inilora-alpha vs lora"]  # the declared order
    assert overview_lines({}, {}, 5) == []


def test_a_task_compared_on_its_loss_chooses_and_tests_on_the_loss():
    """metric="eval_loss": the lowest mean validation loss picks the rate (the task's own metric, tied at 0,
    is not read), the test values are the held-out losses, and a lower loss wins."""
    runs = []
    for method, best, shift in (("lora", 1e-3, 0.0), ("inilora:svd", 3e-4, -0.1)):
        for lr in GRID:
            for seed in range(5):
                if lr != best and seed > 1:
                    continue
                loss = 1.0 if lr == best else 1.5
                runs.append({"method": method, "lr": lr, "seed": seed, "val": {"metric": 0.0, "loss": loss},
                             "val_curve": [[10, loss, None], [20, loss, None]],
                             "test": {"metric": 0.0, "loss": 2.0 + shift + 0.01 * seed}})
    methods = summarize_task(runs, {m: Protocol(GRID) for m in ("lora", "inilora:svd")}, "generation", "eval_loss")
    assert methods["lora"]["chosen_lr"] == 1e-3 and methods["inilora:svd"]["chosen_lr"] == 3e-4
    assert methods["inilora:svd"]["val_by_lr"]["0.0003"] == pytest.approx(1.0)
    assert methods["inilora:svd"]["test"]["values"] == pytest.approx([1.9, 1.91, 1.92, 1.93, 1.94])
    assert methods["inilora:svd"]["test"]["win_rate_vs_lora"] == 1.0  # lower loss on every seed
    on_the_metric = summarize_task(runs, {m: Protocol(GRID) for m in ("lora", "inilora:svd")}, "generation")
    assert on_the_metric["inilora:svd"]["test"]["values"] == [0.0] * 5  # the task's own metric: all tied


def test_the_budget_line_shows_loras_mean_validation_curve_at_its_chosen_rate():
    from inilora.experiments.bench.tuned_report import budget_line

    runs = _records("lora", 1e-3, 0.0, 0.02) + _records("pissa", 1e-3, 0.0, 0.05)
    for r in runs:  # seed s's accuracy curve is 0.5 + 0.01 s at every step: the mean over seeds 0-4 is 0.52
        r.update(task="t", kind="classification")
        r["val_curve"] = [[step, 0.4, 0.5 + 0.01 * r["seed"]] for step in (10, 20)]
    task = {"methods": summarize_task(runs, {m: Protocol(GRID) for m in ("lora", "pissa")}, "classification")}
    assert budget_line("t", task, runs) == ("Budget: `lora` at 0.001, validation accuracy (mean of 5 seeds) at "
                                            "steps 10, 20: 0.520, 0.520.")
    task["methods"]["lora"]["chosen_lr"] = None  # still tuning: nothing to show yet
    assert budget_line("t", task, runs) is None

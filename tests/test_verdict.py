"""summary.json entries from synthetic run records: selection on validation, finals, convergence; the declared
comparisons' statistics (t and two-level bootstrap intervals, Holm within the family, TOST) and their words."""

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
    assert ini["test"]["p_vs_lora"] is None  # a constant +0.05 on every seed: the t-test is undefined, not p = 0
    assert ini["test"]["win_rate_vs_lora"] == 1.0
    assert lora["test"]["p_vs_lora"] is None
    assert methods["pissa"]["test"]["p_adjusted_all_methods"] == pytest.approx(methods["pissa"]["test"]["p_vs_lora"])
    # lora's curve ends at step 80 at 0.5 + 0.02 * 8 = 0.66; inilora (0.05 per 10 steps) first logs
    # >= 0.66 at step 40; pissa, as fast as lora, only at step 80
    assert ini["steps_to_lora_final"] == 40
    assert methods["pissa"]["steps_to_lora_final"] == 80
    assert ini["val_by_lr"]["0.0003"] == pytest.approx(0.8)
    verdict = {row["comparison"]: row for row in declared_verdict(methods)}
    assert set(verdict) == {"inilora:svd vs lora", "inilora:svd vs pissa"}
    assert verdict["inilora:svd vs lora"]["delta"] == pytest.approx(0.05)
    row = verdict["inilora:svd vs lora"]
    assert row["p"] is None and row["p_holm"] is None and row["reading"] == "inconclusive" and "undefined" in row["why"]


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
    assert everything["pissa"]["test"]["p_adjusted_all_methods"] > everything["pissa"]["test"]["p_vs_lora"]
    runs = [r for r in runs if not (r["method"] == "inilora-alpha" and r["seed"] == 4)]
    methods = summarize_task(runs, {m: Protocol(GRID) for m in ("lora", "pissa", "inilora-alpha")},
                             "classification")
    alpha, pissa = methods["inilora-alpha"]["test"], methods["pissa"]["test"]
    assert alpha["seeds"] == [0, 1, 2, 3] and alpha["p_vs_lora"] is None and alpha["p_adjusted_all_methods"] is None
    assert pissa["p_adjusted_all_methods"] == pytest.approx(pissa["p_vs_lora"])  # alone in its family now
    rows = {row["comparison"]: row for row in declared_verdict(methods, seeds=5)}
    assert rows["inilora-alpha vs lora"]["n"] == 4 and rows["inilora-alpha vs lora"]["p"] is None
    assert rows["inilora-alpha vs lora"]["delta"] == pytest.approx(0.005)
    assert rows["inilora-alpha vs lora"]["reading"] == "inconclusive" and "waiting" in rows["inilora-alpha vs lora"]["why"]
    assert declared_verdict(methods)[0]["p"] > 0  # without a required count, 4 seeds are tested


def test_paired_p_agrees_with_scipy():
    from scipy import stats

    a, b = {0: 0.7, 1: 0.72, 2: 0.69}, {0: 0.68, 1: 0.71, 2: 0.70}
    assert paired_p(a, b) == pytest.approx(stats.ttest_rel([0.7, 0.72, 0.69], [0.68, 0.71, 0.70]).pvalue)
    assert paired_p({0: 1.0}, {0: 0.0}) is None
    # the same difference on every seed: undefined (no spread), never 0 or 1
    assert paired_p({0: 0.1, 1: 0.1}, {0: 0.0, 1: 0.0}) is None and paired_p({0: 0.3, 1: 0.5}, {0: 0.3, 1: 0.5}) is None


def test_example_hits_scores_classes_and_answers_and_refuses_a_length_mismatch():
    from inilora.errors import DataError
    from inilora.experiments.tasks import example_hits

    rows = [{"label": 1}, {"label": 0}]
    assert example_hits("classification", rows, [1, 1]) == [True, False]
    assert example_hits("generation", [{"answer": " 42 "}, {"answer": "7"}], ["42", "8"]) == [True, False]
    with pytest.raises(DataError, match="1 predictions for 2 examples"):
        example_hits("classification", rows, [1])


def _methods(values: dict[str, list[float]]) -> dict:
    """summary.json-like method entries: the test values of seeds 0, 1, ... per method."""
    return {m: {"test": {"seeds": list(range(len(v))), "values": list(v)}} for m, v in values.items()}


def test_holm_on_known_p_values():
    from inilora.experiments.bench.tuning import holm

    # sorted 0.01, 0.03, 0.04 over m = 3: 0.03, 0.06, max(0.06, 0.04) = 0.06 (step-down, kept monotone)
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": None})
    assert holm({"a": 0.5, "b": 0.6}) == {"a": 1.0, "b": 1.0}  # capped at 1


def test_holm_is_over_the_declared_family_only():
    """A method outside the declared comparisons (milora) does not enter the family; an undefined p stays
    in it at its largest (1), so a family with an undefined member is not corrected less."""
    from inilora.experiments.bench.tuning import holm

    lora = [0.70, 0.72, 0.71, 0.69, 0.73]
    methods = _methods({"lora": lora, "inilora:svd": [v + d for v, d in zip(lora, (0.02, 0.03, 0.01, 0.025, 0.02))],
                        "pissa": [v + d for v, d in zip(lora, (0.01, -0.01, 0.02, 0.0, 0.005))],
                        "inilora-alpha": [v + 0.01 for v in lora],  # the same difference on every seed
                        "milora": [v - 0.05 for v in lora]})
    rows = {row["comparison"]: row for row in declared_verdict(methods, seeds=5, margin=0.01)}
    assert set(rows) == {"inilora:svd vs lora", "inilora:svd vs pissa", "inilora-alpha vs lora"}
    raw = {name: row["p"] for name, row in rows.items()}
    assert raw["inilora-alpha vs lora"] is None and "undefined" in rows["inilora-alpha vs lora"]["why"]
    expected = holm({**raw, "inilora-alpha vs lora": 1.0})
    for name in ("inilora:svd vs lora", "inilora:svd vs pissa"):
        assert rows[name]["p_holm"] == pytest.approx(expected[name])
    assert rows["inilora:svd vs lora"]["p_holm"] == pytest.approx(min(1.0, 3 * raw["inilora:svd vs lora"]))


def test_t_interval_matches_the_textbook_formula():
    from scipy import stats

    from inilora.experiments.bench.stats import t_interval

    diffs = [0.02, 0.03, 0.01, 0.025, 0.02]
    mean, sd = 0.021, 0.0074162  # by hand: fmean, sample std
    half = stats.t.ppf(0.975, 4) * sd / 5 ** 0.5  # t(0.975, 4) = 2.776
    assert t_interval(diffs) == pytest.approx((mean - half, mean + half), abs=1e-6)
    assert t_interval(diffs, 0.90)[1] - t_interval(diffs, 0.90)[0] < t_interval(diffs)[1] - t_interval(diffs)[0]
    assert t_interval([0.1]) is None and t_interval([0.1, 0.1]) == (0.1, 0.1)


def test_two_level_bootstrap_against_known_answers():
    import numpy as np

    from inilora.experiments.bench.stats import percentile_interval, two_level_bootstrap

    # seeds only: two seeds whose every example differs by 0 and by 1; a draw's mean is 0, 1/2 or 1 with
    # probability 1/4, 1/2, 1/4 (both seeds the same / one of each), so the 95 % interval is [0, 1] and the
    # draws' variance is the variance of a mean of two draws from {0, 1}: 1/8
    draws = two_level_bootstrap({0: [0.0] * 50, 1: [1.0] * 50})
    assert percentile_interval(draws) == (0.0, 1.0)
    assert np.mean(draws == 0.5) == pytest.approx(0.5, abs=0.02) and np.var(draws) == pytest.approx(1 / 8, rel=0.05)
    # examples only: every seed has the same per-example differences x; the draws' std is the standard error
    # std(x) / sqrt(n) (population std), and the 95 % interval mean ± 1.96 of it
    rng = np.random.default_rng(1)
    x = rng.choice([-1.0, 0.0, 1.0], size=2000, p=[0.2, 0.5, 0.3])
    draws = two_level_bootstrap({s: x for s in range(5)})
    se = x.std() / np.sqrt(len(x))
    assert draws.std() == pytest.approx(se, rel=0.03)
    low, high = percentile_interval(draws)
    assert low == pytest.approx(x.mean() - 1.96 * se, abs=0.1 * se) and high == pytest.approx(x.mean() + 1.96 * se, abs=0.1 * se)
    with pytest.raises(ValueError, match="3 family ids for 2000 examples"):
        two_level_bootstrap({0: x}, families=[0, 1, 2])


def test_whole_families_widen_the_interval_as_their_size_says():
    """Families of 9 identical examples carry the information of one example each: resampling them whole
    widens the interval by sqrt(9) = 3 over resampling the examples as if they were independent."""
    import numpy as np

    from inilora.experiments.bench.stats import percentile_interval, two_level_bootstrap

    rng = np.random.default_rng(2)
    per_family = rng.choice([-1.0, 0.0, 1.0], size=300, p=[0.25, 0.45, 0.3])
    x = np.repeat(per_family, 9)
    families = np.repeat(np.arange(300), 9).tolist()
    flat = np.subtract(*percentile_interval(two_level_bootstrap({0: x, 1: x})))
    clustered = np.subtract(*percentile_interval(two_level_bootstrap({0: x, 1: x}, families)))
    assert clustered / flat == pytest.approx(3.0, rel=0.1)


def test_tost_readings():
    from inilora.experiments.bench.stats import read_comparison

    # better/worse on the Holm p alone; the direction from the metric (a loss: lower is better)
    assert read_comparison(0.02, 0.01, 0.01, [(0.01, 0.03)]) == "better"
    assert read_comparison(0.02, 0.01, 0.01, [(0.01, 0.03)], higher_is_better=False) == "worse"
    assert read_comparison(-0.05, 0.004, 0.02, [(-0.07, -0.03)], higher_is_better=False) == "better"
    # equivalent only when every 90 % interval lies inside ±margin
    assert read_comparison(0.001, 0.8, 0.01, [(-0.004, 0.006), (-0.008, 0.009)]) == "equivalent"
    assert read_comparison(0.001, 0.8, 0.01, [(-0.004, 0.006), (-0.008, 0.011)]) == "inconclusive"
    assert read_comparison(0.001, 0.8, 0.01, [(-0.004, 0.006), None]) == "equivalent"  # only the one there is
    assert read_comparison(0.0, 1.0, 0.01, [None, None]) == "inconclusive"  # no interval: nothing shown
    # a wide interval around zero is not "no difference"
    assert read_comparison(0.0, 1.0, 0.02, [(-0.12, 0.12)]) == "inconclusive"
    assert read_comparison(0.005, 0.3, 0.01, [(-0.001, 0.0101)]) == "inconclusive"  # touching the margin


def test_declared_rows_carry_the_issue_shape_and_read_by_tost():
    lora = [0.70, 0.72, 0.71, 0.69, 0.73]
    wobble = (0.001, -0.001, 0.002, 0.0, -0.002)
    methods = _methods({"lora": lora, "inilora:svd": [v + w for v, w in zip(lora, wobble)],
                        "inilora-alpha": [v + w * 20 for v, w in zip(lora, wobble)]})
    # per example: 400 test examples per seed; svd differs from lora on 0-1 of them per seed
    per_example = {"lora": {s: [1.0] * 280 + [0.0] * 120 for s in range(5)}}
    per_example["inilora:svd"] = {s: [1.0] * 280 + [0.0] * 120 for s in range(5)}
    rows = {row["comparison"]: row for row in declared_verdict(methods, per_example, seeds=5, margin=0.01)}
    svd, alpha = rows["inilora:svd vs lora"], rows["inilora-alpha vs lora"]
    assert {"comparison", "delta", "ci95", "ci95_two_level", "margin", "p", "p_holm", "reading"} <= set(svd)
    assert svd["delta"] == pytest.approx(0.0) and svd["margin"] == 0.01
    assert svd["ci95_two_level"] == [0.0, 0.0]  # identical answers on every example
    assert svd["reading"] == "equivalent"
    assert alpha["ci95_two_level"] is None and alpha["reading"] == "inconclusive"  # ±0.04 seed to seed
    assert alpha["ci95"][0] < -0.01 < 0.01 < alpha["ci95"][1]


def test_the_readme_verdict_reads_only_complete_comparisons_after_holm():
    verdict_lines = _render_tuned().verdict_lines

    def row(name, delta, p_holm, ci, n=5, margin=0.01, **extra):
        reading = extra.pop("reading", None)
        r = {"comparison": name, "delta": delta, "n": n, "p": p_holm, "p_holm": p_holm, "ci95": ci, "ci90": ci,
             "margin": margin, **extra}
        return r if reading is None else {**r, "reading": reading}

    rows = [row("inilora:svd vs lora", 0.012, 0.01, [0.004, 0.02], ci95_two_level=[-0.01, 0.03]),
            row("inilora-alpha vs lora", -0.02, 0.004, [-0.03, -0.01]),
            row("inilora-beta vs lora", 0.001, 0.8, [-0.005, 0.007]),
            row("inilora:adam vs lora", 0.03, 0.08, [-0.01, 0.07]),
            row("inilora:svd vs pissa", 0.05, None, None, n=2)]
    lines = verdict_lines(rows, 5)
    assert lines[0] == ("- inilora:svd vs lora: Δ +0.012 (95 % CI +0.004 to +0.020 over seeds; -0.010 to +0.030 over "
                        "seeds and test examples), Holm p 0.010: better.")
    assert lines[1] == "- inilora-alpha vs lora: Δ -0.020 (95 % CI -0.030 to -0.010 over seeds), Holm p 0.004: worse."
    assert lines[2].endswith("Holm p 0.800: equivalent within ±0.01.")
    assert lines[3].endswith("Holm p 0.080: inconclusive.")
    assert lines[4] == "- inilora:svd vs pissa: waiting for the final runs (2 of 5 paired seeds)."
    assert not any("no difference" in line or "alike" in line for line in lines)
    # a task compared on its loss: a lower value is the better one
    lines = verdict_lines(rows, 5, higher=False)
    assert lines[0].endswith(": worse.") and lines[1].endswith(": better.")
    assert lines[-1] == ("- Holm's correction is over the 4 of the 6 declared comparisons with a p so far: a Holm "
                         "p can only grow as the others arrive.")


def test_the_renderer_refuses_words_the_figures_contradict():
    from inilora.experiments.bench.tuned_report import reading_of

    base = {"comparison": "inilora:svd vs lora", "delta": 0.012, "n": 5, "p": 0.01, "p_holm": 0.03,
            "ci95": [0.004, 0.02], "ci90": [0.005, 0.019], "margin": 0.01}
    assert reading_of(base, True) == "better" and reading_of({**base, "reading": "better"}, True) == "better"
    for stored in ("equivalent", "inconclusive", "worse"):
        with pytest.raises(ValueError, match="its figures give 'better'"):
            reading_of({**base, "reading": stored}, True)
    wide = {**base, "delta": 0.001, "p": 0.9, "p_holm": 1.0, "ci90": [-0.004, 0.012]}
    with pytest.raises(ValueError, match="its figures give 'inconclusive'"):
        reading_of({**wide, "reading": "equivalent"}, True)  # the 90 % interval reaches past the margin
    undefined = {**base, "p": None, "p_holm": None, "ci90": [0.01, 0.01], "ci95": [0.01, 0.01]}
    assert reading_of(undefined, True) == "inconclusive"


def test_the_overview_sorts_each_declared_comparison_by_task_and_reading():
    overview_lines = _render_tuned().overview_lines

    def row(name, delta, p_holm, ci, n=5, margin=0.01):
        return {"comparison": name, "delta": delta, "n": n, "p": p_holm, "p_holm": p_holm, "ci95": ci, "ci90": ci,
                "margin": margin}

    declared = {"reviews": [row("inilora:svd vs lora", 0.003, 0.47, [-0.002, 0.008]),
                            row("inilora-alpha vs lora", -0.02, 0.01, [-0.03, -0.01])],
                "hyperbaton": [row("inilora:svd vs lora", 0.026, 0.007, [0.016, 0.037]),
                               row("inilora-alpha vs lora", -0.01, None, None, 4)],
                "gsm_symbolic": [row("inilora:svd vs lora", -0.05, 0.02, [-0.08, -0.02], margin=0.02)]}
    lines = overview_lines(declared, {"reviews": "accuracy", "hyperbaton": "accuracy", "gsm_symbolic": "eval_loss"}, 5)
    table = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[1:] for line in lines
             if line.startswith("| inilora")}
    assert table["inilora:svd vs lora"] == [
        "hyperbaton (+0.026, +0.016 to +0.037), gsm_symbolic (-0.050, -0.080 to -0.020)", "–",
        "reviews (+0.003, -0.002 to +0.008)", "–", "–"]
    # hyperbaton short of its final seeds, gsm_symbolic with no row for it (a method without finals there): both wait
    assert table["inilora-alpha vs lora"] == ["–", "reviews (-0.020, -0.030 to -0.010)", "–", "–",
                                              "hyperbaton, gsm_symbolic"]
    assert list(table) == ["inilora:svd vs lora", "inilora-alpha vs lora"]  # the declared order
    assert "accuracy ±0.01, held-out loss ±0.02" in lines[0] and "not evidence of no difference" in lines[0]
    assert overview_lines({}, {}, 5) == []
    # a task whose tuned lora was still improving at the end of its budget is marked wherever it appears
    marked = overview_lines(declared, {"reviews": "accuracy", "hyperbaton": "accuracy", "gsm_symbolic": "eval_loss"}, 5,
                            unconverged=("hyperbaton",))
    row = next(line for line in marked if line.startswith("| inilora-alpha vs lora"))
    assert "hyperbaton†, gsm_symbolic" in row and "hyperbaton† (+0.026" in marked[4]
    assert marked[-2].startswith("† Not converged") and "on hyperbaton (under each task below)" in marked[-2]
    assert not any("†" in line for line in lines)


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
    budget_line = _render_tuned().budget_line

    runs = _records("lora", 1e-3, 0.0, 0.02) + _records("pissa", 1e-3, 0.0, 0.05)
    for r in runs:  # seed s's accuracy curve is 0.5 + 0.01 s at every step: the mean over seeds 0-4 is 0.52
        r.update(task="t", kind="classification")
        r["val_curve"] = [[step, 0.4, 0.5 + 0.01 * r["seed"]] for step in (10, 20)]
    task = {"methods": summarize_task(runs, {m: Protocol(GRID) for m in ("lora", "pissa")}, "classification")}
    assert budget_line("t", task, runs) == ("Budget: `lora` at 0.001, validation accuracy (mean of 5 seeds) at "
                                            "steps 10, 20: 0.520, 0.520.")
    task["methods"]["lora"]["chosen_lr"] = None  # still tuning: nothing to show yet
    assert budget_line("t", task, runs) is None


def test_a_task_with_example_families_gives_them_to_the_two_level_interval():
    """The answer key keeps each test row's family (``group``, e.g. winowhy's sentence with its candidate
    reasons); the declared comparison resamples whole families, so shared answers widen its interval."""
    from types import SimpleNamespace

    from inilora.experiments.bench.answers import AnswerKey

    rows = [{"text": f"s{i // 8} r{i % 8}", "label": i % 2, "group": f"s{i // 8}"} for i in range(400)]
    key = AnswerKey.of_task(SimpleNamespace(kind="classification", eval=rows), "d")
    assert key.families == [f"s{i // 8}" for i in range(400)] and key.eval[0] == {"label": 0, "group": "s0"}
    alone = AnswerKey.of_task(SimpleNamespace(kind="classification", eval=[{"label": 1}, {"label": 0}]), "d")
    assert alone.families is None and alone.eval == [{"label": 1}, {"label": 0}]

    lora = [0.70, 0.72, 0.71, 0.69, 0.73]
    methods = _methods({"lora": lora, "inilora:svd": [v + d for v, d in zip(lora, (0.01, 0.0, 0.02, 0.01, 0.0))]})
    # svd right where lora is wrong on every example of families 0-9, wrong where lora is right on 40-44: the
    # per-example differences come in blocks of 8
    per_family = [1.0] * 10 + [0.0] * 30 + [-1.0] * 5 + [0.0] * 5
    differences = [per_family[i // 8] for i in range(400)]
    per_example = {"lora": {s: [0.0] * 400 for s in range(5)}, "inilora:svd": {s: differences for s in range(5)}}
    flat, = declared_verdict(methods, per_example, seeds=5, margin=0.01)
    clustered, = declared_verdict(methods, per_example, families=key.families, seeds=5, margin=0.01)
    width = lambda row: row["ci95_two_level"][1] - row["ci95_two_level"][0]  # noqa: E731
    assert width(clustered) / width(flat) == pytest.approx(8 ** 0.5, rel=0.15)


def test_results_md_says_why_a_comparison_with_no_spread_has_no_p():
    """Exact match 0 on every seed for lora and 0.1 on every seed for pissa: the t-test is undefined, shown as
    such with the reason, never as p = 0."""
    from inilora.experiments.bench.tuned_report import declared_table

    methods = _methods({"lora": [0.0, 0.0, 0.0, 0.0, 0.0], "inilora:svd": [0.1] * 5, "pissa": [0.1] * 5})
    rows = declared_verdict(methods, seeds=5, margin=0.02)
    lines = declared_table(rows, "exact_match")
    row = next(line for line in lines if line.startswith("| inilora:svd vs lora"))
    assert row == "| inilora:svd vs lora | 5 | +0.100 | +0.100 to +0.100 | – | ±0.02 | undefined | – | inconclusive |"
    assert any("undefined: every seed gives the same difference" in line for line in lines)
    assert not any("0.000 |" in line.split("±0.02")[-1] for line in lines if line.startswith("| inilora"))


def _render_tuned():
    """The benchmark page's tuned block renderer (benchmarks/render/tuned.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from render import tuned

    return tuned

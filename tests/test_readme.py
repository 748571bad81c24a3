"""The README's first example runs as written (in a fresh process, on a tiny model built from a config), and every
generated block of figures, in README.md and in docs/, equals what benchmarks/render renders from the committed
results."""

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_first_readme_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "inilora.get_peft_model" in code and "from_pretrained" in code  # the example a newcomer meets first
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin",
                               "INILORA_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"inilora \(svd\): 4 layers, .*max error/optimum 1\.0000", done.stdout), done.stdout
    assert (tmp_path / "adapter" / "inilora_init.safetensors").is_file()
    assert (tmp_path / "adapter-lora" / "adapter_model.safetensors").is_file()


def _tables():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from render import blocks

    return blocks


def _page(name: str) -> str:
    """The text of the page block ``name`` sits on."""
    return (ROOT / _tables().BLOCKS[name].page).read_text()


@pytest.mark.parametrize("record", ["results/quick/make_quick.json", "results/test_suite.json"])
def test_a_timing_copied_into_json_says_what_its_markdown_says(record):
    from render import timings

    _tables()
    copy = json.loads((ROOT / record).read_text())
    markdown = (ROOT / copy["markdown"]).read_text()
    assert timings.markdown_figures(markdown) == pytest.approx(timings.copied_figures(copy))
    retimed = re.sub(r"^(\s*real\s+)(\d+)m", lambda m: f"{m[1]}{int(m[2]) + 1}m", markdown, flags=re.M)
    assert retimed != markdown and timings.markdown_figures(retimed) != pytest.approx(timings.copied_figures(copy))


def test_the_make_timings_are_written_as_markdown_that_says_what_their_json_says():
    _tables()
    import time_make

    from render import timings

    record = {"markdown": "results/test_suite.md", "measured_by": "benchmarks/time_make.py",
              "command": "time make test", "commit": "abc1234", "cpus": 2, "passed": 481, "warnings": 3,
              "pytest_seconds": 402.5, "real_seconds": 431.25}
    assert timings.markdown_figures(time_make.markdown(record)) == pytest.approx(timings.copied_figures(record))
    quick = {"markdown": "results/quick/README.md", "measured_by": "benchmarks/time_make.py --target quick",
             "command": "time make quick", "commit": "abc1234", "cpus": 2, "real_seconds": 486.873,
             "user_seconds": 756.029, "sys_seconds": 29.133}
    assert timings.markdown_figures(time_make.quick_markdown(quick, 386.1)) == pytest.approx(
        timings.copied_figures(quick))
    assert time_make.SUMMARY.findall("== 481 passed, 2 skipped, 3 warnings in 402.50s (0:06:42) ==") == [
        ("481", "402.50")]


@pytest.mark.parametrize("name", sorted(_tables().BLOCKS))
def test_every_generated_block_is_regenerated_from_its_committed_source(name):
    text = _page(name)
    assert _tables().regenerated(text, name) == text, f"block {name} is stale: run python benchmarks/render"


def test_the_check_passes_on_the_committed_pages():
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render"), "--check"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_the_tuned_block_shows_what_the_file_holds():
    readme = _page("tuned-results")
    results = json.loads((ROOT / "results" / "tuned" / "results.json").read_text())
    for task in results["summary"]["tasks"].values():
        for method, entry in task["methods"].items():
            if entry["chosen_lr"] is not None:
                assert f"| {method} | {entry['chosen_lr']:.3g} | {entry['test']['mean']:.3f} ± " in readme


def _speed_row(speed, model, r, cell):
    return next(row for row in speed["rows"] if (row["model"], row["r"], row["cell"]) == (model, r, cell))


def _fit_cell(fit, model, rank, cell):
    return next(r for r in fit["runs"] if (r["model"], r["rank"], r["cell"], r["device"]) == (model, rank, cell, "cpu"))


def _gpu_cell(gpu, cell, targets):
    return next(c for c in gpu["cells"] if (c["cell"], c["targets"]) == (cell, targets))


def _v_proj_0(geometry):
    return geometry["models"]["smollm2"]["per_matrix"]["model.layers.0.self_attn.v_proj"]


CHANGES = {  # block -> (change one number in its loaded sources, a row the README then shows)
    "factor-geometry": (lambda geometry: _v_proj_0(geometry).update(subspace=7.7e-5),
                        "7.7e-5), and their product is the optimum's"),
    "fit-benchmark": (lambda fit: _fit_cell(fit, "minilm", 8, "adam-batched").update(seconds=90.9),
                      "| `adam` batched, 20k steps (s) — speed-up | 91 — 4.1× | 118 — 3.1× |"),
    "fit-reading": (lambda fit, scale: _fit_cell(fit, "minilm", 8, "adam-batched").update(seconds=90.9),
                    "— 4.1–6.5× faster at r = 8 and 3.1–3.2× at r = 32"),
    "untuned-results": (lambda full: full["summary"]["reviews"]["rows"]["lora"].update(accuracy=[0.5, 0.01]),
                        "| lora | 0.500 ± 0.010 | 0.100 ± 0.010 |"),
    "scale-7b": (lambda scale, fit: scale["matrices"]["attn 4096x4096"]["svd"].update(seconds_median=1.111),
                 "| 4096×4096 | 1.11 s | 0.18 s |"),
    "quant-error": (lambda quant: quant["rows"][1]["summary"]["mean"].__setitem__(0, 0.5),
                    "| MiniLM q/v (12) | 1.0000 | 0.5000 | 1.0000 |"),
    "quant-reading": (lambda quant: quant["rows"][1]["summary"]["mean"].__setitem__(0, 0.85),
                      "PiSSA and IniLoRA remove 7–15% of the 4-bit error"),
    "quant-finetune": (lambda data: data["summary"][0].update(eval_loss_mean=0.7), "QLoRA 0.7000 ± 0.0048"),
    "sharded-fit": (lambda sharded: sharded["runs"]["2"][1].update(seconds=14.1),
                    "Two processes fit SmolLM2-135M's q/v 1.92× faster than one"),
    "init-drift": (lambda drift: drift["rows"][1].update(max_layer_drift=3.3e-8),
                   "| pissa | 3.3e-8 | 3.8e-6 / 1.3e-4 |"),
    "try-it": (lambda speed, fit, tuned: _fit_cell(fit, "smollm2", 8, "adam-batched").update(seconds=412.3),
               "412 s for SmolLM2-135M's 60 on one CPU thread"),
    "choosing": (lambda fit, speed, tuned, quant: _speed_row(speed, "4096x4096", 16, "svd vs pissa").update(
        inilora_seconds=[9.5]), "s vs 9.50 s at 4096², r = 16"),
    "quick-run": (lambda quick, at_tuned_lr, tuned, timing: timing.update(real_seconds=500.2),
                  "installing included: 8 min 20 s, of which"),
    "test-suite": (lambda suite: suite.update(real_seconds=401.2), "6 min 41 s in all"),
    "gpu": (lambda gpu, fit, cpu_fit: _gpu_cell(gpu, "inilora svd", "q/v").update(seconds=33.5),
            "`svd` initializes the 64 q/v matrices in 33.5 s, 0.50× the time of"),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_changed_number_in_a_source_changes_its_readme_block(name):
    tables = _tables()
    readme = _page(name)
    change, row = CHANGES[name]
    sources = tables.load_sources(name)
    assert row not in readme
    change(*sources)
    fresh = tables.regenerated(readme, name, sources)
    assert row in fresh and fresh != readme
    begin, end = tables.markers(name)  # only that block changed
    assert fresh[:fresh.index(begin)] == readme[:readme.index(begin)]
    assert fresh[fresh.index(end):] == readme[readme.index(end):]


def test_a_declared_reading_turned_worse_in_the_results_shows_in_the_verdict():
    """Whichever tasks the committed results hold: the first MiniLM task on which `inilora-beta` vs `lora` does not
    read "worse", given the figures of a clear loss, is named among that comparison's "worse" tasks, one more
    than before, and nothing outside the verdict's block changes."""
    tables = _tables()
    readme = _page("verdict")
    (tuned,) = sources = tables.load_sources("verdict")
    metrics = {task: entry["metric"] for task, entry in tuned["summary"]["tasks"].items()}
    task, row = next((task, row) for task, rows in tuned["declared"].items() for row in rows
                     if metrics[task] == "accuracy" and row["comparison"] == "inilora-beta vs lora"
                     and row["n"] >= 5 and row["reading"] != "worse")

    def worse(text):
        line = next(line for line in text.splitlines() if "`inilora-beta`: better on" in line)
        count, names = re.search(r"worse on (\d+)(?: \(([^)]*)\))?", line).groups()
        return int(count), (names or "").split(", ")

    count, names = worse(readme)
    assert task not in names
    row.update(delta=-0.05, ci95=[-0.07, -0.03], ci90=[-0.065, -0.035], ci95_two_level=[-0.08, -0.02],
               ci90_two_level=[-0.075, -0.025], p=1e-4, p_holm=1e-3, reading="worse")
    fresh = tables.regenerated(readme, "verdict", sources)
    assert worse(fresh)[0] == count + 1 and task in worse(fresh)[1]
    begin, end = tables.markers("verdict")
    assert fresh[:fresh.index(begin)] == readme[:readme.index(begin)]
    assert fresh[fresh.index(end):] == readme[readme.index(end):]


def test_the_untuned_reading_refuses_figures_that_no_longer_fit_its_words():
    tables = _tables()
    readme = _page("untuned-reading")
    full, fit = tables.load_sources("untuned-reading")
    for run in full["runs"]:  # PiSSA no longer above LoRA on every seed
        if (run["task"], run["method"], run["seed"]) == ("reviews", "pissa", 2):
            run["metrics"]["accuracy"] = 0.70
    with pytest.raises(ValueError, match="PiSSA gains on every seed"):
        tables.regenerated(readme, "untuned-reading", [full, fit])


def _shift_finals(tuned, task, method, by):
    test = tuned["summary"]["tasks"][task]["methods"][method]["test"]
    test["values"] = [v + by for v in test["values"]]


def _declared_row(tuned, task, comparison):
    return next(row for row in tuned["declared"][task] if row["comparison"] == comparison)


def _tuned_lora(tuned):
    return tuned["summary"]["tasks"]["reviews"]["methods"]["lora"]


REFUSALS = {  # block -> (a change to its loaded sources that makes its words false, the claim the error names)
    "factor-geometry": (lambda geometry: _v_proj_0(geometry).update(mixing=0.95), "not the singular basis"),
    "init-drift": (lambda drift: next(row for row in drift["rows"] if (row["model"], row["dtype"], row["method"])
                                      == ("smollm2", "bfloat16", "inilora")).update(max_output_diff=2.5),
                   "outside bf16's noise"),
    "quant-reading": (lambda quant: quant["rows"][4]["summary"]["mean"].__setitem__(0, 0.9), "IniLoRA-α/β add error"),
    "quant-finetune": (lambda data: data["runs"][0].update(accuracy=0.7), "every run stays at the majority class"),
    "choosing": (lambda fit, speed, tuned, quant: _speed_row(speed, "4096x11008", 16, "svd_randomized vs pissa_niter_4").update(
        inilora_seconds=[99.0]), "svd_randomized faster than the closed form at 7B shapes"),
    "try-it": (lambda speed, fit, tuned: _shift_finals(tuned, "reviews", "inilora:adam", 0.3),
               "neither fit shown better than the other on any task"),
    "tuned-results": (lambda tuned: _declared_row(tuned, "reviews", "inilora-alpha vs lora").update(
        reading="equivalent"), "its figures give 'inconclusive'"),
    "sharded-fit": (lambda sharded: sharded["runs"]["2"][0].update(fitted_by_rank=[0]),
                    "both processes fitted a share"),
    "quick-run": (lambda quick, at_tuned_lr, tuned, timing: _tuned_lora(tuned).update(chosen_lr=0.002),
                  "the rate the tuned benchmark chose"),
    "gpu": (lambda gpu, fit, cpu_fit: _gpu_cell(gpu, "peft pissa", "q/v").update(seconds=10.0),
            "svd faster than PEFT's pissa at 7B"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_block_refuses_figures_that_no_longer_fit_its_words(name):
    tables = _tables()
    change, claim = REFUSALS[name]
    sources = tables.load_sources(name)
    change(*sources)
    with pytest.raises(ValueError, match=claim):
        tables.regenerated(_page(name), name, sources)


def test_the_choosing_advice_refuses_a_tuned_verdict_that_favours_an_inilora_variant():
    tables = _tables()
    readme = _page("choosing")
    fit, speed, tuned, quant = tables.load_sources("choosing")
    for name, rows in tuned["declared"].items():  # inilora:svd now better than lora on every task
        lower = tuned["summary"]["tasks"][name]["metric"] == "eval_loss"
        for row in rows:
            if row["comparison"] == "inilora:svd vs lora":
                row.update(p_holm=0.001, delta=-0.05 if lower else 0.05, reading="better")
    with pytest.raises(ValueError, match="no IniLoRA variant reliably beats plain lora"):
        tables.regenerated(readme, "choosing", [fit, speed, tuned, quant])


def test_a_results_markdown_is_rendered_from_its_json():
    tables = _tables()
    sources = tables.load_sources("fit-benchmark-md")
    _fit_cell(sources[0], "minilm", 8, "adam-batched").update(seconds=90.9)
    fresh = tables.regenerated(_page("fit-benchmark-md"), "fit-benchmark-md", sources)
    assert "| minilm | 8 | adam-batched | 90.90 |" in fresh and fresh != _page("fit-benchmark-md")


def test_the_4bit_verdict_says_it_has_not_run_then_reads_the_arm_in_the_main_verdicts_words():
    """The 4-bit arm's blocks: plainly not run while results/tuned_4bit has no results.json (no figure), then
    its declared rows counted as the main verdict counts them, and the advice the rule for each gives."""
    _tables()
    from render import tuned_4bit

    from inilora.experiments.bench.verdict import declared_family, declared_verdict

    quant = json.loads((ROOT / "results" / "quant_error.json").read_text())
    if not (ROOT / tuned_4bit.OUT / "results.json").is_file():
        assert "It has not been run" in _page("verdict-4bit") and "it has not been run" in _page("quant-advice")
    assert not re.search(r"\d\.\d{3}", tuned_4bit.verdict(None))  # no figure while nothing was run
    seeds = [0, 1, 2, 3, 4]
    values = {"lora": [0.80, 0.81, 0.79, 0.80, 0.82], "inilora:svd": [0.83, 0.85, 0.82, 0.84, 0.84],
              "pissa": [0.81, 0.80, 0.80, 0.82, 0.81]}
    methods = {m: {"test": {"seeds": seeds, "values": v}, "error_ratio": {"mean": r}}
               for (m, v), r in zip(values.items(), (1.0, 0.924, 0.924))}
    rows = declared_verdict(methods, seeds=5, margin=0.01, comparisons=declared_family("tuned-4bit")[0])
    results = {"summary": {"tasks": {"reviews": {"model": "minilm", "metric": "accuracy", "methods": methods}}},
               "declared": {"reviews": rows}, "runs": []}
    verdict = tuned_4bit.verdict(results)
    assert "4-bit IniLoRA vs QLoRA: better on 1 of 1 tasks (reviews), worse on 0" in verdict
    assert "4-bit PiSSA vs QLoRA: better on 0 of 1 tasks, worse on 0, equivalent within the margin on 0, " \
           "inconclusive on 1" in verdict
    advice = tuned_4bit.advice(results, quant)
    assert "4-bit IniLoRA beat QLoRA on every task measured (reviews): switch to it" in advice
    assert "4-bit PiSSA was not shown better or worse than QLoRA (1 of 1 tasks inconclusive)" in advice
    assert "QLoRA 1.000, 4-bit IniLoRA 0.924, 4-bit PiSSA 0.924" in advice
    others = [task for task in tuned_4bit.ARM["tasks"] if task != "reviews"]  # not read yet: named as running
    assert f"Read so far on reviews; {tuned_4bit.listed(others)} are still running" in verdict
    assert "so far only reviews, the rest still running" in advice
    for task in others:  # every task of the arm read: no such clause
        results["summary"]["tasks"][task] = results["summary"]["tasks"]["reviews"]
        results["declared"][task] = rows
    assert "still running" not in tuned_4bit.verdict(results) + tuned_4bit.advice(results, quant)
    assert f"better on {len(others) + 1} of {len(others) + 1} tasks" in tuned_4bit.verdict(results)
    rows[0].update(reading="worse")  # a word its figures contradict: refused
    with pytest.raises(ValueError, match="the report says 'worse'"):
        tuned_4bit.verdict(results)


def test_a_table_made_by_older_solvers_says_so_until_it_is_made_again():
    _tables()
    from inilora.methods import REGISTRY
    from render import scale

    result = json.loads((ROOT / "results/scale_7b.json").read_text())
    result["provenance"]["init_versions"]["inilora"]["svd"] = 1
    assert "`svd` version 1 then" in scale.superseded(result)
    result["provenance"]["init_versions"]["inilora"] = {
        solver: REGISTRY["inilora"].init_version(solver) or 1 for solver in ("svd", "svd_randomized")}
    assert scale.superseded(result) == "" and "older solvers" not in scale.results_markdown(result)


def test_the_verdict_says_it_is_pending_while_its_aggregate_is_not_of_the_preset_s_tasks():
    _tables()
    from inilora.experiments.bench.plan import preset
    from render import advice

    tuned = json.loads((ROOT / "results/tuned/results.json").read_text())
    current = [suite.task for suite in preset("tuned")[0]]
    tasks = tuned["summary"]["tasks"]
    if set(tasks) != set(current):  # the committed aggregate predates the task change
        assert advice.pending(tuned).startswith("**Pending reruns.**")
    read = {task for kinds in advice.counted_readings(tuned, advice.FINAL_SEEDS).values()
            for tasks in kinds.values() for task in tasks}
    name = next(task for task in tasks if task in read)  # a task every declared comparison reads
    tuned["summary"]["tasks"] = {task: tasks[name] for task in current}
    tuned["declared"] = {task: copy.deepcopy(tuned["declared"][name]) for task in current}
    assert advice.pending(tuned) == ""
    for row in tuned["declared"][current[-1]]:  # one task short of its final seeds: still running, not counted
        row.update(n=advice.FINAL_SEEDS - 1)
    assert advice.pending(tuned).startswith(f"**Still running.** {current[-1]} has not yet every declared comparison")
    assert f"({len(current) - 1} of {len(current)} tasks have all)" in advice.pending(tuned)
    assert f" of {len(current) - 1} tasks" in advice.verdict(tuned).split("Against plain")[1]
    tuned["summary"]["tasks"]["hyperbaton"] = tasks[name]
    assert "counts hyperbaton (no longer part of the preset) and lacks no task" in advice.pending(tuned)

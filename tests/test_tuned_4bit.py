"""The tuned preset's 4-bit arm (``--preset tuned-4bit``) end to end on a tiny BERT: QLoRA, 4-bit IniLoRA and
4-bit PiSSA by the tuned protocol, each start's nf4 error ratio recorded at init, the arm's declared family,
the gap to full-precision lora read from the tuned results beside it (or said missing), the scatter, a resume
that redoes nothing."""

import json
import shlex

import pytest

import tiny
from inilora.experiments import bench
from inilora.experiments.bench import tuned_preset
from inilora.experiments.bench.verdict import declared_family

ARM_FAMILY = ["inilora:svd vs lora", "pissa vs lora", "inilora:svd vs pissa"]


def test_the_4bit_arm_is_the_tuned_protocol_with_its_own_methods_tasks_and_family():
    suites, methods = bench.preset("tuned-4bit")
    full_suites, _ = bench.preset("tuned")
    assert methods == ("lora", "inilora:svd", "inilora:svd+loftq", "pissa")
    assert [s.name for s in suites] == ["reviews", "courses", "tweets"] and all(s.full is None for s in suites)
    for suite in suites:  # each task as the full-precision preset has it, on an nf4 residual
        plain = next(s for s in full_suites if s.name == suite.name)
        assert suite.config == {**plain.config, "quantize": "nf4"}
        assert (suite.n_train, suite.n_eval, suite.validation) == (plain.n_train, plain.n_eval, plain.validation)
        assert bench.RunSpec(suite, "inilora:svd+loftq", 0, lr=1e-3).config()["quant_iters"] == 5
        assert "quant_iters" not in bench.RunSpec(suite, "inilora:svd", 0, lr=1e-3).config()
    assert tuned_preset.protocols("tuned-4bit") == tuned_preset.protocols("tuned")  # the protocol, defined once
    assert tuned_preset.first_methods("tuned-4bit") == methods
    comparisons, margins = declared_family("tuned-4bit")
    assert [" vs ".join(c) for c in comparisons] == ARM_FAMILY and margins == declared_family("tuned")[1]
    assert bench.method_and_solver("inilora:svd+loftq") == ("inilora", "svd")
    with pytest.raises(ValueError, match="names a variant its preset does not define"):
        bench.RunSpec(suites[0], "pissa+loftq", 0, lr=1e-3).config()


def test_the_arm_reads_its_own_family_with_holm_within_it():
    """The full-precision verdict's machinery over the arm's three comparisons: Holm's correction is applied
    within those three, not the tuned preset's six."""
    from inilora.experiments.bench.tuning import holm
    from inilora.experiments.bench.verdict import declared_verdict

    seeds = [0, 1, 2, 3, 4]
    values = {"lora": [0.80, 0.81, 0.79, 0.80, 0.82], "inilora:svd": [0.83, 0.85, 0.82, 0.84, 0.84],
              "pissa": [0.81, 0.80, 0.80, 0.82, 0.81]}
    methods = {m: {"test": {"seeds": seeds, "values": v}} for m, v in values.items()}
    comparisons, margins = declared_family("tuned-4bit")
    rows = declared_verdict(methods, seeds=5, margin=margins["accuracy"], comparisons=comparisons)
    assert [row["comparison"] for row in rows] == ARM_FAMILY
    assert {row["comparison"]: row["p_holm"] for row in rows} == holm({row["comparison"]: row["p"] for row in rows})
    assert rows[0]["delta"] == pytest.approx(0.032) and rows[0]["reading"] == "better"


def test_refits_lower_the_start_error_on_a_tiny_bert(tmp_path):
    """The variant row reaches the initialization: its recorded error ratio is below the closed form's, which
    is below QLoRA's exact 1, and PiSSA's product (the same optimum) has the closed form's ratio."""
    from inilora.experiments import models, train
    from inilora.experiments.train.trainer import prepare_model

    bert = tiny.bert_folder(tmp_path / "bert")
    data = tiny.write_jsonl(tmp_path / "toy.jsonl", tiny.sentiment_rows(20))
    suite = bench.custom_suite("tuned-4bit", "toy", str(bert), train_file=str(data))
    task, _ = suite.load()
    ratios = {}
    for row in ("lora", "inilora:svd", "inilora:svd+loftq", "pissa"):
        method, solver = bench.method_and_solver(row)
        config = bench.RunSpec(suite, row, 0, lr=1e-3).config()
        cfg = train.TrainConfig(method=method, solver=solver if train.config.has_fit(method) else None,
                                progress=False, **config)
        _, init = prepare_model(str(bert), task, cfg, models.load_tokenizer(str(bert)))
        ratios[row] = init["quant_ratio"]
    assert ratios["lora"] == 1.0
    assert ratios["inilora:svd+loftq"] < ratios["inilora:svd"] < 1.0
    assert ratios["pissa"] == pytest.approx(ratios["inilora:svd"], rel=1e-4)


def test_the_4bit_arm_end_to_end_from_the_command_line(tmp_path, capsys):
    from inilora import cli
    from inilora.experiments.bench.arm import SCATTER

    bert = tiny.bert_folder(tmp_path / "bert")
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(60))
    test = tiny.write_jsonl(tmp_path / "test.jsonl", tiny.sentiment_rows(20, seed=1))
    out = tmp_path / "tuned_4bit"
    methods = ("lora", "inilora:svd")  # a spawned run costs ~10 CPU s of imports: pissa and the refits' row are above
    argv = ["bench", "--preset", "tuned-4bit", "--model", str(bert), "--train-file", str(train), "--eval-file",
            str(test), "--methods", ",".join(methods), "--max-steps", "4", "--batch-size", "8", "--max-len", "32",
            "--tuning", "lr_grid=[1e-3, 1e-2]", "--tuning", "tune_seeds=[0]", "--tuning", "final_seeds=[0, 1]",
            "--tuning", "max_extensions=0", "--tuning", "refine=false", "--out", str(out)]
    assert cli.main([*argv, "--jobs", "2"]) == 0
    runs = [json.loads(path.read_text()) for path in sorted(out.glob("runs/train/*/lr*/seed*.json"))]
    assert len(runs) == 2 * 3  # per method: 2 rates at seed 0, then seed 1 at the chosen one
    assert all(r["spec"]["config"]["quantize"] == "nf4" and r["init"]["quantize"] == "nf4" for r in runs)
    ratio = {r["method"]: r["init"]["quant_ratio"] for r in runs}
    assert ratio["lora"] == 1.0 and ratio["inilora:svd"] < 1.0  # QLoRA's start is QLoRA's error, exactly
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arm"]["preset"] == "tuned-4bit" and summary["arm"]["quantize"] == "nf4"
    task = summary["tasks"]["train"]
    (row,) = task["declared"]  # of the arm's family, the comparison whose two methods ran
    assert row["comparison"] == ARM_FAMILY[0] and row["p_holm"] == row["p"]  # Holm over a family of one
    assert row["margin"] == 0.01 and row["reading"] in ("better", "worse", "equivalent", "inconclusive")
    for method in methods:
        entry = task["methods"][method]
        assert entry["test"]["seeds"] == [0, 1] and entry["error_ratio"]["seeds"] == [0, 1]
        assert entry["gap_to_reference"] is None
    assert task["methods"]["lora"]["error_ratio"]["values"] == [1.0, 1.0]
    assert task["reference"]["missing"].startswith("no counted full-precision lora run of this task in")
    assert str(tmp_path / "tuned") in task["reference"]["folder"]
    png = out / SCATTER
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "Reference missing" in (out / "results.md").read_text()
    # the recorded command reproduces it: run again, nothing is redone
    command = shlex.split(summary["command"])
    assert command[:4] == ["inilora", "bench", "--preset", "tuned-4bit"]
    capsys.readouterr()
    assert cli.main([*command[1:], "--no-plots"]) == 0
    assert "about 6 runs on 1 task(s), 6 already done, 0 to go" in capsys.readouterr().err
    assert len(list(out.glob("runs/train/*/lr*/seed*.json"))) == 6
    # a full-precision reference beside it: QLoRA's runs as if made in fp32, each test accuracy 0.25 lower
    for record in (r for r in runs if r["method"] == "lora"):
        fp32 = {**record, "spec": {**record["spec"], "config": {k: v for k, v in record["spec"]["config"].items()
                                                                if k != "quantize"}},
                "test": {**record["test"], "metric": record["test"]["metric"] - 0.25}}
        path = tmp_path / "tuned" / "runs" / "train" / "lora" / f"lr{record['lr']:.3g}" / f"seed{record['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fp32))
    assert cli.main([*command[1:], "--aggregate-only", "--no-plots"]) == 0
    task = json.loads((out / "summary.json").read_text())["tasks"]["train"]
    assert "missing" not in task["reference"] and task["reference"]["test"]["seeds"] == [0, 1]
    assert task["methods"]["lora"]["gap_to_reference"]["delta"] == pytest.approx(0.25)
    gap = task["methods"]["inilora:svd"]["gap_to_reference"]  # its gap to fp32: its Δ to QLoRA plus QLoRA's
    assert gap["n"] == 2 and gap["delta"] == pytest.approx(task["declared"][0]["delta"] + 0.25)

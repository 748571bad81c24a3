"""The `inilora` command line on a tiny model and tiny data files: train, eval, bench, and bad input."""

import json
import os
import subprocess
import sys

import pytest

import tiny
from inilora import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {
        "root": root,
        "model": tiny.bert_folder(root / "bert"),
        "train": tiny.write_jsonl(root / "train.jsonl", tiny.sentiment_rows(64)),
        "eval": tiny.write_jsonl(root / "eval.jsonl", tiny.sentiment_rows(24, seed=1)),
    }


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv", [[], ["train"], ["init"], ["eval"], ["bench"]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: inilora" in capsys.readouterr().out


def test_train_then_eval(files, capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run(capsys, "train", "--model", files["model"], "--train-file", files["train"], "--eval-file",
                          files["eval"], "--method", "inilora", "--solver", "svd", "--targets", "query,key,value,dense",
                          "--lr", "3e-2", "--epochs", "4", "--batch-size", "8", "-o", out, "--quiet")
    assert code == 0
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert metrics["method"] == "inilora" and metrics["steps"] == 32 and metrics["accuracy"] >= 0.9
    assert (out / "adapter" / "inilora_config.json").is_file() and (out / "adapter-lora").is_dir()
    code, stdout, _ = run(capsys, "eval", out, "--train-file", files["train"], "--eval-file", files["eval"], "--json")
    assert code == 0 and json.loads(stdout)["accuracy"] == pytest.approx(metrics["accuracy"])


def test_bench_runs_resumes_and_reports(files, capsys, tmp_path):
    argv = ["bench", "--model", files["model"], "--train-file", files["train"], "--eval-file", files["eval"],
            "--methods", "lora,inilora-alpha", "--seeds", "2", "--max-steps", "3", "--jobs", "2", "--out", tmp_path]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert "4 to run" in err and "| inilora-alpha | 2 |" in stdout
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert sorted((r["method"], r["seed"]) for r in runs) == [("inilora-alpha", 0), ("inilora-alpha", 1),
                                                             ("lora", 0), ("lora", 1)]
    assert all(r["metrics"]["steps"] == 3 and r["loss_history"] and r["config"]["r"] == 8 for r in runs)
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000 and (tmp_path / "final_metrics.png").is_file()
    code, _, err = run(capsys, *argv)  # resumable: nothing is redone
    assert code == 0 and "4 already done, 0 to run" in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "{model}", "--task", "reviews"], "required: --output-dir"),
    (["train", "--model", "{model}", "-o", "{tmp}", "--train-file", "{train}", "--r", "0"],
     "argument --r: expected a positive integer, got '0'"),
    (["train", "--model", "{model}", "-o", "{tmp}", "--train-file", "{train}", "--method", "dora"],
     "argument --method: invalid choice: 'dora'"),
    (["train", "--model", "{model}", "-o", "{tmp}", "--train-file", "{train}", "--task", "reviews"],
     "not allowed with argument"),
    (["train", "--model", "{model}", "-o", "{tmp}", "--train-file", "{bad}"], "bad.jsonl:2: not valid JSON"),
    (["train", "--model", "{model}", "-o", "{tmp}", "--train-file", "{tmp}/missing.csv"], "missing.csv does not exist"),
    (["train", "--model", "{tmp}/nomodel", "-o", "{tmp}", "--train-file", "{train}"], "nor a local folder"),
    (["train", "--model", "{model}", "-o", "{tmp}", "--train-file", "{train}", "--targets", "q_proj"],
     "No module matches target_modules"),
    (["train", "--model", "{model}", "-o", "{tmp}", "--task", "sst2"], "Unknown task 'sst2'"),
    (["eval", "{tmp}"], "not an output folder of `inilora train`"),
    (["bench", "--methods", "lora,qlora"], "unknown method(s) qlora"),
    (["bench", "--methods", "lora,pissa:adam"], "method 'pissa:adam': pissa cannot use solver 'adam' (it has no fit"),
    (["bench", "--methods", "lora:svd"], "method 'lora:svd': lora cannot use solver 'svd'"),
    (["bench", "--methods", "inilora:Adam"], "its solvers are adam, svd, svd_randomized"),
    (["bench", "--tasks", "mnli"], "unknown task(s) mnli for preset full"),
    (["bench", "--train-file", "{train}"], "needs --model"),
    (["bench", "--aggregate-only", "--out", "{tmp}"], "no finished runs"),
    (["bench", "--quick", "--preset", "full"], "--quick is the quick preset"),
    (["fit"], "invalid choice: 'fit'"),
])
def test_bad_input_is_one_line(files, capsys, tmp_path, argv, message):
    bad = files["root"] / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": "pos"}\n{"text": oops}\n')
    argv = [a.format(model=files["model"], tmp=tmp_path, train=files["train"], bad=bad) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(cli.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "error:" in err[0], err


def test_a_real_process_prints_no_traceback(files, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nonly one class,x\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "inilora.cli", "train", "--model", str(files["model"]), "-o",
                           str(tmp_path / "o"), "--train-file", str(bad)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("classification needs at least two classes.")


def test_training_options_are_generated_from_train_config():
    import dataclasses

    from inilora.experiments.train import TrainConfig

    args = cli.build_parser().parse_args(["train", "--model", "m", "-o", "o", "--task", "reviews", "--r", "4",
                                          "--max-steps", "7", "--quiet", "--targets", "q,v"])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    assert given == {"r": 4, "max_steps": 7, "progress": False, "targets": ["q", "v"]}  # defaults stay in TrainConfig
    cfg = TrainConfig(**given)
    assert cfg.lr == TrainConfig().lr and cfg.r == 4
    helps = {a.dest: a.help for a in cli.build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    documented = [f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("help")]
    assert all(TrainConfig.__dataclass_fields__[name].metadata["help"] in helps[name] for name in documented)

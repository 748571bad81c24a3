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


def test_eval_of_a_train_file_run_rebuilds_its_split_or_takes_other_data(files, capsys, tmp_path, monkeypatch):
    """A run trained on --train-file alone (10% held out) evaluates again with no data given (its files are
    recorded with absolute paths, the same split is rebuilt), and on --eval-file alone (other data)."""
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--model", files["model"], "--train-file", files["train"], "--method",
                            "inilora", "--solver", "svd", "--lr", "3e-2", "--max-steps", "6", "--batch-size", "8",
                            "-o", out, "--quiet")
    assert code == 0, err
    trained = json.loads(stdout.strip().splitlines()[-1])
    assert trained["n_eval"] == 6 and trained["n_train"] == 58
    recorded = json.loads((out / "inilora_train.json").read_text())["files"]
    assert recorded["train_file"] == str(files["train"].resolve()) and recorded["eval_file"] is None
    monkeypatch.chdir(tmp_path)  # the recorded paths are absolute: eval works from anywhere
    code, stdout, err = run(capsys, "eval", out, "--json")
    assert code == 0, err
    again = json.loads(stdout)
    assert again["n_eval"] == 6 and again["accuracy"] == pytest.approx(trained["accuracy"])
    assert again["eval_loss"] == pytest.approx(trained["eval_loss"], rel=1e-4)
    code, stdout, err = run(capsys, "eval", out, "--eval-file", files["eval"], "--json")
    other = json.loads(stdout)
    assert code == 0 and other["n_eval"] == 24  # the other file's examples, not the held-out 6
    code, stdout, _ = run(capsys, "eval", out, "--train-file", files["train"], "--eval-file", files["eval"], "--json")
    assert json.loads(stdout) == pytest.approx(other)


def test_eval_json_of_a_generation_run_is_only_json(capsys, tmp_path):
    model = tiny.llama_folder(tmp_path / "llama")
    data = tiny.write_jsonl(tmp_path / "answers.jsonl", tiny.answer_rows(20))
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--model", model, "--train-file", data, "--method", "lora", "--max-steps", "2",
                       "--batch-size", "4", "-o", out, "--quiet")
    assert code == 0, err
    code, stdout, err = run(capsys, "eval", out, "--json", "--max-new-tokens", "3")
    assert code == 0, err
    metrics = json.loads(stdout)  # the whole of stdout: no Trainer dict before it
    assert metrics["n_eval"] == 2 and 0 <= metrics["exact_match"] <= 1 and metrics["eval_loss"] > 0


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
    (["train", "--model", "{tmp}/nomodel", "-o", "{tmp}", "--train-file", "{train}"], "nor a hub id (org/name)"),
    (["train", "--model", "{model}", "-o", "{tmp}", "--train-file", "{train}", "--targets", "q_proj"],
     "No module matches target_modules"),
    (["train", "--model", "{model}", "-o", "{tmp}", "--task", "sst2"], "Unknown task 'sst2'"),
    (["eval", "{tmp}"], "not an output folder of `inilora train`"),
    (["bench", "--methods", "lora,qlora"], "unknown method(s) qlora"),
    (["bench", "--methods", "lora,inilora"], "method 'inilora' is ambiguous in a benchmark: name its solver, "
     "inilora:svd"),
    (["eval", "{tmp}", "--n-eval", "3"], "--n-train/--n-eval go with --task"),
    (["bench", "--methods", "lora,pissa:adam"], "method 'pissa:adam': pissa cannot use solver 'adam' (it has no fit"),
    (["bench", "--methods", "lora:svd"], "method 'lora:svd': lora cannot use solver 'svd'"),
    (["bench", "--methods", "inilora:Adam"], "its solvers are adam, svd, svd_randomized"),
    (["bench", "--tasks", "mnli"], "unknown task(s) mnli for preset full"),
    (["bench", "--train-file", "{train}"], "needs --model"),
    (["bench", "--aggregate-only", "--out", "{tmp}"], "no finished runs"),
    (["bench", "--quick", "--preset", "full"], "--quick is the quick preset"),
    (["fit"], "invalid choice: 'fit'"),
    (["bench", "--model", "{model}", "--train-file", "{train}", "--n-train", "10"],
     "--n-train/--n-eval apply to built-in tasks; your files are used whole"),
    (["init", "--model", "{model}", "-o", "{tmp}", "--quantize", "nf4"],
     "inilora init: error: unrecognized arguments: --quantize nf4 (see inilora init --help)"),
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


def test_deepspeed_s_no_gpu_notice_stays_off_stdout_in_inilora_s_programs():
    """With DeepSpeed installed (the test extra), transformers' Trainer imports it and it warns on stdout that
    no GPU was found — which broke `inilora eval --json`. The CLI and bench workers drop exactly that line."""
    pytest.importorskip("deepspeed")
    program = ("import sys; from inilora.experiments.quiet import drop_deepspeed_cpu_notice\n"
               "if sys.argv[1] == 'quiet': drop_deepspeed_cpu_notice()\n"
               "import transformers.trainer\n"
               "from deepspeed.accelerator import get_accelerator; get_accelerator()\n"
               "from deepspeed.utils import logger; logger.warning('another DeepSpeed warning')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("DS_ACCELERATOR", None)
    runs = {mode: subprocess.run([sys.executable, "-c", program, mode], capture_output=True, text=True, env=env,
                                 timeout=300) for mode in ("loud", "quiet")}
    assert all(run.returncode == 0 for run in runs.values()), runs["quiet"].stderr[-2000:]
    assert "Setting accelerator to CPU" in runs["loud"].stdout  # the line exists without the filter ...
    assert "Setting accelerator to CPU" not in runs["quiet"].stdout  # ... and is dropped with it
    assert "another DeepSpeed warning" in runs["quiet"].stdout  # DeepSpeed's other messages stay


# bitsandbytes' CPU backend warns at import, on a CPU with AVX512-BF16, that the optional `kernels` package
# is missing; this hook makes any CPU take that path (the warning is what a user on such a CPU sees)
AVX512_BF16 = """
import importlib.abc, importlib.util, sys
class AsIfAvx512Bf16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: True
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, AsIfAvx512Bf16())
"""


def test_no_third_party_noise_from_a_command():
    """Item 14: `inilora train --help` (and every command) prints nothing from bitsandbytes on stderr."""
    pytest.importorskip("bitsandbytes")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    loud = subprocess.run([sys.executable, "-c", AVX512_BF16 + "import bitsandbytes"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert "Failed to load CPU gemm_4bit_forward" in loud.stderr  # the hook reproduces the line ...
    program = AVX512_BF16 + "import runpy; sys.argv = ['inilora', 'train', '--help']\n" \
        "runpy.run_module('inilora.cli', run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "usage: inilora train" in proc.stdout
    assert proc.stderr == ""  # ... and the command drops it


def _train(capsys, files, out, *extra, train=None):
    return run(capsys, "train", "--model", files["model"], "--train-file", train or files["train"], "--method", "lora",
               "--max-steps", "2", "--batch-size", "8", "-o", out, "--quiet", *extra)


def test_eval_refuses_data_that_changed_and_other_labels_or_dtype(files, capsys, tmp_path):
    """Items 1, 12, 13: a run's files are recorded with their content digests; eval refuses to rebuild a held-out
    split from a file that changed, other class names, and a dtype its adapter cannot load onto."""
    data = tmp_path / "train.jsonl"
    data.write_text(files["train"].read_text())
    out = tmp_path / "run"
    code, stdout, err = _train(capsys, files, out, train=data)
    assert code == 0, err
    recorded = json.loads((out / "inilora_train.json").read_text())["data"]
    assert list(recorded["files"]) == [str(data.resolve())] and len(recorded["rows"]) == 16
    lines = data.read_text().splitlines()
    data.write_text("\n".join(reversed(lines)) + "\n")  # the same rows in another order: another held-out split
    code, stdout, err = run(capsys, "eval", out, "--json")
    assert code == 2 and stdout == "" and f"{data.resolve()} changed since {out} was trained on it" in err
    code, stdout, err = run(capsys, "eval", out, "--train-file", data, "--json")  # given explicitly: evaluated
    assert code == 0 and json.loads(stdout)["n_eval"] == 6, err
    names = {"pos": "good", "neg": "bad"}
    renamed = tiny.write_jsonl(tmp_path / "renamed.jsonl", [{**row, "label": names[row["label"]]}
                                                            for row in tiny.sentiment_rows(20)])
    code, _, err = run(capsys, "eval", out, "--train-file", renamed)
    assert code == 2 and "was trained with the classes neg, pos (in this order); 'renamed' has bad, good" in err
    code, _, err = run(capsys, "eval", out, "--train-file", data, "--dtype", "bfloat16")
    assert code == 2 and "holds an adapter made on a float32 base" in err and "--method full" in err
    assert "applies to a --method full run" in cli.build_parser().commands["eval"].format_help().replace("\n", " ")


def test_train_refuses_a_finished_run_unless_overwrite_and_then_leaves_no_mix(files, capsys, tmp_path):
    """Items 4 and 16: a finished run is not replaced silently; --overwrite removes what it wrote; `--method full`
    says that it wrote model/, not an adapter."""
    out = tmp_path / "run"
    assert _train(capsys, files, out)[0] == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = _train(capsys, files, out, "--method", "pissa")
    assert code == 2 and "holds a finished run (method lora, task train); pass --overwrite" in err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched
    code, _, err = _train(capsys, files, out, "--method", "full", "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["inilora_train.json", "metrics.json", "model"]
    assert err.strip().splitlines()[-1] == f"saved to {out}: model/ (transformers), metrics.json, inilora_train.json"
    code, _, err = _train(capsys, files, out, "--overwrite")
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["adapter", "adapter-lora", "inilora_train.json",
                                                                    "metrics.json"]
    assert "adapter/ (inilora.from_pretrained), adapter-lora/ (plain PEFT)" in err


def test_bench_redoes_runs_whose_data_changed_and_drops_old_plots(files, capsys, tmp_path):
    """Items 2, 6, 17: a bench run records a digest of its data; a changed eval file is named and its runs are
    redone; --no-plots removes an earlier report's plots; a custom benchmark trains with `inilora train`'s defaults."""
    from inilora.experiments.train import TrainConfig

    held = tmp_path / "ev.jsonl"
    held.write_text(files["eval"].read_text())
    argv = ["bench", "--model", files["model"], "--train-file", files["train"], "--eval-file", held, "--methods",
            "lora", "--seeds", "1", "--max-steps", "2", "--jobs", "1", "--out", tmp_path / "b"]
    code, _, err = run(capsys, *argv)
    assert code == 0 and "1 to run" in err and (tmp_path / "b" / "loss_curves.png").is_file(), err
    first = json.loads((tmp_path / "b" / "results.json").read_text())["runs"][0]
    defaults = TrainConfig()
    assert (first["config"]["lr"], first["config"]["max_len"], first["config"]["eval_batch_size"]) == (
        defaults.lr, defaults.max_len, defaults.eval_batch_size)
    flipped = [{**row, "label": {"pos": "neg", "neg": "pos"}[row["label"]]} for row in tiny.sentiment_rows(24, seed=1)]
    tiny.write_jsonl(held, flipped)
    code, _, err = run(capsys, *argv, "--no-plots")
    assert code == 0, err
    assert f"train: {held.resolve()} changed since 1 finished run(s); they will be redone" in err
    assert "0 already done, 1 to run" in err
    assert not list((tmp_path / "b").glob("*.png"))
    again = json.loads((tmp_path / "b" / "results.json").read_text())["runs"][0]
    assert again["test"]["metric"] == pytest.approx(1 - first["test"]["metric"], abs=1e-9)
    code, _, err = run(capsys, *argv, "--no-plots")
    assert code == 0 and "1 already done, 0 to run" in err


def test_help_offers_only_what_works_and_shows_the_defaults():
    """Items 11 and 17: no peft:NAME method on train/init, no `full` for init; bench's budget shows train's defaults."""
    import inilora
    from inilora.experiments.train import TrainConfig

    parser = cli.build_parser()
    helps = {name: parser.commands[name].format_help() for name in ("train", "init", "bench")}
    assert "peft:" not in helps["train"] and "peft:" not in helps["init"]
    method = {a.dest: a for a in parser.commands["init"]._actions}["method"]
    assert tuple(method.choices) == tuple(inilora.METHODS) and "full" not in method.help
    assert f"learning rate (default: {TrainConfig.lr})" in helps["bench"]
    assert f"(default: {TrainConfig.max_len})" in helps["bench"]
    assert "load_in_4bit" in helps["init"]  # where a 4-bit residual comes from, since init writes full precision


def test_a_file_that_is_not_utf8_is_named_with_its_line(files, capsys, tmp_path):
    """Item 17: the encoding error names the file and the line, as every other data error does."""
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes(b'{"text": "fine", "label": "pos"}\n{"text": "ok", "label": "neg"}\n{"text": "caf\xe9", '
                    b'"label": "pos"}\n')
    code, _, err = run(capsys, "train", "--model", files["model"], "--train-file", bad, "-o", tmp_path / "o")
    assert code == 2 and f"{bad}:3: not UTF-8 text" in err and not (tmp_path / "o").exists()


def test_eval_refuses_a_built_in_task_whose_rows_changed(files, capsys, tmp_path, monkeypatch):
    """Item 1 for a built-in task: its rows are recorded as a digest; a data source that now gives other rows
    (another package version, say) is refused instead of evaluated as if it were the held-out set."""
    from inilora.experiments import tasks

    out = tmp_path / "run"
    assert _train(capsys, files, out)[0] == 0
    trained = tasks.file_task(files["train"])
    info_path = out / "inilora_train.json"
    info = json.loads(info_path.read_text())
    info.update(task="toy", source="a built-in task", files={}, sizes={})  # as a built-in task's run records it
    info["data"] = {"files": {}, "rows": tasks.data_record(trained)["rows"]}
    info_path.write_text(json.dumps(info))
    monkeypatch.setattr(tasks, "load_task", lambda name, **sizes: tasks.Task(
        name, trained.kind, trained.train, trained.eval[::-1], trained.labels))  # the held-out rows reordered
    code, _, err = run(capsys, "eval", out, "--json")
    assert code == 2 and "task 'toy' now gives other examples than" in err
    monkeypatch.setattr(tasks, "load_task", lambda name, **sizes: tasks.Task(
        name, trained.kind, trained.train, trained.eval, trained.labels))  # the same rows: evaluated
    code, stdout, err = run(capsys, "eval", out, "--json")
    assert code == 0 and json.loads(stdout)["n_eval"] == len(trained.eval), err

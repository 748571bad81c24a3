"""`inilora init` on tiny model folders: both folders written, plain transformers + plain PEFT reproduce
the original model, the printed report, and bad input; `inilora train --quantize`."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

import tiny
from inilora import cli

ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("init")
    return {"llama": tiny.llama_folder(root / "llama"), "bert": tiny.bert_folder(root / "bert"),
            "train": tiny.write_jsonl(root / "train.jsonl", tiny.sentiment_rows(32))}


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("method, task_type, loader", [
    ("inilora", None, AutoModelForCausalLM),  # causal, from the config's LlamaForCausalLM
    ("pissa", "base", AutoModel),
])
def test_init_folders_load_with_plain_transformers_and_peft(folders, capsys, tmp_path, method, task_type, loader):
    out = tmp_path / "out"
    argv = ["init", "--model", folders["llama"], "--method", method, *(["--solver", "svd"] if method == "inilora" else []),
            "--r", "4", "--alpha", "8", "--targets", ALL_LINEAR, "--seed", "3", "-o", out, "--quiet"]
    code, stdout, err = run(capsys, *argv, *(["--task-type", task_type] if task_type else []))
    assert code == 0, err
    assert (out / "residual_model" / "config.json").is_file() and (out / "residual_model" / "tokenizer.json").is_file()
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert config["task_type"] == ("CAUSAL_LM" if task_type is None else None)

    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(0))
    original = loader.from_pretrained(str(folders["llama"]), dtype=torch.float32).eval()
    residual = loader.from_pretrained(str(out / "residual_model"), dtype=torch.float32)
    changed = sum(not torch.equal(p, q) for p, q in zip(original.state_dict().values(),
                                                        residual.state_dict().values()))
    assert changed == 14  # every target holds W - s*B0*A0, nothing else changed
    peft_model = PeftModel.from_pretrained(residual, str(out / "adapter"), is_trainable=True).eval()
    assert (logits(peft_model, ids) - logits(original, ids)).abs().max().item() <= 1e-5
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == 2 * 4 * (
        32 + 32 + 32 + 16 + 32 + 16 + 32 + 32 + 32 + 64 + 32 + 64 + 64 + 32)  # r*(in+out) per target, 2 layers

    lines = stdout.splitlines()
    assert lines[0].startswith(f"{method}" + (" (svd)" if method == "inilora" else "") + ": 14 layers")
    assert "... 6 more layers (--verbose shows all)" in stdout and len(lines) == 3 + 8 + 1
    code, stdout, _ = run(capsys, *argv, "--overwrite", "--verbose", *(["--task-type", task_type] if task_type else []))
    assert code == 0 and len(stdout.splitlines()) == 3 + 14


def test_init_defaults_a_classifier_folder_to_seq_cls(folders, capsys, tmp_path):
    code, _, err = run(capsys, "init", "--model", folders["bert"], "--method", "inilora", "--solver", "svd",
                       "-o", tmp_path, "--quiet")
    assert code == 0, err
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["target_modules"] and set(config["target_modules"]) == {
        "query", "value"}
    torch.manual_seed(0)  # the head is saved in both folders: the same one comes back
    original = AutoModelForSequenceClassification.from_pretrained(str(folders["bert"])).eval()
    peft_model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(
        str(tmp_path / "residual_model")), str(tmp_path / "adapter")).eval()
    ids = torch.randint(3, 100, (2, 10), generator=torch.Generator().manual_seed(0))
    assert (logits(peft_model, ids) - logits(original, ids)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("argv, message", [
    (["init", "--model", "{llama}"], "required: --output-dir"),
    (["init", "--model", "{llama}", "-o", "{tmp}", "--method", "full"], "argument --method: invalid choice: 'full'"),
    (["init", "--model", "{llama}", "-o", "{tmp}", "--r", "0"], "argument --r: expected a positive integer"),
    (["init", "--model", "{llama}", "-o", "{tmp}", "--task-type", "seq2seq"], "argument --task-type: invalid choice"),
    (["init", "--model", "{llama}", "-o", "{tmp}", "--dtype", "int8"], "argument --dtype: invalid choice"),
    (["init", "--model", "{tmp}/none", "-o", "{tmp}"], "nor a hub id"),
    (["init", "--model", "{llama}", "-o", "{tmp}", "--targets", "query"], "No module matches target_modules"),
    (["init", "--model", "{llama}", "-o", "{tmp}", "--method", "pissa", "--r", "64"], "r=64 is larger than layer"),
    (["init", "--model", "{used}", "-o", "{used}"], "already holds residual_model and adapter"),
    (["train", "--model", "{bert}", "-o", "{tmp}", "--train-file", "{train}", "--method", "full", "--quantize", "nf4"],
     "method 'full' has no adapter (use --method lora for QLoRA)"),
    (["train", "--model", "{bert}", "-o", "{tmp}", "--train-file", "{train}", "--quantize", "int8"],
     "argument --quantize: invalid choice: 'int8'"),
])
def test_bad_input_is_one_line(folders, capsys, tmp_path, argv, message):
    used = tmp_path / "used"
    for name in ("residual_model", "adapter"):
        (used / name).mkdir(parents=True)
    argv = [a.format(llama=folders["llama"], bert=folders["bert"], train=folders["train"], tmp=tmp_path, used=used)
            for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(cli.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "error:" in err[0], err
    assert not (tmp_path / "residual_model").exists()  # nothing written on a refusal


def test_train_quantize_stores_4bit_residuals(folders, capsys, tmp_path):
    pytest.importorskip("bitsandbytes")
    code, stdout, err = run(capsys, "train", "--model", folders["bert"], "--train-file", folders["train"],
                            "--method", "inilora", "--solver", "svd", "--quantize", "nf4", "--max-steps", "2",
                            "-o", tmp_path, "--quiet")
    assert code == 0, err
    assert json.loads(stdout.splitlines()[-1])["steps"] == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["init"]["layers"] == 4
    assert metrics["init"]["max_drift"] > 1e-3  # the stored residual is 4-bit: its rounding shows as drift
    assert json.loads((tmp_path / "inilora_train.json").read_text())["config"]["quantize"] == "nf4"

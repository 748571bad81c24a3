"""Trainer-based fine-tuning and evaluation on tiny models built from configs."""

import json
import math

import pytest
import torch
from peft import PeftModel

import tiny
from inilora.experiments import models, tasks
from inilora.experiments.train import TrainConfig, encode, evaluate, finetune
from inilora.experiments.train.trainer import evaluation_steps

BERT_ALL = ["query", "key", "value", "dense"]
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    bert, llama = tiny.bert_folder(root / "bert"), tiny.llama_folder(root / "llama")
    cls_task = tasks.file_task(tiny.write_jsonl(root / "cls.jsonl", tiny.sentiment_rows(96)),
                              tiny.write_jsonl(root / "cls_eval.jsonl", tiny.sentiment_rows(40, seed=1)))
    gen_task = tasks.file_task(tiny.write_jsonl(root / "gen.jsonl", tiny.answer_rows(64)),
                              tiny.write_jsonl(root / "gen_eval.jsonl", tiny.answer_rows(16, seed=1)))
    return {"bert": bert, "llama": llama, "cls": cls_task, "gen": gen_task}


def config(method="inilora", **kw):
    base = {"method": method, "solver": "svd" if method == "inilora" else None, "lr": 3e-2, "epochs": 4, "batch_size": 8, "logging_steps": 4,
            "progress": False}
    return TrainConfig(**{**base, **kw})


def test_answer_loss_is_the_models_own_loss_on_answer_tokens(folders):
    from transformers import AutoModelForCausalLM, TrainingArguments

    tokenizer = models.load_tokenizer(folders["llama"])
    model = AutoModelForCausalLM.from_pretrained(str(folders["llama"]))
    rows = [{"prompt": "what is 1 plus 2?", "answer": "3"}, {"prompt": "hi", "answer": "tea and coffee"}]
    encoded = encode.encode_generation(tokenizer, rows, max_len=64)
    assert encoded[1]["labels"][-1] == tokenizer.eos_token_id
    assert sum(t != -100 for t in encoded[0]["labels"]) == len(tokenizer("3", add_special_tokens=False)["input_ids"]) + 1
    batch = encode.LeftPadCollator(tokenizer.pad_token_id)(encode.train_features(encoded))
    assert batch["input_ids"][0, 0] == tokenizer.pad_token_id and batch["position_ids"][1, 0] == 0
    trainer = encode.trainer_class("generation")(model=model, args=TrainingArguments("unused", report_to="none"))
    with torch.no_grad():
        expected = model(**batch).loss  # transformers' own shifted cross-entropy over all labelled tokens
        ours = trainer.compute_loss(model, dict(batch))
    assert abs(ours.item() - expected.item()) < 1e-5
    # truncation keeps the answer and cuts the prompt on the left
    long = encode.encode_generation(tokenizer, [{"prompt": "word " * 200, "answer": "tea"}], max_len=16)[0]
    assert len(long["input_ids"]) == 16 and long["labels"][-2:] == long["input_ids"][-2:]


def test_classification_learns_saves_reloads_and_exports(folders, tmp_path):
    out = tmp_path / "run"
    result = finetune(folders["bert"], folders["cls"], config("inilora", targets=BERT_ALL), output_dir=out)
    assert result.metrics["accuracy"] >= 0.9  # separable toy data: chance is 0.5
    assert result.loss_history[-1][1] < result.loss_history[0][1] - 0.3
    assert result.metrics["steps"] == 48 and result.init["max_drift"] < 1e-5
    total = sum(p.numel() for p in models.load_model(folders["bert"], "classification").parameters())
    assert 0 < result.trainable_params < total / 2  # the adapter and the head, not the model
    info = json.loads((out / "inilora_train.json").read_text())
    assert info["kind"] == "classification" and info["labels"] == ["neg", "pos"]
    assert json.loads((out / "adapter-lora" / "adapter_config.json").read_text())["r"] == 16
    assert (out / "adapter" / "inilora_init.safetensors").is_file()

    # `evaluate` reloads the adapter onto a fresh base: the same predictions
    reloaded = evaluate(out, folders["cls"])
    assert reloaded["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert reloaded["eval_loss"] == pytest.approx(result.metrics["eval_loss"], abs=1e-5)

    # the plain-PEFT export (with the trained head) on the original base: the same logits
    tokenizer = models.load_tokenizer(folders["bert"])
    batch = tokenizer([row["text"] for row in folders["cls"].eval[:8]], return_tensors="pt", padding=True)
    import inilora

    with torch.no_grad():
        ours = inilora.from_pretrained(models.load_model(folders["bert"], "classification"), out / "adapter")
        plain = PeftModel.from_pretrained(models.load_model(folders["bert"], "classification", seed=7),
                                          str(out / "adapter-lora"))
        assert torch.allclose(ours(**batch).logits, plain.eval()(**batch).logits, atol=1e-4)


def test_generation_learns_the_answer_format(folders, tmp_path):
    base = finetune(folders["llama"], folders["gen"], config("base"))
    assert base.metrics["exact_match"] == 0.0 and base.metrics["steps"] == 0 and not base.loss_history
    tuned = finetune(folders["llama"], folders["gen"], config("lora", targets=LLAMA_ALL), output_dir=tmp_path)
    assert tuned.metrics["exact_match"] == 1.0
    assert tuned.metrics["eval_loss"] < base.metrics["eval_loss"] - 0.3
    assert tuned.metrics["samples"][0]["generated"] == "tea"
    again = evaluate(tmp_path, folders["gen"])
    assert again["exact_match"] == 1.0 and again["eval_loss"] == pytest.approx(tuned.metrics["eval_loss"], abs=1e-5)


def test_same_seed_same_run_and_full_finetuning(folders, tmp_path):
    a = finetune(folders["bert"], folders["cls"], config("inilora-beta", max_steps=6))
    b = finetune(folders["bert"], folders["cls"], config("inilora-beta", max_steps=6))
    assert a.init["digest"] == b.init["digest"] and a.loss_history == b.loss_history
    c = finetune(folders["bert"], folders["cls"], config("inilora-beta", max_steps=6, seed=1))
    assert c.init["digest"] != a.init["digest"]
    full = finetune(folders["bert"], folders["cls"], config("full", max_steps=6, lr=1e-3), output_dir=tmp_path)
    total = sum(p.numel() for p in models.load_model(folders["bert"], "classification").parameters())
    assert full.trainable_params == total and full.metrics["steps"] == 6
    assert evaluate(tmp_path, folders["cls"])["accuracy"] == pytest.approx(full.metrics["accuracy"])


def test_bf16_mixed_precision_trains_on_a_cpu(folders):
    # with no accelerator Trainer gets use_cpu=True; without it transformers refuses bf16 ("doesn't support bf16/gpu")
    fp32 = finetune(folders["bert"], folders["cls"], config("inilora", max_steps=4))
    bf16 = finetune(folders["bert"], folders["cls"], config("inilora", max_steps=4, bf16=True))
    assert bf16.metrics["steps"] == 4 and bf16.metrics["processes"] == 1
    assert bf16.init["digest"] == fp32.init["digest"]  # the same start, trained in another precision
    assert bf16.trained_digest != fp32.trained_digest
    assert all(abs(a - b) < 0.05 for (_, a), (_, b) in zip(bf16.loss_history, fp32.loss_history))


def test_a_classifiers_loss_is_its_mean_under_gradient_accumulation(folders):
    # 2 classes, an untrained head: the first logged loss is near ln 2. Trainer took the classifier's mean loss for
    # one normalized over the accumulation steps and logged the sum of both micro-batches (about 2 ln 2).
    for grad_accum in (1, 2):
        result = finetune(folders["bert"], folders["cls"], config("lora", max_steps=1, batch_size=4,
                                                                  grad_accum=grad_accum, logging_steps=1))
        assert abs(result.loss_history[0][1] - math.log(2)) < 0.2, grad_accum


def test_eval_of_a_built_in_task_run_uses_the_subsets_it_was_trained_on(folders, tmp_path):
    task = tasks.load_task("reviews", n_train=24, n_eval=12)
    trained = finetune(folders["bert"], task, config("lora", max_steps=2), output_dir=tmp_path)
    again = evaluate(tmp_path)  # rebuilt from the run's record: the 12 held-out reviews, not the default 1,000
    assert again["n_eval"] == trained.metrics["n_eval"] == 12
    assert again["accuracy"] == pytest.approx(trained.metrics["accuracy"])
    assert again["eval_loss"] == pytest.approx(trained.metrics["eval_loss"], abs=1e-5)


def test_checkpoints_resume(folders, tmp_path):
    first = finetune(folders["bert"], folders["cls"], config("inilora", max_steps=4, save_steps=2,
                                                                   logging_steps=1), output_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # resumed with another learning rate: steps 1-4 come from the checkpoint, not from a new run
    resumed = finetune(folders["bert"], folders["cls"], config("inilora", max_steps=6, save_steps=2,
                                                                     logging_steps=1, lr=1.0),
                             output_dir=tmp_path, resume=True)
    assert resumed.metrics["steps"] == 6
    assert resumed.loss_history[:4] == first.loss_history and [s for s, _ in resumed.loss_history] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("kw, message", [
    ({"method": "qlora"}, "Unknown method 'qlora'"), ({"lr": 0}, "lr must be positive"),
    ({"dropout": 1.0}, "dropout must be in"), ({"scheduler": "step"}, "Unknown scheduler"),
    ({"max_len": 4}, "max_len must be at least 8"),
    ({"method": "pissa", "solver": "adam"}, "solver='adam' sets inilora's fit; method 'pissa' has no fit"),
    ({"method": "full", "fit_steps": 10}, "fit_steps=10 sets inilora's fit; method 'full' has no fit"),
])
def test_bad_config(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kw)


# evaluated 8 times, evenly: every 2nd of 16 steps; 8 of 12 (Trainer's ratio 1/8 gave every 2nd of 12: 6)
@pytest.mark.parametrize("kind,method,max_steps,expected", [("cls", "lora", 16, [2, 4, 6, 8, 10, 12, 14, 16]),
                                                            ("gen", "peft:gaussian", 12, [2, 3, 5, 6, 8, 9, 11, 12])])
def test_validation_curve_and_per_example_predictions(folders, kind, method, max_steps, expected):
    task, validation = tasks.carve_validation(folders[kind], fraction=0.25)
    model = folders["bert" if kind == "cls" else "llama"]
    result = finetune(model, task, config(method, max_steps=max_steps, epochs=1), validation=validation)
    steps = [step for step, _, _ in result.val_curve]
    assert steps == expected
    assert len(result.predictions) == len(task.eval)
    assert result.validation["n"] == len(validation) and result.validation["loss"] > 0
    assert abs(result.validation["loss"] - result.val_curve[-1][1]) < 1e-4  # the last evaluation is the end state
    if kind == "cls":
        correct = sum(p == row["label"] for p, row in zip(result.predictions, task.eval)) / len(task.eval)
        assert abs(correct - result.metrics["accuracy"]) < 1e-9  # the predictions are what the metric scored
        assert result.val_curve[-1][2] == result.validation["metric"]
    else:
        hits = sum(p == row["answer"].strip() for p, row in zip(result.predictions, task.eval)) / len(task.eval)
        assert abs(hits - result.metrics["exact_match"]) < 1e-9
        assert result.init["peer"] == "gaussian"


def test_a_saved_config_from_before_the_solver_was_refused_still_loads():
    older = {**TrainConfig(method="lora").to_dict(), "solver": "adam"}  # what every run folder used to record
    assert TrainConfig.from_saved(older).solver is None
    assert TrainConfig.from_saved({**older, "method": "inilora"}).solver == "adam"


def test_the_evaluation_steps_are_at_least_those_asked_for_and_trainers_own_where_it_gives_enough():
    for evaluations in (3, 8):
        for max_steps in range(1, 500):
            steps = evaluation_steps(max_steps, evaluations)
            assert steps == sorted(set(steps)) and steps[0] >= 1 and steps[-1] == max_steps
            assert len(steps) >= min(evaluations, max_steps)
            interval = -(-max_steps // evaluations)  # Trainer's for eval_steps=1/n: the ratio, rounded up
            trainers = sorted(set(range(interval, max_steps + 1, interval)) | {max_steps})
            if len(trainers) >= min(evaluations, max_steps):
                assert steps == trainers
            else:  # spread evenly: no gap wider than the ratio, rounded up
                assert len(steps) == evaluations and max(b - a for a, b in zip([0, *steps], steps)) <= interval
    # the cadence of the committed tuned runs: 375 steps (MiniLM tasks), 354 (winowhy), 32 (chain_sum)
    assert evaluation_steps(375, 8) == [47, 94, 141, 188, 235, 282, 329, 375]
    assert evaluation_steps(354, 8) == [45, 90, 135, 180, 225, 270, 315, 354]
    assert evaluation_steps(32, 8) == [4, 8, 12, 16, 20, 24, 28, 32]

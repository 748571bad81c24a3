"""TRL's SFTTrainer trains a model from ``inilora.get_peft_model``; save, reload and export work after it."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel

import inilora
from conftest import outputs, tiny_model
from tiny import WORDS

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


def word_tokenizer():
    """A word-level tokenizer over the tiny corpus, built in code: ids fit the tiny llama's 128-token vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def lora_config():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def sft_trainer(peft_model, tmp_path, **kwargs):
    # bf16=False: SFTConfig defaults to bf16, and accelerate leaves the trained model's forward wrapped in
    # bf16 autocast, which would compare a bf16 forward against the fp32 reload
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=8, per_device_train_batch_size=8,
                         learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                         bf16=False, max_length=16, disable_tqdm=True, seed=0)
    rows = [{"text": "the coffee was very good and the tea was great"}, {"text": "it was a bad and stale snack"}]
    return trl.SFTTrainer(model=peft_model, args=args, train_dataset=datasets.Dataset.from_list(rows * 16),
                          processing_class=word_tokenizer(), **kwargs)


def test_sft_trainer_trains_an_inilora_model_and_save_reload_export_work(tmp_path, input_ids):
    peft_model = inilora.get_peft_model(tiny_model("llama"), lora_config(), method="inilora", solver="svd",
                                        progress=False)
    trainer = sft_trainer(peft_model, tmp_path)
    assert trainer.model is peft_model  # trained as given, not re-wrapped
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.1
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    init = peft_model.inilora.layers["model.layers.0.self_attn.q_proj"]
    assert (layer.lora_A["default"].weight.detach() - init.A0).abs().max() > 1e-3  # SFT moved the factors

    peft_model.eval()
    expected = outputs(peft_model, input_ids)
    saved = inilora.save_pretrained(peft_model, tmp_path / "adapter")
    reloaded = inilora.from_pretrained(tiny_model("llama"), saved)
    assert (outputs(reloaded, input_ids) - expected).abs().max().item() <= 1e-6
    exported = inilora.export_lora(peft_model, tmp_path / "plain")
    plain = PeftModel.from_pretrained(tiny_model("llama"), str(exported))
    assert (outputs(plain, input_ids) - expected).abs().max().item() <= 1e-5
    assert json.loads((exported / "adapter_config.json").read_text())["r"] == 8


def test_peft_config_with_an_inilora_model_is_refused_not_rewrapped(tmp_path):
    """SFTTrainer(peft_config=...) on the plain base would train plain LoRA; on an inilora model it must not
    silently wrap a second time (TRL refuses it; if TRL ever stops refusing, this test says so)."""
    peft_model = inilora.get_peft_model(tiny_model("llama"), lora_config(), method="pissa", progress=False)
    with pytest.raises(ValueError, match="PeftModel"):
        sft_trainer(peft_model, tmp_path, peft_config=lora_config())
    assert not any(isinstance(m, PeftModel) for m in peft_model.base_model.model.modules())
    assert list(peft_model.peft_config) == ["default"]

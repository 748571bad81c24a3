import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import inilora
from conftest import train_steps
from tiny import llama_folder

WORKER = Path(__file__).with_name("plain_peft_worker.py")


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """A tiny llama folder, initialized with inilora (closed-form fit, s = 2) and written offline."""
    root = tmp_path_factory.mktemp("offline")
    llama_folder(root / "base")
    peft_model = inilora.get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"),
                                        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                                        method="inilora", solver="svd", progress=False)
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    inilora.save_residual_model(peft_model, root / "out", max_shard_size="20KB")
    return root, peft_model, before


def test_writes_a_transformers_folder_and_a_plain_peft_adapter(offline):
    root, peft_model, before = offline
    residual = root / "out" / "residual_model"
    names = {p.name for p in residual.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json"} <= names  # sharded, tokenizer kept
    assert len([n for n in names if n.endswith(".safetensors")]) > 1
    adapter = {p.name for p in (root / "out" / "adapter").iterdir()}
    assert adapter == {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((root / "out" / "adapter" / "adapter_config.json").read_text())["init_lora_weights"] is True
    # the user's model is untouched
    after = peft_model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    # the residual and the factors on disk are the model's
    saved = AutoModelForCausalLM.from_pretrained(residual)
    factors = load_file(root / "out" / "adapter" / "adapter_model.safetensors")
    for name, layer in peft_model.inilora.layers.items():
        wrapped = peft_model.base_model.model.get_submodule(name)
        assert torch.equal(saved.get_submodule(name).weight, wrapped.get_base_layer().weight)
        assert torch.equal(factors[f"base_model.model.{name}.lora_A.weight"], layer.A0)
        assert torch.equal(factors[f"base_model.model.{name}.lora_B.weight"], layer.B0)
    original = AutoModelForCausalLM.from_pretrained(root / "base").state_dict()
    untouched = [k for k in original if not any(t in k for t in ("q_proj", "v_proj"))]
    assert untouched and all(torch.equal(original[k], saved.state_dict()[k]) for k in untouched)


def test_plain_peft_trains_from_it_and_converts_like_export_lora(offline, tmp_path):
    root, peft_model, _ = offline
    done = subprocess.run([sys.executable, str(WORKER), str(root / "base"), str(root / "out"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = load_file(tmp_path / "logits.safetensors")
    assert (result["initial"] - result["original"]).abs().max().item() <= 1e-5  # plain load = original model
    assert (result["trained"] - result["initial"]).abs().max().item() > 1e-3  # and it trained
    assert result["trainable"].item() == sum(l.A0.numel() + l.B0.numel() for l in peft_model.inilora.layers.values())

    # the same trained factors in the inilora model, exported by inilora
    trained = load_file(tmp_path / "trained" / "adapter_model.safetensors")
    with torch.no_grad():
        for name in peft_model.inilora.layers:
            layer = peft_model.base_model.model.get_submodule(name)
            layer.lora_A["default"].weight.copy_(trained[f"base_model.model.{name}.lora_A.weight"])
            layer.lora_B["default"].weight.copy_(trained[f"base_model.model.{name}.lora_B.weight"])
    inilora.export_lora(peft_model, tmp_path / "export")
    ours = load_file(tmp_path / "export" / "adapter_model.safetensors")
    converted = load_file(tmp_path / "converted" / "adapter_model.safetensors")
    assert set(ours) == set(converted)
    assert max((ours[k] - converted[k]).abs().max().item() for k in ours) <= 1e-5
    for folder in ("export", "converted"):
        on_original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "base"),
                                                str(tmp_path / folder))
        assert (logits(on_original, result["input_ids"]) - result["trained"]).abs().max().item() <= 1e-5


def test_refuses_a_model_not_made_by_inilora(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(llama_folder(tmp_path / "base"))
    import peft

    plain = peft.get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="not made by inilora"):
        inilora.save_residual_model(plain, tmp_path / "out")
    assert not (tmp_path / "out").exists()

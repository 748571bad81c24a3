"""An adapter made on an fp32 base reloads onto the same checkpoint loaded in bf16 or fp16.

Stated tolerance: the logits of the reload in dtype D differ from those of the fp32 reload by at most
2x the base checkpoint's own cast error (max |base in D − base in fp32| over the logits) with
``residual_fp32=True`` for every method, and with the residual in D for the methods whose product
approximates W (lora, pissa, milora, inilora); inilora-alpha/beta need ``residual_fp32=True`` (their
residual is ~50x the weight: in bf16 the error is ~10x the cast error, and the drift warning says so). Plain
LoRA's fingerprints, taken when it is saved, recognise the other dtypes too."""

import pytest
import torch
from peft import LoraConfig

import inilora
from conftest import tiny_model
from test_init import model_digest

IDS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
CONFIG = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"])


def saved(method, path):
    peft_model = inilora.get_peft_model(tiny_model("llama"), LoraConfig(**CONFIG), method=method, progress=False,
                                        **({"solver": "svd"} if method == "inilora" else {}))
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    peft_model.save_pretrained(path)
    return path


def logits(model):
    with torch.no_grad():
        return model(IDS).logits.float()


@pytest.mark.parametrize("method,residual_fp32", [("inilora", None), ("pissa", None), ("milora", True),
                                                   ("inilora-alpha", True), ("lora", None)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_adapter_reloads_onto_a_low_precision_base_within_the_stated_tolerance(method, residual_fp32, dtype,
                                                                                     tmp_path):
    path = saved(method, tmp_path / "a")
    reference = logits(inilora.from_pretrained(tiny_model("llama"), path))
    cast_error = (logits(tiny_model("llama", dtype=dtype)) - logits(tiny_model("llama"))).abs().max().item()
    reloaded = inilora.from_pretrained(tiny_model("llama", dtype=dtype), path, residual_fp32=residual_fp32)
    assert next(p for p in reloaded.parameters() if p.dtype == dtype) is not None
    error = (logits(reloaded) - reference).abs().max().item()
    assert 0 < error <= 2 * cast_error
    # saved again from the low-precision reload, it still reloads exactly onto the fp32 checkpoint
    reloaded.save_pretrained(tmp_path / "b")
    again = inilora.from_pretrained(tiny_model("llama"), tmp_path / "b")
    assert (logits(again) - reference).abs().max().item() <= 2 * cast_error


def test_alpha_residual_in_bf16_warns_and_misses_the_tolerance(tmp_path):
    path = saved("inilora-alpha", tmp_path / "a")
    reference = logits(inilora.from_pretrained(tiny_model("llama"), path))
    cast_error = (logits(tiny_model("llama", dtype=torch.bfloat16)) - logits(tiny_model("llama"))).abs().max().item()
    with pytest.warns(inilora.InitDriftWarning):
        reloaded = inilora.from_pretrained(tiny_model("llama", dtype=torch.bfloat16), path)
    assert (logits(reloaded) - reference).abs().max().item() > 2 * cast_error


def test_another_checkpoint_in_another_dtype_is_still_refused(tmp_path):
    path = saved("pissa", tmp_path / "a")
    other = tiny_model("llama", dtype=torch.bfloat16, seed=1)
    before = model_digest(other)
    with pytest.raises(inilora.AdapterLoadError, match="differs from the weight the adapter was made on"):
        inilora.from_pretrained(other, path)
    assert model_digest(other) == before

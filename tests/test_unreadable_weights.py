"""Weights no process holds whole — a DeepSpeed ZeRO-3 partition, an accelerate-offloaded weight — are
refused with an error naming the layer and the way out, before the model is touched."""

import pytest
import torch
from peft import LoraConfig
from torch import nn

import inilora
from conftest import tiny_model

CONFIG = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])


def partition(layer: nn.Linear) -> None:
    """What DeepSpeed ZeRO-3 leaves on a rank: an empty local tensor with ds_* attributes."""
    full = layer.weight.numel()
    layer.weight = nn.Parameter(torch.empty(0))
    layer.weight.ds_numel, layer.weight.ds_status = full, "NOT_AVAILABLE"


def test_zero3_partitioned_weight_is_refused_with_the_offline_flow_named():
    model = tiny_model("llama")
    partition(model.model.layers[1].self_attn.v_proj)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(inilora.InitError, match=r"'model\.layers\.1\.self_attn\.v_proj'.*ZeRO-3.*full size 2048.*inilora init"):
        inilora.get_peft_model(model, CONFIG, solver="svd", cache=False, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # untouched
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear  # not wrapped


def test_accelerate_offloaded_weight_is_refused_with_what_to_do():
    accelerate = pytest.importorskip("accelerate")
    model = tiny_model("llama")
    accelerate.cpu_offload(model, execution_device="cpu")  # weights to meta, restored by hooks per forward
    with pytest.raises(inilora.InitError, match=r"'model\.layers\.0\.self_attn\.q_proj'.*offloaded by accelerate"
                                                r".*inilora init.*without offloading"):
        inilora.get_peft_model(model, CONFIG, method="pissa", progress=False)
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear


def test_a_gathered_zero3_weight_initializes():
    model = tiny_model("llama")
    weight = model.model.layers[1].self_attn.v_proj.weight
    weight.ds_numel, weight.ds_status = weight.numel(), "AVAILABLE"  # inside GatheredParameters: whole
    peft_model = inilora.get_peft_model(model, CONFIG, method="pissa", progress=False)
    assert len(peft_model.inilora.report.layers) == 4

"""Run under `torchrun --nproc_per_node 2` by test_zero3.py (CPU, gloo, DS_ACCELERATOR=cpu): a tiny llama
partitioned by DeepSpeed ZeRO-3 is initialized by inilora.get_peft_model, with a patched
GatheredParameters that records, at every gather, which parameters are whole. Each rank saves what it
ends with (every target's residual and factors, gathered afterwards, and the logits) for the test to
compare with one plain process; then the refusals (fp32 residual of a bf16 partition, loading an adapter
onto a partitioned model) are tried and what they raised recorded."""

import json
import os
import sys

import torch
from peft import LoraConfig
from torch.distributed.elastic.multiprocessing.errors import record

import inilora
from conftest import tiny_model

CONFIG = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
CASES = {"inilora_svd": dict(method="inilora", solver="svd"),
         "inilora_adam": dict(method="inilora", solver="adam", steps=30, lr=1e-2),
         "pissa": dict(method="pissa")}
TARGETS = [f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")]
IDS = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(3))


def options(case: str) -> dict:
    return {**CASES[case], "cache": False, "progress": False}


def partitioned(dtype=torch.float32):
    """The tiny llama (same weights as conftest's), partitioned over the ranks as if built under zero.Init."""
    import deepspeed

    model = tiny_model("llama", dtype)
    config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1,
              "bf16": {"enabled": dtype == torch.bfloat16}}
    deepspeed.zero.Init(module=model, config_dict_or_path=config, dtype=dtype)
    return model


def whole(p) -> bool:
    return hasattr(p, "ds_id") and p.numel() == p.ds_numel


class Recorder:
    """Patches GatheredParameters: at each gather's entry, the model's parameters that are then whole."""

    def __init__(self, model):
        import deepspeed

        self.model, self.log, self.zero = model, [], deepspeed.zero
        self.always_whole = {n for n, p in model.named_parameters() if whole(p)}  # ZeRO-3's persistent ones
        recorder, original = self, deepspeed.zero.GatheredParameters

        class Recording(original):
            def __enter__(self):
                super().__enter__()
                recorder.log.append([n for n, p in recorder.model.named_parameters()
                                     if whole(p) and n not in recorder.always_whole])

        self.original, self.zero.GatheredParameters = original, Recording

    def stop(self) -> None:
        self.zero.GatheredParameters = self.original


@record  # a failing rank's traceback goes into torchrun's summary, which the test prints
def main(out: str) -> None:
    import deepspeed.ops  # here, not at the top: the test imports this module's constants without deepspeed

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    # DeepSpeed's shared-memory all-reduce is a C++ op it compiles on first use (minutes); the gathers
    # here are torch.distributed all-gathers on gloo either way
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    record = {"world_size": torch.distributed.get_world_size()}
    for case in CASES:
        model = partitioned()
        recorder = Recorder(model)
        peft_model = inilora.get_peft_model(model, CONFIG, **options(case))
        recorder.stop()
        layers = {name: peft_model.base_model.model.get_submodule(name) for name in TARGETS}
        saved = {"released": all(not whole(layer.base_layer.weight) for layer in layers.values())}
        for name, layer in layers.items():
            with deepspeed.zero.GatheredParameters([layer.base_layer.weight]):
                saved[f"{name}.residual"] = layer.base_layer.weight.detach().clone()
            saved[f"{name}.A"] = layer.lora_A["default"].weight.detach().clone()
            saved[f"{name}.B"] = layer.lora_B["default"].weight.detach().clone()
        with deepspeed.zero.GatheredParameters(list(peft_model.parameters())), torch.no_grad():
            saved["logits"] = peft_model(input_ids=IDS).logits
        torch.save(saved, os.path.join(out, f"rank{rank}_{case}.pt"))
        record[case] = {"gathers": recorder.log, "fitted_by_rank": [layer.fitted_by_rank for layer in
                                                                     peft_model.inilora.report.layers]}

    refused = {}
    bf16 = partitioned(torch.bfloat16)
    try:
        inilora.get_peft_model(bf16, CONFIG, method="pissa", residual_fp32=True, progress=False)
    except inilora.InitError as exc:
        refused["residual_fp32"] = str(exc)
    refused["residual_fp32_untouched"] = type(bf16.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    adapter = os.path.join(out, f"adapter{rank}")
    inilora.save_pretrained(inilora.get_peft_model(tiny_model("llama"), CONFIG, **options("pissa")), adapter)
    try:
        inilora.from_pretrained(partitioned(), adapter)
    except inilora.InitError as exc:
        refused["from_pretrained"] = str(exc)
    record["refused"] = refused
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

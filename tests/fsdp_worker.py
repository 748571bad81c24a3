"""Run under `torchrun --nproc_per_node 2` by test_fsdp.py: initialize a tiny llama with inilora on the
whole model, then shard it with FSDP2 (`fully_shard`, gloo, CPU), train a few data-parallel steps, gather
the full state dict on rank 0 and save the adapter there. Before that, the other order (wrap with FSDP2
or FSDP1, then initialize) is tried and what it raised recorded. The test imports `model_and_adapter`, `batch`
and `train` to run the same training in one plain process."""

import json
import os
import sys
from datetime import timedelta

import torch
from peft import LoraConfig
from torch.distributed.elastic.multiprocessing.errors import record

import inilora
from conftest import tiny_model

STEPS, LR, ROWS, LENGTH = 4, 1e-2, 4, 12


def model_and_adapter(model=None):
    """The whole model, initialized before any wrapping (the order FSDP needs)."""
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    return inilora.get_peft_model(tiny_model("llama") if model is None else model, config, method="inilora",
                                  solver="svd", cache=False, progress=False)


def batch() -> torch.Tensor:
    return torch.randint(0, 128, (ROWS, LENGTH), generator=torch.Generator().manual_seed(5))


def train(peft_model, input_ids: torch.Tensor) -> list[float]:
    """Adam on the causal-LM loss of ``input_ids`` (this rank's rows); every row has the same length, so
    the mean of the ranks' mean losses — what FSDP's averaged gradients follow — is the full batch's."""
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=LR)
    peft_model.train()
    losses = []
    for _ in range(STEPS):
        loss = peft_model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def wrapped_first() -> dict[str, str]:
    """What initializing a model already sharded by FSDP2, or by FSDP1 (either kind of parameters), raised."""
    from functools import partial

    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    def fsdp1(model, use_orig_params):
        policy = partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})
        return FullyShardedDataParallel(model, auto_wrap_policy=policy, use_orig_params=use_orig_params,
                                        device_id=torch.device("cpu"))

    def fsdp2(model):
        for layer in model.model.layers:
            fully_shard(layer)
        return fully_shard(model)

    raised = {}
    for kind, wrap in {"fsdp2": fsdp2, "fsdp1": partial(fsdp1, use_orig_params=False),
                       "fsdp1_orig_params": partial(fsdp1, use_orig_params=True)}.items():
        model = tiny_model("llama")
        wrapped = wrap(model)
        try:
            model_and_adapter(wrapped)
            raised[kind] = "nothing"
        except Exception as exc:
            raised[kind] = f"{type(exc).__name__}: {exc}"
        if any("lora_" in name for name, _ in model.named_parameters()):
            raised[kind] += " (and the model was changed)"
    return raised


@record  # a failing rank's traceback goes into torchrun's summary, which the test prints
def main(out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    raised = wrapped_first()
    peft_model = model_and_adapter()  # 1. initialize (the fit is sharded over the ranks, same factors on each)
    for layer in peft_model.base_model.model.model.layers:  # 2. then wrap: one FSDP unit per decoder layer
        fully_shard(layer)
    fully_shard(peft_model)
    lora = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
    sharded = all(isinstance(p, DTensor) and p.to_local().numel() < p.numel() for p in lora.values())
    losses = train(peft_model, batch()[rank::world_size])
    # 3. save: every rank joins the gather, rank 0 receives the full tensors and writes the adapter
    state = get_model_state_dict(peft_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        inilora.save_pretrained(peft_model, os.path.join(out, "adapter"), state_dict=state)
    dist.barrier()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"world_size": world_size, "backend": dist.get_backend(), "lora_params_sharded": sharded,
                   "trainable": sum(p.numel() for p in lora.values()), "losses": losses,
                   "gathered_keys": len(state), "wrapped_first": raised}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

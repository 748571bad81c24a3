"""Several processes: the IniLoRA fit sharded over torch.distributed ranks, and weights no rank can
read whole (FSDP shards, DeepSpeed ZeRO-3 partitions, accelerate offload) detected before anything is fitted.

The fit is split by whole chunks (the same same-shape batches a single process fits), assigned to
ranks by cost; each rank fits its chunks, then every chunk's factors are broadcast from the rank that
fitted it, so every rank ends with the bit-identical factors a single process computes. A failure on
one rank is shared before any broadcast, so every rank raises instead of waiting on a collective.
"""

from __future__ import annotations

import heapq
import math
import os
import warnings
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .errors import InitError
from .matrices import Factors

OFFLINE_HINT = ("Initialize offline instead (`inilora init`: it writes the residual model and the initial "
                "adapter once, on one process, and any engine then trains from them), or load the model "
                "without offloading/partitioning for the initialization.")
WRAP_AFTER_HINT = ("Initialize the whole, unwrapped model with inilora.get_peft_model first and wrap the "
                   "returned PeftModel with FSDP after (docs/distributed.md).")
FSDP1_WRAPPER = "_fsdp_wrapped_module"  # the attribute FullyShardedDataParallel holds the wrapped module in


class UnshardedFitWarning(UserWarning):
    """Several processes were launched, but with no process group yet each one fits every matrix itself."""


def sharding_world(enabled: bool) -> tuple[int, int] | None:
    """``(rank, world_size)`` when the fit should be sharded: enabled, and a process group of ≥ 2."""
    if not enabled or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    world_size = torch.distributed.get_world_size()
    return (torch.distributed.get_rank(), world_size) if world_size > 1 else None


def warn_if_launched_without_group(enabled: bool) -> None:
    """An :class:`UnshardedFitWarning` when a launcher started several processes (``WORLD_SIZE`` > 1) but no
    process group exists yet: the fit that follows runs whole on every process."""
    launched = os.environ.get("WORLD_SIZE", "1")  # set by torchrun and accelerate launch
    if (enabled and launched.isdigit() and int(launched) > 1 and torch.distributed.is_available()
            and not torch.distributed.is_initialized()):
        warnings.warn(f"{launched} processes were launched (WORLD_SIZE={launched}), but torch.distributed has no "
                      "process group yet, so each process fits every matrix itself. Create the training arguments "
                      "first (TrainingArguments or SFTConfig; use_cpu=True without a GPU) or call "
                      "torch.distributed.init_process_group() before inilora.get_peft_model to split the fit.",
                      UnshardedFitWarning, stacklevel=3)


def chunk_cost(chunk: Sequence) -> float:
    """Every solver's work grows as ``out · in · r`` per matrix."""
    return sum(t.weight.shape[0] * t.weight.shape[1] * t.r for t in chunk)


def assign_owners(costs: Sequence[float], world_size: int) -> list[int]:
    """Longest job first onto the least-loaded rank; ties by rank, so every rank computes the same plan."""
    loads = [(0.0, rank) for rank in range(world_size)]
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(loads)
        owners[i] = rank
        heapq.heappush(loads, (load + costs[i], rank))
    return owners


def agreed_todo(todo: list, targets: list, enabled: bool) -> list:
    """When sharded: the targets some rank still has to fit (the union over ranks, so ranks whose cache
    disks differ still fit the same set), in the targets' order. Otherwise ``todo`` itself."""
    if sharding_world(enabled) is None:
        return todo
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, [t.name for t in todo])
    names = set().union(*gathered)
    return [t for t in targets if t.name in names]


def _communication_device(reference: Tensor) -> torch.device:
    backend = torch.distributed.get_backend()
    return reference.device if backend != "gloo" else torch.device("cpu")


def _broadcast_chunk(chunk: Sequence, fitted: list[Factors] | None, owner: int) -> list[Factors]:
    """The chunk's factors on every rank, sent by ``owner`` (fp32, optima as fp64, NaN for none)."""
    first = chunk[0]
    out_f, in_f = first.weight.shape
    n, r = len(chunk), first.r
    device = _communication_device(first.weight)
    if fitted is not None:
        A0 = torch.stack([f.A0.float() for f in fitted]).to(device)
        B0 = torch.stack([f.B0.float() for f in fitted]).to(device)
        optima = torch.tensor([math.nan if f.optimum is None else f.optimum for f in fitted],
                              dtype=torch.float64, device=device)
    else:
        A0 = torch.empty(n, r, in_f, device=device)
        B0 = torch.empty(n, out_f, r, device=device)
        optima = torch.empty(n, dtype=torch.float64, device=device)
    for tensor in (A0, B0, optima):
        torch.distributed.broadcast(tensor, src=owner)
    home = first.weight.device
    return [Factors(A0[i].to(home), B0[i].to(home), None if math.isnan(o) else o, fitted_by_rank=owner)
            for i, o in enumerate(optima.tolist())]


def fit_chunks(chunk_list: list[list], fit: Callable[[list], list[Factors]],
               enabled: bool) -> Iterator[tuple[list, list[Factors], bool]]:
    """``(chunk, factors, fitted_here)`` for every chunk, in order. Single process: fitted one chunk
    at a time. Sharded: this rank fits its share first, failures are shared, then factors are broadcast."""
    world = sharding_world(enabled)
    if world is None:
        if chunk_list:
            warn_if_launched_without_group(enabled)
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        for chunk in chunk_list:
            factors = fit(chunk)
            for f in factors:
                f.fitted_by_rank = rank
            yield chunk, factors, True
        return
    rank, world_size = world
    owners = assign_owners([chunk_cost(c) for c in chunk_list], world_size)
    mine, failure = {}, None
    try:
        for i, chunk in enumerate(chunk_list):
            if owners[i] == rank:
                mine[i] = fit(chunk)
    except Exception as exc:  # shared with every rank below, then re-raised here
        failure = exc
    failures: list = [None] * world_size
    torch.distributed.all_gather_object(failures, None if failure is None else f"{type(failure).__name__}: {failure}")
    failed = [(r, message) for r, message in enumerate(failures) if message is not None]
    if failed:
        where = "; ".join(f"rank {r}: {message}" for r, message in failed)
        raise InitError(f"The sharded IniLoRA fit failed on {len(failed)} of {world_size} ranks ({where}); "
                        "no rank installed anything.") from failure
    for i, chunk in enumerate(chunk_list):
        yield chunk, _broadcast_chunk(chunk, mine.pop(i, None), owners[i]), owners[i] == rank


def check_readable(name: str, module: nn.Module, weight: Tensor) -> None:
    """Raise :class:`InitError` when ``weight`` is not the whole weight in memory: a shard left by FSDP
    (FSDP2's ``DTensor``, FSDP1's flattened or freed views), a DeepSpeed ZeRO-3 partition (``ds_numel``
    larger than the local tensor; ``get_peft_model`` gathers those first, :mod:`inilora.zero3`) or an
    accelerate-offloaded weight (a meta tensor behind an ``_hf_hook``). A residual computed from any of them would be wrong, or fail obscurely."""
    if FSDP1_WRAPPER in name.split("."):
        raise InitError(f"Layer {name!r} is inside an FSDP (FullyShardedDataParallel) wrapper, which flattens and "
                        f"shards its weight. {WRAP_AFTER_HINT}")
    if _is_dtensor(weight):
        raise InitError(f"Layer {name!r} holds a DTensor (the local shard FSDP2's fully_shard or tensor "
                        f"parallelism leaves) as its weight. {WRAP_AFTER_HINT}")
    if hasattr(weight, "ds_numel") and weight.numel() < weight.ds_numel:  # gathered (whole) weights pass
        why = ("inilora.get_peft_model gathers such weights one at a time, but loading an adapter onto a "
               "partitioned model (from_pretrained) is not supported" if hasattr(weight, "ds_id") else
               "it has no ds_id, so DeepSpeed cannot gather it")
        raise InitError(f"Layer {name!r} holds a DeepSpeed ZeRO-3 partition of its weight (local tensor of "
                        f"{weight.numel()} elements, full size {weight.ds_numel}); inilora needs the whole weight "
                        f"and {why}. {OFFLINE_HINT}")
    if isinstance(weight, Tensor) and weight.device.type == "meta":
        if getattr(module, "_hf_hook", None) is not None:
            raise InitError(f"Layer {name!r} has its weight offloaded by accelerate (device_map with CPU/disk "
                            f"offload: the weight is on the meta device until a forward pass). {OFFLINE_HINT}")
        raise InitError(f"Layer {name!r} has its weight on the meta device; load the model's weights first.")


def _is_dtensor(weight) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(weight, DTensor)

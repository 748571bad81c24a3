"""What the benchmark scripts share: loading the real models and their q/v targets, and the peak
resident memory of a call (the rise of VmHWM over the RSS before it; /proc/self/clear_refs resets it)."""

from __future__ import annotations

import gc
import time
from pathlib import Path

TARGETS = {"minilm": ["query", "value"], "smollm2": ["q_proj", "v_proj"]}


def load(model_name: str, device: str, dtype: str, pack: Path | None = None):
    """The real model; with ``pack`` (benchmarks/gpu_pack.py's folder) one built from its config whose target
    matrices are the real ones and whose other weights are random (the fit benchmark reads only the targets)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if model_name == "smollm2" else AutoModel
    if pack is None:
        from inilora.experiments.models import resolve

        model = cls.from_pretrained(str(resolve(model_name)), dtype=getattr(torch, dtype))
    else:
        from safetensors.torch import load_file

        torch.manual_seed(0)
        model = cls.from_config(AutoConfig.from_pretrained(str(Path(pack) / model_name)), dtype=torch.float32)
        targets = load_file(str(Path(pack) / model_name / "targets.safetensors"))
        expected = {f"{name}.weight" for name in target_weights(model, model_name)}
        if set(targets) != expected:
            raise ValueError(f"{pack}/{model_name} holds {len(targets)} target matrices, the model has "
                             f"{len(expected)}: repack it with benchmarks/gpu_pack.py")
        model.load_state_dict({k: v.float() for k, v in targets.items()}, strict=False)
        model = model.to(getattr(torch, dtype))
    model = model.to(device).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.sum()  # fault the weights in, so the measurement sees only what the init allocates
    return model


def lora_config(model_name: str, r: int, **kw):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=r, target_modules=TARGETS[model_name], **kw)


def target_weights(model, model_name: str) -> dict:
    suffixes = tuple(TARGETS[model_name])
    return {n: m.weight.detach().float().clone() for n, m in model.named_modules()
            if n.endswith(suffixes) and hasattr(m, "weight")}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn, *args, **kwargs):
    """Run ``fn`` and return ``(result, seconds, peak_rise_bytes)``."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return result, seconds, (peak - before) * 1024


def provenance() -> dict:
    """What made a result: the commit and dirty flag, package versions, and the init version of every
    method and solver (so a result is redone when any of them changes)."""
    from inilora.experiments.provenance import git_state, machine, versions
    from inilora.methods import REGISTRY

    init_versions = {m.name: {s: m.init_version(s) for s in m.solvers} or m.init_version() for m in REGISTRY.values()}
    return {**git_state(), "versions": versions(), "init_versions": init_versions, "machine": machine()}

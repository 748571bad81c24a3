"""Saved adapters under damage and through every save path: a damaged file is refused with the model
left exactly as it was; PEFT's own save_pretrained, Trainer checkpoints, named adapters and push_to_hub
give complete adapters; plain PEFT refuses a residual adapter."""

import re
import shutil
import types

import pytest
import torch
from peft import LoraConfig, PeftModel

import inilora
from conftest import TARGETS, checkpointing_trainer, outputs, tiny_model, train_steps
from inilora import persistence

FAST = {"progress": False, "cache": False}
SOLVER = {"inilora": {"solver": "svd"}}  # the closed form: the save format does not depend on the solver
FILES = ["adapter_model.safetensors", "adapter_config.json", "inilora_init.safetensors", "inilora_config.json"]
IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


def make(method, dtype=torch.float32, adapter_name="default", **kw):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS["llama"])
    return inilora.get_peft_model(tiny_model("llama", dtype), config, method=method, adapter_name=adapter_name,
                                  **FAST, **SOLVER.get(method, {}), **kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One trained adapter per method, saved by the model's own save_pretrained, made once per module."""
    made = {}

    def get(method, dtype=torch.float32, **kw):
        key = (method, dtype, *sorted(kw.items()))
        if key not in made:
            peft_model = make(method, dtype, **kw)
            train_steps(peft_model, IDS)
            path = tmp_path_factory.mktemp(method) / "adapter"
            peft_model.save_pretrained(path)
            made[key] = path, outputs(peft_model, IDS)
        return made[key]
    return get


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, {n: type(m) for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()}, set(vars(model)))


def assert_unchanged(model, before):
    state, kinds, grads, attrs = before
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) and now[k].dtype == state[k].dtype for k in state)
    assert {n: type(m) for n, m in model.named_modules()} == kinds
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert set(vars(model)) == attrs
    assert not any(hasattr(m, "_forward_hooks") and m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# ---- 1. corrupted files: AdapterLoadError naming the file, the model untouched ----

@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("method", inilora.METHODS)
def test_a_damaged_file_is_refused_and_the_model_left_as_it_was(method, file, damage, saved, tmp_path):
    path = tmp_path / "adapter"
    shutil.copytree(saved(method)[0], path)
    data = bytearray((path / file).read_bytes())
    if damage == "truncated":
        del data[len(data) // 2:]
    else:
        data[len(data) * 2 // 3] ^= 0x01  # inside the tensor data of a safetensors file: it parses fine
    (path / file).write_bytes(bytes(data))
    base = tiny_model("llama")
    before = snapshot(base)
    with pytest.raises(inilora.AdapterLoadError, match=re.escape(file)):
        inilora.from_pretrained(base, path)
    assert_unchanged(base, before)


def _fail_on_third_layer(monkeypatch):
    calls = []

    def install(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)
    real = persistence.install_layer
    monkeypatch.setattr(persistence, "install_layer", install)


def _fail_in_peft_weight_loading(monkeypatch):
    import peft.peft_model

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure")
    monkeypatch.setattr(peft.peft_model, "set_peft_model_state_dict", fail)


@pytest.mark.parametrize("inject", [_fail_on_third_layer, _fail_in_peft_weight_loading])
@pytest.mark.parametrize("method, dtype, kw", [(m, torch.float32, {}) for m in inilora.METHODS]
                         + [("pissa", torch.bfloat16, {"residual_fp32": True})])
def test_a_failure_after_wrapping_unwinds_to_the_model_as_it_was(method, dtype, kw, inject, saved, monkeypatch):
    path, expected = saved(method, dtype, **kw)
    base = tiny_model("llama", dtype)
    before = snapshot(base)
    with monkeypatch.context() as patch:
        inject(patch)
        with pytest.raises(inilora.AdapterLoadError, match="injected failure.*put back as it was"):
            inilora.from_pretrained(base, path)
    assert_unchanged(base, before)
    # the restored model is the original base: the adapter loads onto it
    assert torch.equal(outputs(inilora.from_pretrained(base, path), IDS), expected)


# ---- 2. PEFT's own save path, Trainer checkpoints, plain PEFT, push_to_hub ----

@pytest.mark.parametrize("method", ["inilora", "pissa", "lora"])
def test_peft_save_pretrained_is_complete_and_plain_peft_refuses_a_residual_adapter(method, saved):
    path, expected = saved(method)
    reloaded = inilora.from_pretrained(tiny_model("llama"), path)
    assert (outputs(reloaded, IDS) - expected).abs().max().item() <= 1e-6
    base = tiny_model("llama")
    if method == "lora":  # no residual: plain PEFT is exact
        assert (outputs(PeftModel.from_pretrained(base, str(path)), IDS) - expected).abs().max().item() <= 1e-6
        return
    with pytest.raises(ValueError, match=r"inilora\.from_pretrained"):
        PeftModel.from_pretrained(base, str(path))
    assert not any("lora" in n for n, _ in base.named_modules())


def test_opting_out_writes_an_adapter_for_plain_peft_on_the_residual_model(tmp_path):
    peft_model = make("inilora-beta")
    train_steps(peft_model, IDS)
    expected = outputs(peft_model, IDS)
    peft_model.save_pretrained(tmp_path / "a", refuse_plain_peft=False)
    residual = tiny_model("llama")
    with torch.no_grad():
        for name, layer in persistence.lora_layers(peft_model, list(peft_model.inilora.layers)).items():
            residual.get_submodule(name).weight.copy_(layer.get_base_layer().weight)
    plain = PeftModel.from_pretrained(residual, str(tmp_path / "a"))
    assert (outputs(plain, IDS) - expected).abs().max().item() <= 1e-6
    # inilora's own load still reads it, from the original base
    reloaded = inilora.from_pretrained(tiny_model("llama"), tmp_path / "a")
    assert (outputs(reloaded, IDS) - expected).abs().max().item() <= 1e-6





def test_trainer_checkpoints_reload_and_resume(tmp_path):
    peft_model = make("inilora-alpha")
    checkpointing_trainer(peft_model, tmp_path / "run", 4).train()
    expected = outputs(peft_model, IDS)
    final = tmp_path / "run" / "checkpoint-4"
    assert (final / "inilora_init.safetensors").is_file()
    reloaded = inilora.from_pretrained(tiny_model("llama"), final)
    assert (outputs(reloaded, IDS) - expected).abs().max().item() <= 1e-6
    with pytest.raises(ValueError, match=r"inilora\.from_pretrained"):
        PeftModel.from_pretrained(tiny_model("llama"), str(final))
    # resuming from the step-2 checkpoint ends where the uninterrupted run ended
    resumed = make("inilora-alpha")
    checkpointing_trainer(resumed, tmp_path / "run", 4).train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert (outputs(resumed, IDS) - expected).abs().max().item() <= 1e-5


def test_a_named_adapter_round_trips(tmp_path):
    peft_model = make("pissa", adapter_name="task1")
    train_steps(peft_model, IDS)
    expected = outputs(peft_model, IDS)
    inilora.save_pretrained(peft_model, tmp_path / "a")
    assert (tmp_path / "a" / "task1" / "inilora_init.safetensors").is_file()
    for path in (tmp_path / "a", tmp_path / "a" / "task1"):
        reloaded = inilora.from_pretrained(tiny_model("llama"), path, adapter_name="task1")
        assert reloaded.active_adapter == "task1"
        assert (outputs(reloaded, IDS) - expected).abs().max().item() <= 1e-6


def test_push_to_hub_uploads_the_init_files(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    pushed = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: types.SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *, repo_id, folder_path, **kw: pushed.update(
        repo_id=repo_id, files={p.name for p in __import__("pathlib").Path(folder_path).iterdir()}))
    peft_model = make("milora")
    peft_model.save_pretrained(tmp_path / "a", push_to_hub=True, repo_id="me/adapter")
    assert pushed["repo_id"] == "me/adapter"
    assert set(FILES) <= pushed["files"]

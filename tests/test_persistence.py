import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

import inilora
from conftest import ARCHS, TARGETS, fit_options, outputs, tiny_model, train_steps



def trained(arch, method, tmp_path, dtype=torch.float32, input_ids=None, **kw):
    model = tiny_model(arch, dtype)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[arch])
    peft_model = inilora.get_peft_model(model, cfg, method=method, progress=False, **fit_options(method, steps=300), **kw)
    train_steps(peft_model, input_ids)
    inilora.save_pretrained(peft_model, tmp_path / "adapter")
    return peft_model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", inilora.METHODS)
def test_reload_export_and_merge_reproduce_the_trained_model(arch, method, tmp_path, input_ids):
    peft_model = trained(arch, method, tmp_path, input_ids=input_ids)
    expected = outputs(peft_model, input_ids)
    layer = next(iter(peft_model.inilora.layers.items()))
    trained_A = peft_model.base_model.model.get_submodule(layer[0]).lora_A["default"].weight
    assert (trained_A - layer[1].A0).abs().max() > 1e-3  # training moved the factors

    reloaded = inilora.from_pretrained(tiny_model(arch), tmp_path / "adapter")
    assert (outputs(reloaded, input_ids) - expected).abs().max().item() <= 1e-6

    inilora.export_lora(peft_model, tmp_path / "plain")
    plain = PeftModel.from_pretrained(tiny_model(arch), str(tmp_path / "plain"))
    assert (outputs(plain, input_ids) - expected).abs().max().item() <= 1e-5
    exported = json.loads((tmp_path / "plain" / "adapter_config.json").read_text())
    assert exported["r"] == (4 if method == "lora" else 8)

    merged = inilora.merge_and_unload(peft_model)
    assert not any("lora" in n for n, _ in merged.named_modules())
    assert (outputs(merged, input_ids) - expected).abs().max().item() <= 1e-5


def test_saved_directory_is_a_peft_adapter_plus_init_files(tmp_path, input_ids):
    trained("llama", "inilora-alpha", tmp_path, input_ids=input_ids)
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "inilora_init.safetensors",
            "inilora_config.json"} <= files
    meta = json.loads((tmp_path / "adapter" / "inilora_config.json").read_text())
    assert meta["options"]["method"] == "inilora-alpha" and len(meta["layers"]) == 4


def test_reload_is_trainable_and_keeps_training(tmp_path, input_ids):
    trained("bert", "inilora", tmp_path, input_ids=input_ids)
    reloaded = inilora.from_pretrained(tiny_model("bert"), tmp_path / "adapter", is_trainable=True)
    trainable = [n for n, p in reloaded.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in reloaded.named_parameters()}
    outputs_before = outputs(reloaded, input_ids)
    train_steps(reloaded, input_ids)
    after = dict(reloaded.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved == set(trainable)  # every LoRA factor trained, the frozen residual and the rest did not move
    trained_outputs = outputs(reloaded, input_ids)
    assert (trained_outputs - outputs_before).abs().max().item() > 1e-3
    # the further-trained adapter saves and reloads to the same model
    inilora.save_pretrained(reloaded, tmp_path / "again")
    again = inilora.from_pretrained(tiny_model("bert"), tmp_path / "again")
    assert (outputs(again, input_ids) - trained_outputs).abs().max().item() <= 1e-6


@pytest.mark.parametrize("method", ["inilora-alpha", "pissa"])
def test_bf16_reload_and_merge_with_fp32_residual(method, tmp_path, input_ids):
    peft_model = trained("llama", method, tmp_path, torch.bfloat16, input_ids=input_ids, residual_fp32=True)
    expected = outputs(peft_model, input_ids)
    reloaded = inilora.from_pretrained(tiny_model("llama", torch.bfloat16), tmp_path / "adapter")
    assert torch.equal(outputs(reloaded, input_ids), expected)
    merged = inilora.merge_and_unload(reloaded)
    assert all(p.dtype == torch.bfloat16 for p in merged.parameters())
    # merged weights are rounded to bf16 once: close to, not equal to, the fp32-residual model
    assert (outputs(merged, input_ids) - expected).abs().max().item() <= 0.05


# ---- loading bad input: a clear error, the base model untouched ----

def test_loading_on_a_different_base_is_refused(tmp_path, input_ids):
    trained("llama", "inilora", tmp_path, input_ids=input_ids)
    other = tiny_model("llama", seed=1)
    with pytest.raises(inilora.AdapterLoadError, match="fingerprint mismatch"):
        inilora.from_pretrained(other, tmp_path / "adapter")
    assert not any("lora" in n for n, _ in other.named_modules())
    # the same checkpoint in bf16 is accepted (tests/test_dtype_reload.py); another one in bf16 is not
    with pytest.raises(inilora.AdapterLoadError, match="fingerprint mismatch"):
        inilora.from_pretrained(tiny_model("llama", torch.bfloat16, seed=1), tmp_path / "adapter")


@pytest.mark.parametrize("damage", ["missing", "corrupt", "missing_meta"])
def test_missing_or_corrupted_init_file_is_refused(damage, tmp_path, input_ids):
    trained("llama", "inilora-beta", tmp_path, input_ids=input_ids)
    init = tmp_path / "adapter" / "inilora_init.safetensors"
    if damage == "missing":
        init.unlink()
    elif damage == "corrupt":
        data = bytearray(init.read_bytes())
        data[-5] ^= 0xFF
        init.write_bytes(bytes(data))
    else:
        (tmp_path / "adapter" / "inilora_config.json").unlink()
    base = tiny_model("llama")
    with pytest.raises(inilora.AdapterLoadError, match="missing|corrupted|not saved by inilora"):
        inilora.from_pretrained(base, tmp_path / "adapter")
    assert not any("lora" in n for n, _ in base.named_modules())


def test_save_refuses_a_model_not_made_by_inilora(tmp_path):
    import peft
    model = peft.get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="not made by inilora"):
        inilora.save_pretrained(model, tmp_path)


@pytest.mark.parametrize("rslora", [False, True])
def test_rank_and_alpha_patterns_survive_reload_export_and_merge(rslora, tmp_path, input_ids):
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=rslora,
                     rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 6})
    peft_model = inilora.get_peft_model(tiny_model("llama"), cfg, method="inilora-beta", progress=False)
    scalings = {n.rsplit(".", 1)[-1]: l.scaling for n, l in peft_model.inilora.layers.items()}
    assert scalings["v_proj"] == pytest.approx(6 / 2 ** 0.5 if rslora else 3.0)
    train_steps(peft_model, input_ids)
    expected = outputs(peft_model, input_ids)
    inilora.save_pretrained(peft_model, tmp_path / "a")
    assert (outputs(inilora.from_pretrained(tiny_model("llama"), tmp_path / "a"), input_ids) - expected).abs().max() <= 1e-6
    # doubled rank, alpha ×2 (×√2 under rsLoRA), per pattern too: the same scaling for every layer
    inilora.export_lora(peft_model, tmp_path / "plain")
    plain = PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / "plain"))
    assert (outputs(plain, input_ids) - expected).abs().max() <= 1e-5
    assert (outputs(inilora.merge_and_unload(peft_model), input_ids) - expected).abs().max() <= 1e-5


NEEDS_TRAINABLE_TOKENS = pytest.mark.skipif("trainable_token_indices" not in LoraConfig.__dataclass_fields__,
                                            reason="PEFT < 0.15 has no trainable_token_indices")


@pytest.mark.parametrize("arch,extra", [pytest.param("llama", {"trainable_token_indices": [3, 5]},
                                                     marks=NEEDS_TRAINABLE_TOKENS),
                                        ("llama", {"modules_to_save": ["lm_head"]}),
                                        ("bert", {"lora_bias": True})])  # BERT's query/value have biases
def test_peft_extras_are_trained_and_survive_reload_export_and_merge(arch, extra, tmp_path, input_ids):
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[arch], **extra)
    peft_model = inilora.get_peft_model(tiny_model(arch), cfg, method="pissa", progress=False)
    train_steps(peft_model, input_ids)
    expected = outputs(peft_model, input_ids)
    # the extra part trained and matters: without it the model computes something else
    extras = {n: p for n, p in peft_model.named_parameters()
              if p.requires_grad and not n.endswith(("lora_A.default.weight", "lora_B.default.weight"))}
    assert extras
    inilora.save_pretrained(peft_model, tmp_path / "a")
    reloaded = inilora.from_pretrained(tiny_model(arch), tmp_path / "a")
    assert (outputs(reloaded, input_ids) - expected).abs().max() <= 1e-6
    inilora.export_lora(peft_model, tmp_path / "plain")
    plain = PeftModel.from_pretrained(tiny_model(arch), str(tmp_path / "plain"))
    assert (outputs(plain, input_ids) - expected).abs().max() <= 1e-5
    with torch.no_grad():
        saved = {n: p.clone() for n, p in extras.items()}
        for p in extras.values():
            p.zero_()
        assert (outputs(peft_model, input_ids) - expected).abs().max() > 1e-3
        for n, p in extras.items():
            p.copy_(saved[n])
    # the merge keeps them (trainable tokens were dropped by the unload before)
    assert (outputs(inilora.merge_and_unload(peft_model), input_ids) - expected).abs().max() <= 1e-5


def test_merging_a_lora_bias_into_a_layer_without_bias_is_refused_before_anything_changes(tmp_path, input_ids):
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS["llama"], lora_bias=True)
    with warnings.catch_warnings():  # PEFT >= 0.15 warns that merging won't be possible; 0.14 says nothing
        warnings.simplefilter("ignore", UserWarning)
        peft_model = inilora.get_peft_model(tiny_model("llama"), cfg, method="inilora", solver="svd", progress=False)
    train_steps(peft_model, input_ids)
    expected = outputs(peft_model, input_ids)
    with pytest.raises(inilora.InitError, match="has no bias of its own.*export_lora"):
        inilora.merge_and_unload(peft_model)  # it dropped the trained bias before
    assert torch.equal(outputs(peft_model, input_ids), expected)
    inilora.export_lora(peft_model, tmp_path / "plain")  # the exact route keeps the bias
    plain = PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / "plain"))
    assert (outputs(plain, input_ids) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("method", inilora.METHODS)
def test_disabling_or_unloading_the_adapter_gives_the_original_base(method, tmp_path, input_ids):
    """PEFT's base of a residual model is ``W − s·B0·A0``: ``disable_adapter()`` (TRL's DPO reference) and
    ``unload()`` computed that residual model (0.46 off the base logits) before."""
    peft_model = trained("llama", method, tmp_path, input_ids=input_ids)
    base = outputs(tiny_model("llama"), input_ids)
    expected = outputs(peft_model, input_ids)
    assert (expected - base).abs().max() > 0.1  # training moved the model
    for model in (peft_model, inilora.from_pretrained(tiny_model("llama"), tmp_path / "adapter")):
        with model.disable_adapter():
            assert (outputs(model, input_ids) - base).abs().max() <= 1e-5
        assert torch.equal(outputs(model, input_ids), expected)
    unloaded = peft_model.unload()
    assert not any("lora" in n for n, _ in unloaded.named_modules()) and not hasattr(peft_model, "inilora")
    original = dict(tiny_model("llama").named_parameters())
    for name, p in unloaded.named_parameters():  # up to the init drift (IniLoRA-α's: ~4e-7 in fp32)
        assert torch.linalg.vector_norm(p - original[name]) <= 2e-6 * torch.linalg.vector_norm(original[name]), name
    assert (outputs(unloaded, input_ids) - base).abs().max() <= 1e-5


@pytest.mark.parametrize("method", inilora.METHODS)
def test_merge_and_unload_and_unload_after_peft_merge_adapter(method, tmp_path, input_ids):
    """After PEFT's ``merge_adapter()``, ``merge_and_unload`` merged ``s·B·A`` a second time (off by 0.14 for
    inilora, 0.18 for lora) and a non-residual ``unload()`` kept the merged weights (0.52 off the base)."""
    peft_model = trained("llama", method, tmp_path, input_ids=input_ids)
    expected, base = outputs(peft_model, input_ids), outputs(tiny_model("llama"), input_ids)
    assert (expected - base).abs().max() > 0.1  # training moved the model
    peft_model.merge_adapter()
    assert (outputs(peft_model, input_ids) - expected).abs().max() <= 1e-5
    merged = inilora.merge_and_unload(peft_model)
    assert (outputs(merged, input_ids) - expected).abs().max() <= 1e-5

    reloaded = inilora.from_pretrained(tiny_model("llama"), tmp_path / "adapter")
    reloaded.merge_adapter()
    assert (outputs(reloaded, input_ids) - expected).abs().max() <= 1e-5
    unloaded = reloaded.unload()
    assert (outputs(unloaded, input_ids) - base).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["inilora", "inilora-beta"])
def test_another_adapter_and_the_mixed_batch_base_sit_on_the_original_base(method, tmp_path, input_ids):
    """A second adapter (``set_adapter``) and PEFT's mixed-batch "__base__" rows computed on ``W − s·B0·A0``
    before: the other adapter's model off by 0.12 (inilora) and 0.76 (inilora-beta), with no error."""
    peft_model = trained("llama", method, tmp_path, input_ids=input_ids)
    input_ids = input_ids[[0, 1, 0]]  # a row for each of the mixed batch's three
    trained_out, base = outputs(peft_model, input_ids), outputs(tiny_model("llama"), input_ids)
    other_cfg = LoraConfig(r=2, target_modules=TARGETS["llama"], init_lora_weights=False)  # a non-zero delta
    peft_model.add_adapter("other", other_cfg)
    peft_model.set_adapter("other")
    plain = get_peft_model(tiny_model("llama"), other_cfg)  # the same adapter on the original base
    set_peft_model_state_dict(plain, get_peft_model_state_dict(peft_model, adapter_name="other"))
    expected_other = outputs(plain, input_ids)
    assert (expected_other - base).abs().max() > 0.05  # the other adapter changes the model
    assert (outputs(peft_model, input_ids) - expected_other).abs().max() <= 1e-5
    peft_model.set_adapter("default")
    assert torch.equal(outputs(peft_model, input_ids), trained_out)

    names = ["__base__", "default", "other"]
    with torch.no_grad():
        mixed = peft_model(input_ids=input_ids, adapter_names=names).logits
    for row, name in enumerate(names):
        want = {"__base__": base, "default": trained_out, "other": expected_other}[name]
        assert (mixed[row] - want[row]).abs().max() <= 1e-5, name


def _tiny_classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                                                     num_hidden_layers=2, num_attention_heads=4,
                                                     max_position_embeddings=64)).eval()


@pytest.mark.parametrize("task_type", ["SEQ_CLS", "CAUSAL_LM", None])
def test_plain_peft_refuses_a_residual_adapter_of_every_task_type(task_type, tmp_path, input_ids):
    """Item 8: a classifier's adapter (modules_to_save) got PEFT's generic "No modules were targeted"."""
    make = _tiny_classifier if task_type == "SEQ_CLS" else (lambda: tiny_model("llama" if task_type else "bert"))
    arch = "bert" if task_type != "CAUSAL_LM" else "llama"
    peft_model = inilora.get_peft_model(make(), LoraConfig(r=4, target_modules=TARGETS[arch], task_type=task_type),
                                        method="pissa", progress=False)
    inilora.save_pretrained(peft_model, tmp_path / "a")
    base = make()
    with pytest.raises(ValueError, match=r"load it with inilora\.from_pretrained"):
        PeftModel.from_pretrained(base, str(tmp_path / "a"))
    assert not any("lora" in n for n, _ in base.named_modules())
    reloaded = inilora.from_pretrained(make(), tmp_path / "a")  # inilora's own load reads the true config
    assert reloaded.peft_config["default"].task_type == task_type
    assert torch.equal(outputs(reloaded, input_ids), outputs(peft_model, input_ids))


def test_an_adapter_on_another_base_model_says_so_and_errors_name_the_function_called(tmp_path):
    """Items 9 and 10."""
    peft_model = inilora.get_peft_model(_tiny_classifier(), LoraConfig(r=4, target_modules=TARGETS["bert"],
                                                                      task_type="SEQ_CLS"), method="pissa")
    inilora.save_pretrained(peft_model, tmp_path / "a")
    for other in (tiny_model("llama"), _tiny_classifier(seed=1)):  # other layer names; the same names, other weights
        with pytest.raises(inilora.AdapterLoadError, match="^This adapter belongs to another base model: "):
            inilora.from_pretrained(other, tmp_path / "a")
    with pytest.raises(inilora.InitError, match="^inilora.from_pretrained takes a transformers model, not a PeftModel"):
        inilora.from_pretrained(peft_model, tmp_path / "a", adapter_name="other")


def test_an_adapter_of_format_2_with_sha256_fingerprints_still_loads_and_is_still_checked(tmp_path, input_ids):
    """Format 3 hashes fingerprints with xxh3_128; a format-2 adapter (SHA-256) is read with its own hash."""
    from inilora.checksums import read_sealed, write_sealed
    from inilora.layouts import weight_view
    from inilora.state import RELOAD_DTYPES, dtype_name, fingerprint

    expected = outputs(trained("llama", "inilora", tmp_path, input_ids=input_ids), input_ids)
    meta_path = tmp_path / "adapter" / "inilora_config.json"
    meta = read_sealed(meta_path)
    assert meta["format_version"] == 3
    weights = {n: weight_view(m) for n, m in tiny_model("llama").named_modules() if n in meta["layers"]}
    assert all(meta["layers"][n]["fingerprint"] == fingerprint(w, algorithm="xxh3_128") for n, w in weights.items())

    def as_format_2(algorithm):
        record = {k: v for k, v in meta.items() if k != "sha256"}
        record["format_version"] = 2
        for name, w in weights.items():
            record["layers"][name]["fingerprint"] = fingerprint(w, algorithm=algorithm)
            record["layers"][name]["fingerprints"] = {dtype_name(d): fingerprint(w, d, algorithm) for d in RELOAD_DTYPES}
        write_sealed(meta_path, record)

    as_format_2("sha256")
    assert torch.equal(outputs(inilora.from_pretrained(tiny_model("llama"), tmp_path / "adapter"), input_ids), expected)
    assert inilora.from_pretrained(tiny_model("llama", torch.bfloat16), tmp_path / "adapter")  # its other dtypes too
    with pytest.raises(inilora.AdapterLoadError, match="fingerprint mismatch"):
        inilora.from_pretrained(tiny_model("llama", seed=1), tmp_path / "adapter")
    as_format_2("xxh3_128")  # format 2 read with format 3's hash would take these: it does not
    with pytest.raises(inilora.AdapterLoadError, match="fingerprint mismatch"):
        inilora.from_pretrained(tiny_model("llama"), tmp_path / "adapter")
    meta["format_version"] = 99
    write_sealed(meta_path, {k: v for k, v in meta.items() if k != "sha256"})
    with pytest.raises(inilora.AdapterLoadError, match="format version 99; this inilora reads versions 2, 3"):
        inilora.from_pretrained(tiny_model("llama"), tmp_path / "adapter")


@pytest.mark.parametrize("algorithm", ["xxh3_128", "sha256"])
def test_a_streamed_fingerprint_hashes_the_bytes_a_whole_cast_copy_would(algorithm, monkeypatch):
    """Casts and strided views are hashed through a small buffer, a block of rows at a time (three blocks here)."""
    import inilora.state as state

    monkeypatch.setattr(state, "_BLOCK_BYTES", 4 * 1000 * 90)
    W = torch.randn(250, 1000)
    for weight, stored in ((W, W), (W.T, W), (W[:, ::3], W[:, ::3]), (W[7], W[7])):  # Conv1D's W.T hashes as stored
        for dtype in (None, torch.bfloat16, torch.float16):
            whole = stored.to(dtype or stored.dtype).contiguous()
            assert state.fingerprint(weight, dtype, algorithm) == state.fingerprint(whole, None, algorithm)
    assert state.fingerprint(W, torch.bfloat16, algorithm) != state.fingerprint(W, None, algorithm)
    assert state.fingerprint(W, None, algorithm) != state.fingerprint(W + 2.0 ** -20, None, algorithm)

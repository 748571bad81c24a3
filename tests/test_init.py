import hashlib

import pytest
import torch
from peft import LoraConfig

import inilora
from conftest import ARCHS, TARGETS, fit_options, outputs, realistic_matrix, tiny_model

FAST = {"steps": 300, "progress": False}  # the adam fit's accuracy is tested in test_fit; here only exactness


def fast(method: str) -> dict:
    return {"progress": False, **fit_options(method, steps=300)}


def config(arch, r=4, alpha=8, **kw):
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS[arch], **kw)


def model_digest(model) -> str:
    """Everything a failed call must leave alone: module types, parameter values, trainability."""
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(f"{name}:{type(module).__name__}".encode())
    for name, p in model.named_parameters():
        h.update(f"{name}:{p.requires_grad}:{p.dtype}".encode())
        h.update(p.detach().float().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", inilora.METHODS)
@pytest.mark.parametrize("r,alpha,rslora", [(4, 8, False), (4, 4, False), (8, 8, True)])
def test_output_at_init_equals_base(arch, method, r, alpha, rslora, input_ids):
    model = tiny_model(arch)
    expected = outputs(model, input_ids)
    peft_model = inilora.get_peft_model(model, config(arch, r, alpha, use_rslora=rslora), method=method, **fast(method))
    assert (outputs(peft_model, input_ids) - expected).abs().max().item() <= 1e-5
    report = peft_model.inilora.report
    assert len(report.layers) == {"llama": 4, "gpt2": 2, "bert": 4}[arch]
    # fp32 rounding of the residual, relative to W: α's residual is ~50× larger than W
    assert report.max_drift <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_only_lora_parameters_train(arch):
    model = tiny_model(arch)
    peft_model = inilora.get_peft_model(model, config(arch, r=4), method="inilora", solver="svd", progress=False)
    trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    expected = 0
    for layer in peft_model.inilora.layers.values():
        expected += layer.A0.numel() + layer.B0.numel()
    assert sum(trainable.values()) == expected
    # the residual is frozen and replaced the base weight
    base = peft_model.base_model.model
    name = next(iter(peft_model.inilora.layers))
    assert not base.get_submodule(name).base_layer.weight.requires_grad


def test_residual_is_the_weight_minus_the_scaled_product():
    model = tiny_model("llama")
    name = "model.layers.0.self_attn.q_proj"
    W = model.get_submodule(name).weight.detach().clone()
    peft_model = inilora.get_peft_model(model, config("llama", r=4, alpha=12), method="inilora-alpha", progress=False)
    layer = peft_model.base_model.model.get_submodule(name)
    A0, B0 = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert layer.scaling["default"] == 3.0
    assert torch.allclose(layer.base_layer.weight, W - 3.0 * B0 @ A0, atol=1e-6)


def test_modules_to_save_train_too():
    model = tiny_model("bert")
    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=["query", "value"], modules_to_save=["pooler"])
    peft_model = inilora.get_peft_model(model, cfg, method="pissa", progress=False)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("pooler" in n for n in trainable)


def test_same_seed_same_factors_other_seed_differs():
    def factors(seed):
        peft_model = inilora.get_peft_model(tiny_model("llama"), config("llama"), method="inilora", seed=seed, **FAST)
        return torch.cat([l.A0.flatten() for l in peft_model.inilora.layers.values()])
    assert torch.equal(factors(1), factors(1))
    assert not torch.equal(factors(1), factors(2))


@pytest.mark.parametrize("method", inilora.METHODS)
def test_bf16_residual_from_stored_factors_and_drift_reported(method, input_ids):
    model = tiny_model("llama", torch.bfloat16)
    expected = outputs(model, input_ids)
    peft_model = inilora.get_peft_model(model, config("llama", r=4, alpha=4), method=method, drift_warn_threshold=1.0, **fast(method))
    report = peft_model.inilora.report
    # the residual was rounded to bf16: drift is the rounding, at most a few bf16 ulps of the residual
    assert report.max_drift < 0.5
    if method == "lora":
        assert report.max_drift == 0
    # fp32 residual: the drift is gone
    model32 = tiny_model("llama", torch.bfloat16)
    exact = inilora.get_peft_model(model32, config("llama", r=4, alpha=4), method=method, residual_fp32=True, **fast(method))
    assert exact.inilora.report.max_drift <= 1e-5
    name = next(iter(exact.inilora.layers))
    residual_dtype = exact.base_model.model.get_submodule(name).base_layer.weight.dtype
    assert residual_dtype == (torch.bfloat16 if method == "lora" else torch.float32)
    out = outputs(exact, input_ids)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # output in bf16 stays close to the base's
    assert (out - expected).abs().max().item() <= 0.1 * expected.abs().max().item()


def test_bf16_alpha_drift_warns_and_fp32_does_not():
    with pytest.warns(inilora.InitDriftWarning, match="residual_fp32=True"):
        inilora.get_peft_model(tiny_model("llama", torch.bfloat16), config("llama"), method="inilora-alpha", progress=False)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", inilora.InitDriftWarning)
        inilora.get_peft_model(tiny_model("llama", torch.bfloat16), config("llama"), method="inilora-alpha",
                               residual_fp32=True, progress=False)


def test_report_table_lists_every_layer():
    peft_model = inilora.get_peft_model(tiny_model("llama"), config("llama"), method="inilora", solver="svd", progress=False)
    table = peft_model.inilora.report.table()
    assert "optimum" in table and table.count("self_attn") == 4
    rows = peft_model.inilora.report.to_rows()
    assert all(row["ratio"] <= 1 + 1e-6 for row in rows)


# ---- bad input: a clear error, and the model is left untouched ----

def nan_model():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight[0, 0] = float("nan")
    return model


def quantized_model():
    model = tiny_model("llama")
    layer = model.model.layers[0].self_attn.q_proj
    layer.weight = torch.nn.Parameter(layer.weight.detach().to(torch.int8), requires_grad=False)
    return model


def tied_model():
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    return model


BAD = [
    ("unknown method", lambda: tiny_model("llama"), lambda: config("llama"), {"method": "dora"}, "Unknown method"),
    ("unknown option", lambda: tiny_model("llama"), lambda: config("llama"), {"stepz": 3}, "Unknown option"),
    ("rank too large", lambda: tiny_model("llama"), lambda: config("llama", r=40), {"method": "pissa"}, "r=40"),
    ("rank too large inilora", lambda: tiny_model("llama"), lambda: config("llama", r=40), {}, "at most 32"),
    ("no match", lambda: tiny_model("llama"), lambda: LoraConfig(r=4, target_modules=["nope"]), {}, "No module matches"),
    ("nan", nan_model, lambda: config("llama"), {}, "NaN or Inf"),
    ("quantized", quantized_model, lambda: config("llama"), {}, "quantized"),
    ("tied", tied_model, lambda: LoraConfig(r=4, target_modules=["lm_head"]), {"method": "pissa"}, "tied"),
    ("bad steps", lambda: tiny_model("llama"), lambda: config("llama"), {"steps": 0}, "Option steps must be a positive integer"),
    # PEFT's own checks come later (r = 0: a ZeroDivisionError, r = -2: a RuntimeError, r = 2.5: a TypeError)
    ("zero rank", lambda: tiny_model("llama"), lambda: config("llama", r=0), {"method": "lora"}, "r must be a positive int, got 0"),
    ("negative rank", lambda: tiny_model("llama"), lambda: config("llama", r=-2), {}, "r must be a positive int, got -2"),
    ("float rank", lambda: tiny_model("llama"), lambda: config("llama", r=2.5), {"method": "pissa"}, "r must be a positive int, got 2.5"),
    ("zero rank in pattern", lambda: tiny_model("llama"), lambda: config("llama", rank_pattern={"v_proj": 0}), {},
     r"rank_pattern\['v_proj'\] must be a positive int"),
    # a NaN scaling, or s = 0 under a residual method, gives a model of NaNs without an error
    ("nan alpha", lambda: tiny_model("llama"), lambda: config("llama", alpha=float("nan")), {"method": "lora"},
     "lora_alpha must be a finite number"),
    ("inf alpha in pattern", lambda: tiny_model("llama"), lambda: config("llama", alpha_pattern={"q_proj": float("inf")}),
     {"method": "pissa"}, r"alpha_pattern\['q_proj'\] must be a finite number"),
    ("zero alpha, residual", lambda: tiny_model("llama"), lambda: config("llama", alpha=0), {"solver": "svd"},
     "lora_alpha must be positive for a residual method"),
    ("negative alpha, residual", lambda: tiny_model("llama"), lambda: config("llama", alpha=-8), {"method": "pissa"},
     "lora_alpha must be positive for a residual method"),
    # torch raises its own ValueError for p > 1 (after the fit); PEFT turns p < 0 or NaN into no dropout
    ("dropout above 1", lambda: tiny_model("llama"), lambda: config("llama", lora_dropout=1.5), {},
     r"lora_dropout must be a number in \[0, 1\), got 1.5"),
    ("negative dropout", lambda: tiny_model("llama"), lambda: config("llama", lora_dropout=-0.1), {"method": "lora"},
     "lora_dropout must be a number in"),
    ("nan dropout", lambda: tiny_model("llama"), lambda: config("llama", lora_dropout=float("nan")), {"method": "pissa"},
     "lora_dropout must be a number in"),
    # every step would train on the residual alone
    ("dropout of 1", lambda: tiny_model("llama"), lambda: config("llama", lora_dropout=1.0), {"solver": "svd"},
     "lora_dropout must be a number in"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_raises_clearly_and_leaves_model_untouched(case):
    _, make_model, make_config, kwargs, message = case
    model = make_model()
    before = model_digest(model)
    kwargs = dict(kwargs)
    method = kwargs.pop("method", "inilora")
    with pytest.raises(inilora.InitError, match=message):
        inilora.get_peft_model(model, make_config(), method=method, progress=False, **kwargs)
    assert model_digest(model) == before
    assert not hasattr(model, "peft_config")


def test_stacking_a_second_residual_adapter_is_refused():
    peft_model = inilora.get_peft_model(tiny_model("llama"), config("llama"), method="pissa", progress=False)
    inner = peft_model.base_model.model
    before = model_digest(inner)
    with pytest.raises(ValueError, match="already carries an IniLoRA residual"):
        inilora.get_peft_model(inner, config("llama"), method="inilora", progress=False)
    with pytest.raises(ValueError, match="not a PeftModel"):
        inilora.get_peft_model(peft_model, config("llama"), method="inilora", progress=False)
    assert model_digest(inner) == before


def test_svd_basis_singular_reproduces_pissa_and_adam_like_differs_only_in_factoring():
    cfg = lambda: config("llama", r=4, alpha=8)
    pissa = inilora.get_peft_model(tiny_model("llama"), cfg(), method="pissa", progress=False).inilora.layers
    singular = inilora.get_peft_model(tiny_model("llama"), cfg(), method="inilora", solver="svd", svd_basis="singular",
                                      progress=False).inilora.layers
    rotated = inilora.get_peft_model(tiny_model("llama"), cfg(), method="inilora", solver="svd",
                                     progress=False).inilora.layers
    for name in pissa:  # the same triplets, up to each one's sign
        signs = torch.sign((pissa[name].A0 * singular[name].A0).sum(dim=1))
        assert torch.allclose(pissa[name].A0, signs[:, None] * singular[name].A0, atol=1e-4)
        assert torch.allclose(pissa[name].B0, signs[None, :] * singular[name].B0, atol=1e-4)
        assert not torch.allclose(rotated[name].A0, pissa[name].A0, atol=1e-3)
        assert torch.allclose(rotated[name].B0 @ rotated[name].A0, pissa[name].B0 @ pissa[name].A0, atol=1e-5)


def test_exclude_modules_and_layers_to_transform_follow_peft(input_ids):
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], layers_to_transform=[1],
                     exclude_modules=["model.layers.1.self_attn.v_proj"])
    model = tiny_model("llama")
    expected = outputs(model, input_ids)
    peft_model = inilora.get_peft_model(model, cfg, method="pissa", progress=False)
    assert list(peft_model.inilora.layers) == ["model.layers.1.self_attn.q_proj"]
    assert (outputs(peft_model, input_ids) - expected).abs().max() <= 1e-5


def test_fp16_model(input_ids):
    model = tiny_model("llama", torch.float16)
    peft_model = inilora.get_peft_model(model, config("llama"), method="inilora", solver="svd", residual_fp32=True,
                                        progress=False)
    assert peft_model.inilora.report.max_drift <= 1e-5
    assert torch.isfinite(outputs(peft_model, input_ids)).all()


def test_the_finite_check_refuses_nan_and_inf_entries_and_accepts_a_finite_weight_whose_sum_overflows():
    from inilora.peft_glue import all_finite

    weight = torch.randn(32, 16, dtype=torch.bfloat16)
    assert all_finite(weight)
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = weight.clone()
        broken[7, 3] = bad
        assert not all_finite(broken)
    huge = torch.full((8, 8), 3e38)  # every entry finite, their fp32 sum is not
    assert not torch.isfinite(huge.sum()) and all_finite(huge)
    huge[2, 2] = float("nan")
    assert not all_finite(huge)


def test_plain_lora_fingerprints_its_unchanged_weight_when_saved_and_refuses_a_merged_one(tmp_path):
    from inilora.layouts import weight_view
    from inilora.state import RELOAD_DTYPES, dtype_name, fingerprint

    model = tiny_model("llama")
    before = {n: fingerprint(weight_view(m)) for n, m in model.named_modules() if n.endswith(tuple(TARGETS["llama"]))}
    in_dtypes = {n: {dtype_name(d): fingerprint(weight_view(m).to(d)) for d in RELOAD_DTYPES}
                 for n, m in model.named_modules() if n.endswith(tuple(TARGETS["llama"]))}
    peft_model = inilora.get_peft_model(model, LoraConfig(r=4, target_modules=TARGETS["llama"]), method="lora")
    layers = peft_model.inilora.layers
    assert all(layer._fingerprint is None for layer in layers.values())  # not taken during the init
    inilora.save_pretrained(peft_model, tmp_path / "adapter")
    assert {name: layer.fingerprint for name, layer in layers.items()} == before  # as an eager one would be
    assert {name: layer.fingerprints for name, layer in layers.items()} == in_dtypes  # and in every reload dtype
    reloaded = inilora.from_pretrained(tiny_model("llama"), tmp_path / "adapter")  # the load checks them
    assert set(reloaded.inilora.layers) == set(before)

    merged = inilora.get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=TARGETS["llama"]),
                                    method="lora")
    merged.merge_adapter()
    with pytest.raises(inilora.InitError, match="merged into the base weight"):
        inilora.save_pretrained(merged, tmp_path / "merged")


# gpt2: Conv1D, its weight held transposed; bf16: the residual rounded to the weight's dtype as it is written
@pytest.mark.parametrize("arch,dtype", [("llama", torch.float32), ("gpt2", torch.float32), ("llama", torch.bfloat16)])
def test_a_residual_written_in_place_block_by_block_is_the_whole_matrix_arithmetic_bit_for_bit(arch, dtype, monkeypatch):
    """A weight becomes ``W − s·B0·A0`` (formed in fp32, rounded to its dtype) a few rows at a time (here 3-5
    blocks per matrix); each entry, and the reported drift, are those of the whole-matrix arithmetic."""
    import inilora.install as install
    from inilora import layouts
    from inilora.layouts import weight_view

    monkeypatch.setattr(install, "_BLOCK_BYTES", 64 * 4 * 20)
    model = tiny_model(arch).to(dtype)
    before = {n: weight_view(m).detach().float().clone() for n, m in model.named_modules()
              if n.endswith(tuple(TARGETS[arch]))}
    config = LoraConfig(r=4, lora_alpha=12, target_modules=TARGETS[arch])
    peft_model = inilora.get_peft_model(model, config, method="pissa", progress=False)
    inner = peft_model.base_model.model
    for row in peft_model.inilora.report.layers:
        layer, state = inner.get_submodule(row.name), peft_model.inilora.layers[row.name]
        A0s, B0s = layouts.split(state.A0, state.B0, layouts.module_layout(layer.get_base_layer()) or layouts.Layout("linear"))
        product = layouts.product(A0s, B0s, state.scaling)[0]
        difference = before[row.name] - product
        expected = difference.to(dtype)
        assert torch.equal(weight_view(layer.get_base_layer()), expected)
        drift = expected.float() + product - before[row.name]
        assert row.max_abs_drift == float(drift.abs().max())
        if dtype != torch.float32:
            assert row.max_abs_drift > 0  # the rounding to bf16 is measured, not assumed away
        assert row.drift == pytest.approx(float(drift.norm() / before[row.name].norm()), rel=1e-5, abs=1e-12)
        assert row.init_error == pytest.approx(float((difference.norm() / before[row.name].norm())), rel=1e-6)

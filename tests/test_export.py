"""``export_lora(..., rank=k)``: the best rank-k approximation of each layer's ``ΔW = s(BA − B0A0)``, written as
a plain PEFT LoRA at rank k with the scaling kept, its per-layer error equal to the SVD's tail."""

import json
import math
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel

import inilora
from conftest import outputs, tiny_model, train_steps
from inilora.truncation import truncate

LAYERS = ["q_proj", "v_proj"]


def trained_model(input_ids, method="pissa", **config):
    cfg = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": LAYERS, **config})
    peft_model = inilora.get_peft_model(tiny_model("llama"), cfg, method=method, progress=False)
    train_steps(peft_model, input_ids, steps=5)
    return peft_model


def delta_w(peft_model, name):
    """The trained update ``s(BA − B0A0)``, formed densely in float64."""
    layer = peft_model.base_model.model.get_submodule(name)
    init = peft_model.inilora.layers[name]
    A, B = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight.double()
    return init.scaling * (B @ A - init.B0.double() @ init.A0.double()).detach()


def exported_delta(path, name, base):
    """What plain PEFT adds to the layer ``name`` of ``base`` when it loads the export at ``path``."""
    plain = PeftModel.from_pretrained(base, str(path))
    layer = plain.base_model.model.get_submodule(name)
    A, B = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight.double()
    return layer.scaling["default"] * (B @ A), layer.r["default"], plain


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_rank_k_export_is_the_truncated_svd_and_reports_its_tail(rslora, k, tmp_path, input_ids):
    peft_model = trained_model(input_ids, use_rslora=rslora)
    with pytest.warns(inilora.ExportTruncationWarning, match=f"rank {k}"):
        written = inilora.export_lora(peft_model, tmp_path / "plain", rank=k, warn_above=0.0)
    assert written == tmp_path / "plain"
    config = json.loads((tmp_path / "plain" / "adapter_config.json").read_text())
    assert config["r"] == k and not config["rank_pattern"] and not config["alpha_pattern"]
    assert config["lora_alpha"] == pytest.approx(8 * (math.sqrt(k / 4) if rslora else k / 4))
    report = json.loads((tmp_path / "plain" / "inilora_export.json").read_text())
    expected_model = tiny_model("llama")
    for name in peft_model.inilora.layers:
        dense = delta_w(peft_model, name)
        U, S, Vh = torch.linalg.svd(dense)
        best = (U[:, :k] * S[:k]) @ Vh[:k]  # Eckart–Young, from the dense SVD
        tail = float(S[k:].square().sum().sqrt() / S.square().sum().sqrt())
        assert report["layers"][name]["relative_error"] == pytest.approx(tail, rel=1e-6, abs=1e-9)
        assert 1e-4 < tail < 1  # a real truncation: the test could fail
        got, rank, _ = exported_delta(tmp_path / "plain", name, tiny_model("llama"))
        assert rank == k
        assert (got - best).abs().max() <= 1e-6 * dense.abs().max()
        with torch.no_grad():  # the model the truncation predicts: original weight plus the best rank-k ΔW
            weight = expected_model.get_submodule(name).weight
            weight += best.to(weight.dtype)
    assert report["max_relative_error"] == max(v["relative_error"] for v in report["layers"].values())
    _, _, plain = exported_delta(tmp_path / "plain", "model.layers.0.self_attn.q_proj", tiny_model("llama"))
    assert (outputs(plain, input_ids) - outputs(expected_model, input_ids)).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["pissa", "lora"])
def test_rank_at_least_the_update_rank_is_exact(method, tmp_path, input_ids):
    peft_model = trained_model(input_ids, method=method)
    expected = outputs(peft_model, input_ids)
    full = 4 if method == "lora" else 8
    with warnings.catch_warnings():
        warnings.simplefilter("error", inilora.ExportTruncationWarning)
        inilora.export_lora(peft_model, tmp_path / "plain", rank=2 * full)
    report = json.loads((tmp_path / "plain" / "inilora_export.json").read_text())
    assert report["max_relative_error"] == 0.0
    assert json.loads((tmp_path / "plain" / "adapter_config.json").read_text())["r"] == full
    plain = PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / "plain"))
    assert (outputs(plain, input_ids) - expected).abs().max() <= 1e-5


def test_patterns_keep_each_layers_scaling_at_the_new_rank(tmp_path, input_ids):
    # v_proj has rank 2, so its ΔW has rank 4 and is exact at k=4 while q_proj (rank 8 ΔW) is truncated
    peft_model = trained_model(input_ids, rank_pattern={"v_proj": 2}, alpha_pattern={"layers.1.self_attn.q_proj": 3},
                               use_rslora=True)
    inilora.export_lora(peft_model, tmp_path / "plain", rank=4, warn_above=1.0)
    report = json.loads((tmp_path / "plain" / "inilora_export.json").read_text())
    for name, init in peft_model.inilora.layers.items():
        got, rank, plain = exported_delta(tmp_path / "plain", name, tiny_model("llama"))
        layer = plain.base_model.model.get_submodule(name)
        assert layer.scaling["default"] == pytest.approx(init.scaling, rel=1e-12)
        assert rank == 4 and report["layers"][name]["rank"] == 4
        dense = delta_w(peft_model, name)
        error = float(torch.linalg.norm(got - dense) / torch.linalg.norm(dense))
        assert error == pytest.approx(report["layers"][name]["relative_error"], rel=1e-5, abs=1e-6)
        if name.endswith("v_proj"):  # rank 2: ΔW has rank 4 = k, written exactly
            assert report["layers"][name]["relative_error"] == 0.0 and error <= 1e-6
        else:
            assert report["layers"][name]["relative_error"] > 1e-4


def test_truncate_never_forms_the_product_and_matches_eckart_young():
    g = torch.Generator().manual_seed(0)
    L, R = torch.randn(50, 6, generator=g), torch.randn(6, 40, generator=g)
    low = truncate(L, R, 2)
    S = torch.linalg.svdvals((L @ R).double())
    assert low.B.shape == (50, 2) and low.A.shape == (2, 40)
    assert low.relative_error == pytest.approx(float(S[2:].norm() / S.norm()), rel=1e-9)
    assert float(torch.linalg.norm((L @ R).double() - low.B.double() @ low.A.double())) == pytest.approx(
        float(S[2:].norm()), rel=1e-5)
    assert truncate(torch.zeros(5, 2), torch.zeros(2, 4), 1).relative_error == 0.0


def test_bad_rank_is_refused_before_writing(tmp_path, input_ids):
    peft_model = trained_model(input_ids)
    for rank in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="rank must be a positive int"):
            inilora.export_lora(peft_model, tmp_path / "plain", rank=rank)
    assert not (tmp_path / "plain").exists()

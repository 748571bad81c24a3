"""Options and the method registry: every bad argument is an InitError naming it, settings that would
be ignored are refused, flat keywords and sub-configs give the same factors, records round-trip."""

import typing

import pytest
import torch
from peft import LoraConfig

import inilora
from inilora.errors import InitError, UnknownOptionError
from inilora.methods import REGISTRY, Method, MethodName
from inilora.methods.base import Factors, per_matrix
from inilora.options import AdamSchedule, InitOptions, RandomizedSVD
from conftest import outputs, tiny_model

BAD_OPTIONS = [
    ({"svd_basis": "orthogonal"}, "svd_basis", "adam-like, singular"),
    ({"randomized_block": 0}, "randomized_block", "positive integer"),
    ({"randomized_niter": -1}, "randomized_niter", "positive integer"),
    ({"drift_warn_threshold": -0.1}, "drift_warn_threshold", "non-negative"),
    ({"early_stop_tol": -1e-3}, "early_stop_tol", r"\[0, 1\)"),
    ({"early_stop_tol": 1.5}, "early_stop_tol", r"\[0, 1\)"),
    ({"early_stop_every": 0}, "early_stop_every", "positive integer"),
    ({"early_stop_tol": 1e-6, "early_stop_every": 500, "steps": 100}, "early_stop_every", "at most steps=100"),
    ({"solver": "Adam"}, "solver", "adam, svd, svd_randomized"),
    ({"steps": 0}, "steps", "positive integer"),
    ({"steps": 2.5}, "steps", "positive integer"),
    ({"lr_decay": 0}, "lr_decay", r"\(0, 1\]"),
    ({"seed": "0"}, "seed", "an int"),
    ({"chunk_mb": 0}, "chunk_mb", "positive"),
    ({"adam": {"steps": 3}}, "adam", "AdamSchedule"),
]


def config(**kw):
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **kw)


@pytest.mark.parametrize("options, name, allowed", BAD_OPTIONS, ids=[next(iter(o)) + "=" + repr(list(o.values())[-1])
                                                                      for o, _, _ in BAD_OPTIONS])
def test_every_bad_option_is_an_init_error_naming_it_and_the_allowed_values(options, name, allowed):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InitError, match=rf"Option {name} must be .*{allowed}"):
        inilora.get_peft_model(model, config(), method="inilora", progress=False, **options)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not hasattr(model, "peft_config")


def test_unknown_method_and_unknown_keyword():
    with pytest.raises(InitError, match="Unknown method 'dora'; choose one of lora, pissa, milora, inilora"):
        inilora.get_peft_model(tiny_model("llama"), config(), method="dora")
    with pytest.raises(UnknownOptionError, match="Unknown option.* sover; known options: .*solver") as info:
        inilora.get_peft_model(tiny_model("llama"), config(), method="inilora", sover="svd")
    assert isinstance(info.value, InitError) and isinstance(info.value, TypeError)


@pytest.mark.parametrize("method, options", [("pissa", {"solver": "adam"}), ("lora", {"steps": 10}),
                                             ("inilora-alpha", {"svd_basis": "singular"}),
                                             ("milora", {"adam": AdamSchedule(steps=10)})])
def test_fit_options_for_a_method_without_a_fit_are_refused(method, options):
    name = next(iter(options))
    with pytest.raises(InitError, match=rf"Option\(s\) {name} configure the IniLoRA fit, which method '{method}' "
                                        r"does not run.*\(inilora\)"):
        inilora.get_peft_model(tiny_model("llama"), config(), method=method, progress=False, **options)


@pytest.mark.parametrize("init", ["pissa", "gaussian", False, "olora"])
def test_a_peft_init_in_the_lora_config_is_refused_not_reset(init):
    model = tiny_model("llama")
    with pytest.raises(InitError, match=rf"LoraConfig\(init_lora_weights={init!r}\) would be overwritten"):
        inilora.get_peft_model(model, config(init_lora_weights=init), method="inilora", solver="svd", progress=False)
    assert not hasattr(model, "peft_config")


def test_sub_configs_and_flat_keywords_give_identical_factors():
    flat = inilora.get_peft_model(tiny_model("llama"), config(), method="inilora", steps=20, lr=1e-3, cache=False,
                                  progress=False).inilora.layers
    nested = inilora.get_peft_model(tiny_model("llama"), config(), method="inilora", adam=AdamSchedule(steps=20, lr=1e-3),
                                    cache=False, progress=False).inilora.layers
    randomized = [inilora.get_peft_model(tiny_model("llama"), config(), method="inilora", solver="svd_randomized",
                                         progress=False, cache=False, **kw).inilora.layers
                  for kw in ({"randomized_niter": 2}, {"randomized": RandomizedSVD(niter=2)})]
    for name in flat:
        assert torch.equal(flat[name].A0, nested[name].A0) and torch.equal(flat[name].B0, nested[name].B0)
        assert torch.equal(randomized[0][name].A0, randomized[1][name].A0)


def test_recorded_options_round_trip_in_the_flat_format():
    options = InitOptions.from_kwargs("inilora", {"solver": "svd_randomized", "steps": 700, "randomized_niter": 3,
                                                  "early_stop_tol": 1e-5, "residual_fp32": True})
    record = options.to_dict()
    assert record["steps"] == 700 and record["randomized_niter"] == 3 and "adam" not in record
    assert InitOptions.from_record(record) == options
    # an adapter saved for pissa records every option, fit ones included: it must still load
    assert InitOptions.from_record(InitOptions(method="pissa").to_dict()).method == "pissa"


def test_cache_key_hashes_exactly_the_solver_settings():
    adam = InitOptions(adam=AdamSchedule(steps=9)).solver_settings()
    assert adam == {"steps": 9, "lr": 5e-4, "lr_decay": 0.9, "lr_decay_every": 5_000, "early_stop_tol": None,
                    "early_stop_every": 500}
    assert InitOptions(solver="svd_randomized").solver_settings() == {"block": 16, "niter": 60}
    assert InitOptions(solver="svd").solver_settings() == {}


def test_method_names_literal_matches_the_registry():
    assert typing.get_args(MethodName) == inilora.METHODS
    assert [m for m in inilora.METHODS if inilora.get_method(m).residual] == [
        "pissa", "milora", "inilora", "inilora-alpha", "inilora-beta"]


def test_a_new_method_is_one_registry_entry(monkeypatch, input_ids):
    """A method whose factors are one scaled copy of the weight's first rows/columns, registered and used
    without touching any other module."""
    def halves(t, options):
        W = t.weight.float()
        return Factors(W[: t.r].contiguous() / 2, torch.eye(W.shape[0], t.r) / t.scaling)

    monkeypatch.setitem(REGISTRY, "halves", Method("halves", residual=True, rank_limited=False,
                                                   compute=per_matrix(halves)))
    model = tiny_model("llama")
    expected = outputs(model, input_ids)
    peft_model = inilora.get_peft_model(model, config(), method="halves", progress=False)
    layer = peft_model.inilora.layers["model.layers.0.self_attn.q_proj"]
    assert torch.count_nonzero(layer.B0) == 4 and peft_model.inilora.is_residual
    assert (outputs(peft_model, input_ids) - expected).abs().max() <= 1e-5

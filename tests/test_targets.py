"""Every layer type PEFT's LoRA adapts (nn.Embedding, nn.Conv1d/2d/3d, expert parameters through
target_parameters) and DoRA, for every residual method: exact at init, bit-identical reload, exact export
and merge, the original base while the adapter is disabled, clear refusals."""

import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel
from torch import nn

import inilora
from conftest import tiny_model
from inilora import layouts
from test_init import model_digest

METHODS = ("inilora", "pissa", "milora", "inilora-alpha", "inilora-beta")
TOL = 1e-5  # fp32, relative to the largest output


class ConvNet(nn.Module):
    """A Conv1d, a strided Conv2d, a 1×1 Conv2d and a Conv3d with a non-cubic kernel."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.p = nn.Conv2d(8, 6, 1)
        self.c3 = nn.Conv3d(3, 5, (2, 3, 3), padding=1)

    def forward(self, x):
        a = self.c1(x.mean(3)).flatten(1)
        b = self.p(self.c2(x)).flatten(1)
        c = self.c3(x.unsqueeze(2).repeat(1, 1, 3, 1, 1)).flatten(1)
        return torch.cat([a, b, c], 1)


def conv_net():
    torch.manual_seed(0)
    return ConvNet().eval()


def moe_model():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_experts=4,
                            num_experts_per_tok=2, decoder_sparse_step=1, head_dim=16)
    return Qwen3MoeForCausalLM(config).eval()


IDS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
IMAGES = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
CASES = {
    "embedding": (lambda: tiny_model("llama"), dict(target_modules=["embed_tokens", "q_proj"]),
                  lambda m: m(IDS).logits),
    "conv": (conv_net, dict(target_modules=["c1", "c2", "p", "c3"]), lambda m: m(IMAGES)),
    "experts": (moe_model, dict(target_modules=["q_proj"],
                                target_parameters=["experts.gate_up_proj", "experts.down_proj"]),
                lambda m: m(IDS).logits),
    "dora": (lambda: tiny_model("llama"), dict(target_modules=["q_proj", "v_proj"], use_dora=True),
             lambda m: m(IDS).logits),
    "dora-conv": (conv_net, dict(target_modules=["c1", "c2", "p", "c3"], use_dora=True), lambda m: m(IMAGES)),
    "dora-embedding": (lambda: tiny_model("llama"), dict(target_modules=["embed_tokens"], use_dora=True),
                       lambda m: m(IDS).logits),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def options(method):
    return {"solver": "svd"} if method == "inilora" else {}


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def perturb(peft_model):
    """What a training step does: every trainable parameter (factors, DoRA magnitudes) moves."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", METHODS)
def test_init_reload_export_merge(case, method, tmp_path):
    make, config, run = CASES[case]
    base = make()
    with torch.no_grad():
        expected = run(base)
        peft_model = inilora.get_peft_model(base, LoraConfig(r=2, lora_alpha=4, **config), method=method,
                                            progress=False, **options(method))
        assert relative(run(peft_model), expected) <= TOL
        assert peft_model.inilora.report.max_drift <= 1e-5
        perturb(peft_model)
        trained = run(peft_model)
        assert relative(trained, expected) > 1e-3  # training moved it: the checks below can fail
        peft_model.save_pretrained(tmp_path / "a")
        reloaded = inilora.from_pretrained(make(), tmp_path / "a")
        assert torch.equal(run(reloaded), trained)
        inilora.export_lora(peft_model, tmp_path / "plain")
        plain = PeftModel.from_pretrained(make(), str(tmp_path / "plain"))
        assert relative(run(plain), trained) <= TOL
        with peft_model.disable_adapter():
            assert relative(run(peft_model), expected) <= TOL
        merged = inilora.merge_and_unload(peft_model)
        assert not any("lora" in n for n, _ in merged.named_parameters())
        assert relative(run(merged), trained) <= TOL


@pytest.mark.parametrize("method", ("inilora", "pissa", "milora", "inilora-alpha"))
def test_dora_magnitude_is_the_row_norm_of_the_original_weight(method):
    model = tiny_model("llama")
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj"))}
    peft_model = inilora.get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                          use_dora=True), method=method, progress=False,
                                        **options(method))
    for name, layer in inilora.peft_glue.lora_layers(peft_model, list(originals)).items():
        magnitude = layer.lora_magnitude_vector["default"].weight
        norms = torch.linalg.vector_norm(originals[name], dim=1)
        assert relative(magnitude, norms) <= 1e-6
        # the layer holds the residual, not W
        assert relative(layer.base_layer.weight, originals[name]) > 1e-2


def test_expert_slices_are_fitted_one_by_one_and_batched_by_the_adam_fit(tmp_path):
    model = moe_model()
    experts = model.model.layers[0].mlp.experts
    down = experts.down_proj.detach().clone()  # E × out × in
    peft_model = inilora.get_peft_model(model, LoraConfig(r=2, lora_alpha=2, target_modules=[],
                                                          target_parameters=["experts.down_proj"]),
                                        method="inilora", solver="adam", steps=200, progress=False,
                                        cache_dir=str(tmp_path))
    state = peft_model.inilora.layers["model.layers.0.mlp.experts.down_proj"]
    A0, B0 = layouts.split(state.A0, state.B0, layouts.Layout("param", 4, True))
    assert A0.shape == (4, 2, 16) and B0.shape == (4, 32, 2)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == 4 * 2 * (16 + 32)
    # each expert's product approximates its own matrix better than any other expert's
    errors = torch.stack([torch.linalg.matrix_norm(B0 @ A0 - down[e]) for e in range(4)])  # errors[e, k]
    assert torch.equal(errors.argmin(dim=0), torch.arange(4))
    # the four slices hit the fit cache on a second init
    again = inilora.get_peft_model(moe_model(), LoraConfig(r=2, lora_alpha=2, target_modules=[],
                                                           target_parameters=["experts.down_proj"]),
                                   method="inilora", solver="adam", steps=200, progress=False, cache_dir=str(tmp_path))
    assert again.inilora.report.cache_hits == 4 and len(list(tmp_path.glob("*.safetensors"))) == 4
    assert torch.equal(again.inilora.layers["model.layers.0.mlp.experts.down_proj"].A0, state.A0)


@pytest.mark.parametrize("layout,weight,a_shape,b_shape", [
    (layouts.Layout("linear"), (6, 5), (2, 5), (6, 2)),
    (layouts.Layout("embedding"), (9, 4), (2, 9), (4, 2)),
    (layouts.Layout("conv"), (6, 3, 3, 2), (2, 3, 3, 2), (6, 2, 1, 1)),
    (layouts.Layout("param", 3, True), (3, 6, 5), (6, 5), (6, 6)),
    (layouts.Layout("param", 3, False), (3, 5, 6), (6, 5), (6, 6)),
])
def test_layouts_round_trip_and_match_peft_delta(layout, weight, a_shape, b_shape):
    W = torch.randn(weight)
    mats = layouts.matrices(W, layout)
    assert torch.equal(layouts.to_weight(mats.clone(), layout, W.shape), W)
    A, B = torch.randn(a_shape), torch.randn(b_shape)
    As, Bs = layouts.split(A, B, layout)
    A2, B2 = layouts.join(As.clone(), Bs.clone(), layout, A.shape, B.shape)
    assert torch.equal(A2, A) and torch.equal(B2, B)
    assert mats.shape == (layout.experts, Bs.shape[1], As.shape[2])


def grouped():
    model = conv_net()
    model.c2 = nn.Conv2d(4, 8, 3, groups=2)
    return model


def dilated():
    model = conv_net()
    model.c2 = nn.Conv2d(3, 8, 3, dilation=2)
    return model


BAD = [
    ("grouped conv", grouped, dict(target_modules=["c2"]), {}, r"Layer 'c2' is a grouped Conv2d \(groups=2\)"),
    ("dilated conv", dilated, dict(target_modules=["c2"]), {}, r"Layer 'c2' is a dilated Conv2d"),
    ("4-bit conv", conv_net, dict(target_modules=["c2"]), {"quantize": "nf4"}, "Linear4bit residual"),
    ("dora experts", moe_model, dict(target_modules=[], target_parameters=["experts.down_proj"], use_dora=True), {},
     "use_dora=True cannot be used with target_parameters"),
    ("dropout experts", moe_model, dict(target_modules=[], target_parameters=["experts.down_proj"], lora_dropout=0.1),
     {}, "lora_dropout=0.1 cannot be used with target_parameters"),
    ("no parameter", moe_model, dict(target_modules=[], target_parameters=["experts.nope"]), {},
     "No parameter matches"),
    ("layer norm", lambda: tiny_model("llama"), dict(target_modules=["input_layernorm"]), {},
     "is a LlamaRMSNorm; inilora supports nn.Linear"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_unsupported_targets_are_refused_before_the_model_is_touched(case):
    _, make, config, kwargs, message = case
    model = make()
    before = model_digest(model)
    with warnings.catch_warnings(), pytest.raises(inilora.InitError, match=message):
        warnings.simplefilter("ignore")
        inilora.get_peft_model(model, LoraConfig(r=2, **config), method="pissa", progress=False, **kwargs)
    assert model_digest(model) == before


def test_dora_on_a_4bit_residual_takes_its_magnitude_from_what_the_layer_computes(tmp_path):
    pytest.importorskip("bitsandbytes")
    from inilora.quantize import dequantize

    model = tiny_model("llama")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True)
    peft_model = inilora.get_peft_model(model, config, method="pissa", quantize="nf4", progress=False)
    for name, layer in inilora.peft_glue.lora_layers(peft_model, list(peft_model.inilora.layers)).items():
        state = peft_model.inilora.layers[name]
        effective = dequantize(layer.get_base_layer().weight) + state.scaling * state.B0 @ state.A0
        assert relative(layer.lora_magnitude_vector["default"].weight, torch.linalg.vector_norm(effective, dim=1)) <= 1e-6
    perturb(peft_model)
    with torch.no_grad():
        trained = peft_model(IDS).logits
    peft_model.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(inilora.from_pretrained(tiny_model("llama"), tmp_path / "a")(IDS).logits, trained)


@pytest.mark.parametrize("case", ["embedding", "experts", "dora"])
def test_residual_model_and_initial_adapter_load_in_plain_peft(case, tmp_path):
    make, config, run = CASES[case]
    make().save_pretrained(tmp_path / "base")
    peft_model = inilora.get_peft_model(make(), LoraConfig(r=2, lora_alpha=4, **config), method="pissa", progress=False)
    with torch.no_grad():
        expected = run(peft_model)
    inilora.save_residual_model(peft_model, tmp_path / "out")
    residual = type(make()).from_pretrained(tmp_path / "out" / "residual_model").eval()
    with torch.no_grad():
        assert relative(run(residual), expected) > 1e-3  # the residual alone is not the model
        plain = PeftModel.from_pretrained(residual, str(tmp_path / "out" / "adapter"))
        assert relative(run(plain), expected) <= TOL

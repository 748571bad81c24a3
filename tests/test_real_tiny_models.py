"""Real architectures built from tiny configs, through the whole flow: a diffusers UNet2DConditionModel
(convolutions and attention), a transformers ViT (its patch embedding is a Conv2d) and a Qwen3-MoE model
(3-D expert parameters): exact at init, one optimizer step, bit-identical reload, exact export."""

import pytest
import torch
from peft import LoraConfig, PeftModel

import inilora


def unet():
    UNet2DConditionModel = pytest.importorskip("diffusers").UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=2, norm_num_groups=4).eval()


def vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=48, image_size=16, patch_size=4,
                                               num_labels=3)).eval()


def moe():
    from test_targets import moe_model

    return moe_model()


g = torch.Generator().manual_seed(0)
LATENTS, TEXT = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 8, generator=g)
PIXELS, IDS = torch.randn(2, 3, 16, 16, generator=g), torch.randint(0, 64, (2, 7), generator=g)
MODELS = {
    # a diffusion loss: predict the noise
    "unet": (unet, ["conv_in", "conv1", "conv2", "to_q", "to_v", "proj_in"],
             lambda m: m(LATENTS, 10, encoder_hidden_states=TEXT).sample, lambda out: (out - LATENTS).square().mean()),
    "vit": (vit, ["projection", "q_proj", "v_proj"], lambda m: m(pixel_values=PIXELS).logits,
            lambda out: torch.nn.functional.cross_entropy(out, torch.tensor([0, 2]))),
    "moe": (moe, dict(target_modules=["q_proj"], target_parameters=["experts.gate_up_proj", "experts.down_proj"]),
            lambda m: m(IDS).logits, lambda out: out.logsumexp(-1).mean()),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


CASES = [("unet", "inilora"), ("unet", "inilora-alpha"), ("vit", "inilora"), ("vit", "pissa"), ("moe", "inilora"),
         ("moe", "milora")]


@pytest.mark.parametrize("name,method", CASES)
def test_real_tiny_model_end_to_end(name, method, tmp_path):
    make, targets, run, loss_of = MODELS[name]
    config = LoraConfig(r=2, lora_alpha=4, **(targets if isinstance(targets, dict) else {"target_modules": targets}))
    base = make()
    with torch.no_grad():
        expected = run(base)
    peft_model = inilora.get_peft_model(base, config, method=method, progress=False,
                                        **({"solver": "svd"} if method == "inilora" else {}))
    kinds = {type(m.get_base_layer()).__name__ for m in peft_model.modules() if hasattr(m, "lora_A")}
    drift = peft_model.inilora.report.max_drift
    with torch.no_grad():  # the same model, up to the residual's fp32 rounding (the report's drift) as the network
        # amplifies it: α's large random product leaves a drift of 6e-7 and moves the UNet's output by 1.1e-5 on one
        # CPU, under 1e-5 on another; the others drift ≤ 2.3e-8 and move it ≤ 8.3e-7. A wrong residual moves it O(1)
        assert relative(run(peft_model), expected) <= max(1e-5, 50 * drift)
    assert drift <= 1e-5
    assert {"unet": {"Conv2d", "Linear"}, "vit": {"Conv2d", "Linear"}, "moe": {"Linear", "Qwen3MoeExperts"}}[name] <= kinds
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    loss_of(run(peft_model)).backward()
    optimizer.step()
    peft_model.eval()
    with torch.no_grad():
        trained = run(peft_model)
        assert relative(trained, expected) > 1e-4
        peft_model.save_pretrained(tmp_path / "adapter")
        assert torch.equal(run(inilora.from_pretrained(make(), tmp_path / "adapter")), trained)
        inilora.export_lora(peft_model, tmp_path / "plain")
        assert relative(run(PeftModel.from_pretrained(make(), str(tmp_path / "plain"))), trained) <= 1e-5
        assert relative(run(inilora.merge_and_unload(peft_model)), trained) <= 1e-5

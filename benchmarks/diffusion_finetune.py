"""A CPU-sized diffusion fine-tune end to end: every method on a tiny diffusers UNet2DConditionModel.

A tiny UNet (built from a config) is first trained briefly as the "pretrained" model to denoise one
family of synthetic 4×16×16 images (Gaussian blobs, conditioned on their position); each method then
adapts its convolutions and attention projections (r=4) to a new family (squares), with the DDPM
noise-prediction loss. Recorded per method: the initialized model's largest output difference from the
base, the held-out diffusion loss before/after and along the way, that the saved adapter reloads
bit-identically, and the exported plain PEFT adapter's and merged model's differences from the trained
model. It shows the flow working on a diffusion model; with one learning rate and one seed it is no
comparison of the methods. Writes results/diffusion_finetune.json.
Run: PYTHONPATH=src python benchmarks/diffusion_finetune.py [--pretrain-steps 60] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel

import inilora

BATCH = 8
OUT = Path(__file__).resolve().parents[1] / "results" / "diffusion_finetune.json"
TARGETS = ["conv_in", "conv1", "conv2", "conv_out", "to_q", "to_k", "to_v", "proj_in", "proj_out"]
METHODS = ("lora", "pissa", "inilora", "inilora-alpha")


def unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=8)


def images(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of one family and their conditions (the shape's centre, one-hot over a 4×4 grid)."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, 16, (n,), generator=g)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    out = torch.empty(n, 4, 16, 16)
    for i, cell in enumerate(cells.tolist()):
        cy, cx = 2 + 4 * (cell // 4), 2 + 4 * (cell % 4)
        if kind == "blobs":
            shape = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / 6.0)
        else:
            shape = (((ys - cy).abs() <= 2) & ((xs - cx).abs() <= 2)).float()
        out[i] = shape * torch.tensor([1.0, -0.5, 0.8, 0.3])[:, None, None] * 2 - 0.5
    condition = torch.nn.functional.one_hot(cells, 16).float()[:, None, :]
    return out, condition


def diffusion_loss(model, scheduler, x0, condition, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g)
    pred = model(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=condition).sample
    return torch.nn.functional.mse_loss(pred, noise)


def train(model, scheduler, data, steps: int, lr: float, eval_batch, every: int = 10) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    x, c = data
    curve = []
    for step in range(steps + 1):
        if step % every == 0:
            model.eval()
            with torch.no_grad():
                curve.append({"step": step, "eval_loss": float(diffusion_loss(model, scheduler, *eval_batch, seed=7))})
        if step == steps:
            break
        model.train()
        idx = torch.randint(0, len(x), (BATCH,), generator=torch.Generator().manual_seed(step))
        loss = diffusion_loss(model, scheduler, x[idx], c[idx], seed=1000 + step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return curve


def main() -> None:
    from diffusers import DDPMScheduler

    from inilora.experiments.provenance import machine

    parser = argparse.ArgumentParser()
    parser.add_argument("--pretrain-steps", type=int, default=60)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small convolutions: one thread is the fastest on a shared CPU
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    scheduler = DDPMScheduler(num_train_timesteps=100)
    pretrain = images("blobs", 256, seed=0)
    work = tempfile.mkdtemp()
    base = unet()
    pretrain_curve = train(base, scheduler, pretrain, args.pretrain_steps, 2e-3, images("blobs", 32, seed=1))
    base.save_pretrained(f"{work}/base")
    print(f"pretrained: eval loss {pretrain_curve[0]['eval_loss']:.4f} -> {pretrain_curve[-1]['eval_loss']:.4f}", flush=True)

    def load():
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(f"{work}/base").eval()

    new_task, held_out = images("squares", 256, seed=2), images("squares", 32, seed=3)
    probe = (held_out[0][:4] * 0.5, torch.full((4,), 30), held_out[1][:4])
    run = lambda m: m(probe[0], probe[1], encoder_hidden_states=probe[2]).sample  # noqa: E731
    results = []
    for method in METHODS:
        t0 = time.perf_counter()
        model = load()
        with torch.no_grad():
            expected = run(model)
        peft_model = inilora.get_peft_model(model, LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS), method=method,
                                            progress=False, **({"solver": "svd"} if method == "inilora" else {}))
        with torch.no_grad():
            init_diff = float((run(peft_model) - expected).abs().max() / expected.abs().max())
        kinds = sorted({type(m.get_base_layer()).__name__ for m in peft_model.modules() if hasattr(m, "lora_A")})
        layers, drift = len(peft_model.inilora.layers), peft_model.inilora.report.max_drift
        curve = train(peft_model, scheduler, new_task, args.steps, args.lr, held_out)
        with torch.no_grad():
            trained = run(peft_model)
            peft_model.save_pretrained(f"{work}/{method}")
            reload_equal = torch.equal(run(inilora.from_pretrained(load(), f"{work}/{method}")), trained)
            inilora.export_lora(peft_model, f"{work}/{method}-plain")
            export = float((run(PeftModel.from_pretrained(load(), f"{work}/{method}-plain")) - trained).abs().max()
                           / trained.abs().max())
            merged = float((run(inilora.merge_and_unload(peft_model)) - trained).abs().max() / trained.abs().max())
        row = {"method": method, "layer_types": kinds, "layers": layers,
               "init_max_relative_output_difference": init_diff, "init_max_drift": drift,
               "eval_loss_before": curve[0]["eval_loss"], "eval_loss_after": curve[-1]["eval_loss"], "curve": curve,
               "reload_bit_identical": reload_equal, "export_max_relative_difference": export,
               "merge_max_relative_difference": merged, "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
        results.append(row)
    OUT.write_text(json.dumps({
        "what": __doc__.split("\n\n")[0], "model": "diffusers UNet2DConditionModel from a config (16/32 channels, "
        "cross-attention, sample 16x16x4)", "targets": TARGETS, "r": 4, "lora_alpha": 4, "lr": args.lr,
        "steps": args.steps, "batch": BATCH, "pretrain": {"steps": args.pretrain_steps, "curve": pretrain_curve},
        "caveat": "one learning rate and one seed: a demonstration of the flow, not a comparison of methods",
        "seconds": round(time.perf_counter() - start, 1), "machine": machine(),
        "versions": {"torch": torch.__version__, "peft": __import__("peft").__version__,
                     "diffusers": __import__("diffusers").__version__},
        "methods": results}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

"""Pack what the accelerator run needs of the real models into a folder small enough to travel (the device
tool carries at most 64 MiB; the MiniLM and SmolLM2 packages are 83 and 94 MB): per model its
``config.json`` and only its q/v target matrices (``targets.safetensors``). The fit benchmark touches nothing
else, so ``fit_benchmark.py --pack DIR`` builds each model from its config and loads these matrices into it.

MiniLM's targets stay fp32 (7 MB). SmolLM2's are stored fp16 (26 MB; fp32 would not fit beside the
code): its weights come from a 4-bit GGUF file, so fp16 rounds them by a relative ~5e-4 at most — the
benchmark's errors are scored against the optimum of the matrices it is given, so its ratios are unaffected.

    python benchmarks/gpu_pack.py --out .gpu          # then carry .gpu (ignored by .git/info/exclude)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import TARGETS, load, target_weights  # noqa: E402

STORED = {"minilm": "float32", "smollm2": "float16"}


def pack(model_name: str, out: Path) -> dict:
    """Write ``out/<model>/config.json`` and ``targets.safetensors``; returns what was written."""
    import torch
    from safetensors.torch import save_file

    model = load(model_name, "cpu", "float32")
    folder = out / model_name
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(str(folder / "config.json"))
    dtype = getattr(torch, STORED[model_name])
    real = target_weights(model, model_name)
    weights = {f"{name}.weight": W.to(dtype).contiguous() for name, W in real.items()}
    save_file(weights, str(folder / "targets.safetensors"), metadata={"dtype": STORED[model_name]})
    worst = max(float((stored.float() - W).abs().max() / W.abs().max())
                for stored, W in zip(weights.values(), real.values()))
    return {"model": model_name, "matrices": len(weights), "dtype": STORED[model_name],
            "bytes": (folder / "targets.safetensors").stat().st_size, "worst_relative_rounding": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=sorted(TARGETS), choices=sorted(TARGETS))
    parser.add_argument("--out", type=Path, default=HERE.parent / ".gpu")
    args = parser.parse_args()
    written = [pack(name, args.out) for name in args.models]
    (args.out / "pack.json").write_text(json.dumps(written, indent=1) + "\n")
    for entry in written:
        print(entry)


if __name__ == "__main__":
    main()

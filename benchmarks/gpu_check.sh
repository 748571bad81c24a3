#!/usr/bin/env bash
# The one prepared accelerator run (none has run yet: no GPU was lent so far). About 8 minutes on an H100:
#  1. benchmarks/gpu_7b.py: a Llama-2-7B-shaped model in bf16 on the GPU, inilora's initializations end to end
#     (time, peak GPU memory, logit change, one training step) beside PEFT's own PiSSA;
#  2. benchmarks/fit_benchmark.py on CUDA (fp32, r = 8): the fit benchmark's cells on MiniLM's and SmolLM2's
#     real q/v matrices, for the README's GPU column next to the CPU one.
# Everything it writes lands in $OUT (gpu_7b.json/.md, fit_benchmark_cuda.json/.md, log.txt).
#
# The device image has torch, transformers, peft and safetensors; nothing else is needed. The models'
# packages are too large to travel (the tool carries 64 MiB), so only their target matrices go. Before calling
# (on the CPU machine, in the repo root):
#   grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
#   PYTHONPATH=src .venv/bin/python benchmarks/gpu_pack.py --out .gpu      # 33 MB
#   device run with carry [".gpu"], command: bash benchmarks/gpu_check.sh, timeout_s 560
# Then, here: copy the files into results/gpu/ and commit them.
set -uo pipefail
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 INILORA_CACHE=/tmp/inilora-cache PYTHONUNBUFFERED=1
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
timeout 270 python3 benchmarks/gpu_7b.py --budget 200 --out "$OUT/gpu_7b" || echo "gpu_7b: stopped ($?)"
for model in smollm2 minilm; do
  timeout 120 python3 benchmarks/fit_benchmark.py --pack .gpu --device cuda --dtype float32 --models "$model" \
      --ranks 8 --out "$OUT/fit_benchmark_cuda.json" || echo "fit benchmark $model: stopped ($?)"
done

#!/usr/bin/env bash
# The one prepared accelerator run, at most about 8 minutes (each step has its own time limit):
#  1. benchmarks/gpu_7b.py: a Llama-2-7B-shaped model in bf16 on the GPU, inilora's initializations end to end
#     (time, peak GPU memory, logit change, one training step) beside PEFT's own PiSSA;
#  2. benchmarks/fit_benchmark.py on CUDA (fp32, r = 8): the fit benchmark's cells on MiniLM's and SmolLM2's
#     real q/v matrices, for the README's GPU column next to the CPU one.
# Everything it writes lands in $OUT (gpu_7b.json/.md, init_speed_cuda.json/.md, fit_benchmark_cuda.json/.md, log.txt).
#
# The device image has torch, transformers and safetensors; peft travels as the wheel constraints.txt pins (the
# image's own peft is whatever its recipe took). The models' packages are too large to travel (the tool carries
# 64 MiB), so only their target matrices go. Before calling (on the CPU machine, in the repo root):
#   grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
#   PYTHONPATH=src .venv/bin/python benchmarks/gpu_pack.py --out .gpu      # 33 MB
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .gpu/whl "$(grep ^peft== constraints.txt)"
#   device run with carry [".gpu"], command: GIT_COMMIT=<git rev-parse HEAD> bash benchmarks/gpu_check.sh, timeout_s 480
# Then, here: copy the files into results/gpu/ and commit them.
set -uo pipefail
if ls .gpu/whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit
fi
export PYTHONPATH=$PWD/src:/tmp/site HF_HUB_OFFLINE=1 INILORA_CACHE=/tmp/inilora-cache PYTHONUNBUFFERED=1
exec > >(tee "$OUT/log.txt") 2>&1
echo "inilora commit ${GIT_COMMIT:-unknown (set GIT_COMMIT)}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
timeout 170 python3 benchmarks/gpu_7b.py --budget 120 --out "$OUT/gpu_7b" || echo "gpu_7b: stopped ($?)"
# 3. benchmarks/init_speed.py on CUDA: inilora / PEFT time and error (lora, closed form vs pissa, svd_randomized vs
#    pissa_niter_4) on the model-shaped and 7B-shaped layers; each shape writes its rows as it finishes
for shape in minilm smollm2 4096x4096 4096x11008 11008x4096; do
  timeout 30 python3 benchmarks/init_speed.py --device cuda --threads 16 --models "$shape" --ranks 8 16 64 \
      --repeats 3 --out "$OUT/init_speed_cuda.json" || echo "init_speed $shape: stopped ($?)"
done
for model in smollm2 minilm; do
  timeout 75 python3 benchmarks/fit_benchmark.py --pack .gpu --device cuda --dtype float32 --models "$model" \
      --ranks 8 --out "$OUT/fit_benchmark_cuda.json" || echo "fit benchmark $model: stopped ($?)"
done

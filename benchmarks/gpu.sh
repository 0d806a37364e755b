#!/usr/bin/env bash
# The GPU suite in one command (under 10 minutes on an H100/H200): the tests marked `gpu`, then
# the CUDA benchmark on the Llama-1.1B, GPT-2 small and 20k-tiny workloads (fp32 and bf16 params
# with float32 shadows), ceilings measured in the same run. Files go under $OUT when it is set
# (the device tool brings them back), else under benchmarks/results/.
#
# On the device machine, packages it lacks (array-api-compat, ...) travel as wheels in .whl/:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 -d .whl array-api-compat
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu-device.txt"
status=0
python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu-tests.log" || status=1
python3 -m benchmarks --device cuda --big --workload llama_1b --workload gpt2_small \
    --workload many_small_20k --backend torch --backend cupy --backend jax --out "$out" \
    2>&1 | tee "$out/gpu-bench.log" || status=1
exit "$status"

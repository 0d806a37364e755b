#!/usr/bin/env bash
# The GPU suite in one command (under 10 minutes on an H100/H200): the tests marked `gpu`, then
# the CUDA benchmark on the Llama-1.1B, GPT-2 small and 20k-tiny workloads (fp32 and bf16 params
# with float32 shadows), ceilings measured in the same run. Files go under $OUT when it is set
# (the device tool brings them back), else under benchmarks/results/.
#
# The device machine has Python 3.12 with torch, JAX, CuPy, Triton, optax and pytest only, and
# reaches nothing outside it: the packages it lacks (array-api-compat, hypothesis, ...) travel as
# wheels in .whl/, filled beforehand by `bash scripts/gpu_wheels.sh` and carried by the device
# tool (`carry: [".whl"]`); see DEVELOPERS.md, "First GPU session". Without them it stops at
# once (exit 2) rather than spend device time on a run that cannot collect the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    rm -rf /tmp/site  # pip --target skips what a previous run on a warm machine left there
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if ! python3 -c "import array_api_compat, hypothesis" 2>"$out/gpu-missing.txt"; then
    cat "$out/gpu-missing.txt" >&2
    echo "missing wheels: run 'bash scripts/gpu_wheels.sh' and carry .whl (DEVELOPERS.md)" >&2
    exit 2
fi
rm -f "$out/gpu-missing.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu-device.txt"
status=0
# a module that fails to import is reported, and the gpu tests elsewhere still run
# each part has its own time limit, so that the benchmark runs even if the tests hang, and the
# whole script stays inside the device tool's one-command limit
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors \
    tests 2>&1 | tee "$out/gpu-tests.log" || status=1
timeout 280 python3 -m benchmarks --device cuda --big --workload llama_1b --workload gpt2_small \
    --workload many_small_20k --backend torch --backend cupy --backend jax --out "$out" \
    2>&1 | tee "$out/gpu-bench.log" || status=1
exit "$status"

#!/usr/bin/env bash
# The GPU suite in two commands, each sized for the device tool's one-command limit (600 s):
# the default run is the tests marked `gpu`, then the CUDA benchmark on the GPT-2 small and
# 20k-tiny workloads (fp32 and bf16 params with float32 shadows), ceilings measured in the same
# run; --big is a second command, for its own call of the device tool. Files go under $OUT when
# it is set (the device tool brings them back), else under benchmarks/results/.
#
#   bash benchmarks/gpu.sh             tests + GPT-2 small and 20k tiny (about 7 minutes on an
#                                      H200), and where JAX's make_update time goes (jax_host.py)
#   bash benchmarks/gpu.sh --big       instead: Llama-1.1B, and CuPy and JAX on 20k tiny (a second
#                                      call: at most about 9.5 minutes; no tests)
#   bash benchmarks/gpu.sh --dry-run   [--big]: list the parts, their limits and the total; run
#                                      nothing, write nothing
#   GPU_TESTS="tests/a.py ..." bash benchmarks/gpu.sh    only those test files
#   GPU_PARTS="torch cupy" GPU_TEST_SECONDS=90 ...     only those benchmark parts; the tests' limit
#
# Llama-1.1B is left to --big: on the first H200 run (2026-12-04) drawing its host arrays and
# building the peers took 65 s per torch case, and JAX did not finish one case in 60 s; JAX
# traced the 20k-leaf update for longer than its 30 s. GPT-2 small (124M parameters, 1.5 GB
# streamed per fp32 update) already measures the bandwidth. Run 3 (2026-12-04) needed 143 s for
# the torch part with its peers (its last case, 20k tiny bf16, alone 71 s: timm and
# AveragedModel take 160 ms per update on 20k tiny tensors), and CuPy did not finish its
# 20k-tiny case in 110 s (its host work per array): CuPy
# runs GPT-2 small only, unless --big. Since then a contender slower than 150 ms per update
# (timm, AveragedModel and CuPy's python_loop on 20k tiny arrays) is not queued
# (harness.QUEUED_MAX_MS): its 63 queued updates were most of those cases' time.
#
# The device machine has Python 3.12 with torch, JAX, CuPy, Triton, optax and pytest only, and
# reaches nothing outside it: the packages it lacks (array-api-compat, hypothesis, ...) travel as
# wheels in .whl/, filled beforehand by `bash scripts/gpu_wheels.sh` and carried by the device
# tool (`carry: [".whl"]`); see DEVELOPERS.md, "First GPU session". Without them it stops at
# once (exit 2) rather than spend device time on a run that cannot collect the tests.
#
# Time limits: each part has its own, so the benchmark runs even if the tests hang. Before
# anything runs, the script adds up the limits of the parts it will run, each with its kill
# grace, and SETUP_SECONDS for the wheels and versions: over BUDGET_SECONDS (the device tool's
# 600 s for one command) it stops (exit 2) rather than be cut by the tool with its last parts
# lost. A limit sends SIGINT first: pytest then still prints its summary (failures so far), and
# a benchmark writes the rows it measured (exit status 130). The benchmark runs once per
# backend in its own process, each writing its own files (--tag), so a slow one costs only its
# own results, and no framework's cache holds memory another needs.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,15p' benchmarks/gpu.sh | sed 's/^# \{0,1\}//'; }
big=0 dry=0
for arg in "$@"; do
    case "$arg" in
        --big) big=1 ;;
        --dry-run) dry=1 ;;
        -h | --help) usage && exit 0 ;;
        *) echo "gpu.sh: unknown argument '$arg'" >&2 && usage >&2 && exit 2 ;;
    esac
done
parts=" ${GPU_PARTS:-torch cupy jax} "
for part in $parts; do
    if [[ " torch cupy jax " != *" $part "* ]]; then
        echo "gpu.sh: GPU_PARTS: unknown part '$part' (torch, cupy, jax)" >&2
        exit 2
    fi
done
test_seconds="${GPU_TEST_SECONDS:-150}"
if ! [[ $test_seconds =~ ^[1-9][0-9]{0,4}$ ]]; then
    echo "gpu.sh: GPU_TEST_SECONDS must be a whole number of seconds, got '$test_seconds'" >&2
    exit 2
fi
BUDGET_SECONDS=600 SETUP_SECONDS=30
out="${OUT:-benchmarks/results}"
status=0 mode=plan total=$SETUP_SECONDS

planned() {  # planned SECONDS GRACE WHAT: true while planning (the part counted), then false
    [ "$mode" = run ] && return 1
    total=$((total + $1 + $2))
    if [ "$dry" = 1 ]; then printf '%5d s + %2d s  %s\n' "$1" "$2" "$3"; fi
    return 0
}
gpu_tests() {  # gpu_tests SECONDS
    planned "$1" 15 "tests marked gpu: ${GPU_TESTS:-tests}" && return 0
    # a module that fails to import is reported, and the gpu tests elsewhere still run; -v names
    # each test as it ends, so a cut log still shows how far it got
    # JAX would take 75% of the GPU at its first array, leaving the torch tests of the same
    # process the rest; the suite allocates little, so JAX allocates on demand here. The
    # machine's torch, JAX and CuPy are not the lock's versions: their deprecation notices are
    # shown, not raised (pyproject's filterwarnings = error would fail every test they touch).
    XLA_PYTHON_CLIENT_PREALLOCATE=false \
        timeout -s INT -k 15 "$1" python3 -m pytest -v -m gpu -p no:cacheprovider \
        -W default::DeprecationWarning -W default::FutureWarning \
        --continue-on-collection-errors --durations=15 ${GPU_TESTS:-tests} 2>&1 |
        tee "$out/gpu-tests.log" || status=1
}
bench() {  # bench SECONDS TAG BACKEND [ARGS...]: one process, its own files and log
    local seconds="$1" tag="$2" backend="$3"
    shift 3
    planned "$seconds" 10 "benchmark $tag: --backend $backend $*" && return 0
    timeout -s INT -k 10 "$seconds" python3 -m benchmarks --device cuda --backend "$backend" \
        --tag "$tag" --out "$out" "$@" 2>&1 | tee "$out/gpu-bench-$tag.log" || status=1
}
jax_host() {  # jax_host SECONDS: where make_update's time goes beside a jitted tree_map
    planned "$1" 5 "python -m benchmarks.jax_host --device cuda" && return 0
    timeout -s INT -k 5 "$1" python3 -m benchmarks.jax_host --device cuda 2>&1 |
        tee "$out/gpu-jax-host.log" || status=1
}
run_parts() {  # the parts of this command, in order: planned first, then run
    if [ "$big" = 0 ]; then
        gpu_tests "$test_seconds"
        [[ $parts == *" torch "* ]] && bench 200 torch torch --workload gpt2_small \
            --workload many_small_20k
        [[ $parts == *" cupy "* ]] && bench 40 cupy cupy --no-peers --workload gpt2_small
        if [[ $parts == *" jax "* ]]; then
            bench 45 jax jax --no-peers --workload gpt2_small
            jax_host 25  # run 3: make_update 1.933 against tree_map's 1.297 ms
        fi
        return 0
    fi
    # --big: the limits trimmed (from 100, 70, 90, 150 and 150 s) to fit one command; torch's
    # two Llama cases took 70 and 74 s on an H100 (2026-12-05: 100 s cut the second), CuPy's
    # 20k-tiny case is left what remains (a cut case keeps the rows it measured)
    [[ $parts == *" torch "* ]] && bench 160 torch-llama torch --workload llama_1b
    [[ $parts == *" cupy "* ]] && bench 60 cupy-llama cupy --no-peers --workload llama_1b
    [[ $parts == *" jax "* ]] && bench 90 jax-llama jax --no-peers --workload llama_1b
    [[ $parts == *" cupy "* ]] && bench 50 cupy-20k cupy --no-peers --workload many_small_20k \
        --dtype fp32
    # XLA traces and compiles a 20k-leaf update for a long time: fp32 only (run 3: 115 s)
    [[ $parts == *" jax "* ]] && bench 130 jax-20k jax --no-peers --workload many_small_20k \
        --dtype fp32
    return 0
}

run_parts
if [ "$dry" = 1 ]; then
    echo "total $total s (setup $SETUP_SECONDS s included; budget $BUDGET_SECONDS s)"
fi
if [ "$total" -gt "$BUDGET_SECONDS" ]; then
    echo "gpu.sh: the parts' limits add up to $total s (setup $SETUP_SECONDS s included), over" \
        "the device tool's $BUDGET_SECONDS s for one command: lower GPU_TEST_SECONDS or name" \
        "fewer GPU_PARTS" >&2
    exit 2
fi
[ "$dry" = 1 ] && exit 0
mode=run
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
# informative only: a machine without nvidia-smi still runs the suite
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 |
    tee "$out/gpu-device.txt" || true
# the framework versions the device machine holds (they differ from the lock's)
python3 - <<'EOF' 2>&1 | tee -a "$out/gpu-device.txt" || true
import importlib.metadata as m, platform
print("python", platform.python_version())
for n in ("torch", "jax", "jaxlib", "cupy-cuda13x", "triton", "numpy", "array-api-compat",
          "hypothesis", "optax"):
    try:
        print(n, m.version(n))
    except m.PackageNotFoundError:
        print(n, "not installed")
EOF
run_parts
exit "$status"

#!/usr/bin/env bash
# Fill .whl/ with the wheels the GPU device machine lacks, before a GPU session.
#
# The device machine has Python 3.12 with torch, JAX, CuPy, Triton, optax and pytest, and
# nothing else can be reached from it: every other package that `pytest -m gpu tests` (its
# collection included) or `python -m benchmarks` imports travels with the repository as a
# wheel in .whl/ (git-ignored; the device tool's `run` carries it with `carry: [".whl"]`), and
# benchmarks/gpu.sh installs them with `pip install --no-index --no-deps --target /tmp/site`.
#
#   array-api-compat   ema-core's one runtime dependency
#   hypothesis         tests/conftest.py imports it (a settings profile), and so do several
#                      test modules that are collected before `-m gpu` deselects their tests
#   sortedcontainers   hypothesis's one dependency
#
# Versions are the ones requirements-dev.lock pins. A wheel whose file is the one the lock
# names (pure Python, py3-none-any) is checked against the lock's sha256; a compiled one
# (cp312 here, cp311 in the lock) cannot be, and its sha256 is printed instead.
#
# Usage, from anywhere: bash scripts/gpu_wheels.sh   (PYTHON=... picks the pip to run)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
lock=requirements-dev.lock
packages=(array-api-compat hypothesis sortedcontainers)

# "hypothesis==6.170.17" for a package, with the lock's spelling of the name (- or _).
pin() {
    grep -iE "^${1//[-_]/[-_]}==" "$lock" | sed 's/ .*//' ||
        { echo "$1: not in $lock" >&2; return 1; }
}

# The sha256 the lock gives for a package (the line after its pin).
locked_hash() {
    grep -iE -A1 "^${1//[-_]/[-_]}==" "$lock" | sed -n 's/.*--hash=sha256:\([0-9a-f]*\).*/\1/p'
}

pins=()
for name in "${packages[@]}"; do
    pins+=("$(pin "$name")")
done

mkdir -p .whl
rm -f .whl/*.whl  # a stale version would be installed next to the new one
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d .whl "${pins[@]}"

status=0
for name in "${packages[@]}"; do
    file=$(ls .whl/"${name//-/_}"-*.whl 2>/dev/null | head -n 1) || true
    if [ -z "$file" ]; then
        echo "$name: no wheel downloaded" >&2
        status=1
        continue
    fi
    got=$(sha256sum "$file" | cut -d' ' -f1)
    case "$file" in
    *-none-any.whl)
        if [ "$got" != "$(locked_hash "$name")" ]; then
            echo "$file: sha256 $got is not the one $lock names" >&2
            status=1
        fi
        ;;
    *) echo "$file: compiled wheel (not the file the lock names), sha256 $got" ;;
    esac
done
ls -l .whl
exit "$status"

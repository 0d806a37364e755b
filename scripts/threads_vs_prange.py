"""Thread dealing (numba ``nogil`` loops on a pool, as ``ema_core/backends/host`` does) against
numba's own ``parallel=True`` / ``prange``, on one 25M-element leaf and on ResNet-50's leaves.

    python scripts/threads_vs_prange.py        (needs numba; prints the median of 15 runs)

The figures quoted in ``ema_core/backends/host/__init__.py`` come from this script.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np

WORKLOAD = Path(__file__).resolve().parents[1] / "benchmarks" / "workloads" / "resnet50.json"
Pair = tuple[np.ndarray, np.ndarray]


@numba.njit(nogil=True, boundscheck=False)  # type: ignore[misc]
def serial(s: np.ndarray, p: np.ndarray, f: np.float32) -> None:
    for i in range(s.size):
        s[i] = s[i] + (p[i] - s[i]) * f


@numba.njit(nogil=True, parallel=True, boundscheck=False)  # type: ignore[misc]
def parallel(s: np.ndarray, p: np.ndarray, f: np.float32) -> None:
    for i in numba.prange(s.size):
        s[i] = s[i] + (p[i] - s[i]) * f


_POOL = ThreadPoolExecutor(1)


def dealt(pairs: list[Pair], f: np.float32) -> None:
    """Two shares of about equal size (large leaves cut in halves): one here, one on the pool."""
    total = sum(s.size for s, _ in pairs)
    shares: list[list[Pair]] = [[], []]
    done = 0
    for s, p in pairs:
        pieces = [(s[: s.size // 2], p[: s.size // 2]), (s[s.size // 2 :], p[s.size // 2 :])]
        for a, b in pieces if s.size > total // 8 else [(s, p)]:
            shares[min(1, done * 2 // total)].append((a, b))
            done += a.size
    future = _POOL.submit(lambda: [serial(a, b, f) for a, b in shares[1]])
    for a, b in shares[0]:
        serial(a, b, f)
    future.result()


def bench(name: str, fn: Callable[[], object], repeats: int = 15) -> None:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    print(f"{name:40s} median {np.median(times) * 1e3:8.2f} ms", flush=True)


def main() -> None:
    f = np.float32(0.001)
    rng = np.random.default_rng(0)
    s, p = (rng.random(25_000_000, dtype=np.float32) for _ in range(2))
    bench("25M fp32: one thread", lambda: serial(s, p, f))
    bench("25M fp32: dealt over 2 threads", lambda: dealt([(s, p)], f))
    bench("25M fp32: prange", lambda: parallel(s, p, f))
    shapes = [tuple(shape) for _, shape in json.loads(WORKLOAD.read_text())["params"]]
    sizes = [int(np.prod(shape)) for shape in shapes]
    leaves = [(rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)) for n in sizes]
    print(f"resnet50: {len(leaves)} leaves, {sum(a.size for a, _ in leaves)} elements")
    bench("resnet50 fp32: one leaf at a time", lambda: [serial(a, b, f) for a, b in leaves])
    bench("resnet50 fp32: dealt over 2 threads", lambda: dealt(leaves, f))
    bench("resnet50 fp32: prange per leaf", lambda: [parallel(a, b, f) for a, b in leaves])


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help: no run
    main()

"""``python -m benchmarks --tree``: the cost of flattening, matching and checking a flat dict
of 1k, 10k and 100k tiny numpy arrays (a ``state_dict`` of many leaves), per leaf, so that
linearity shows: the time per leaf should stay flat as the dict grows.

Rows: ``flatten_pair`` alone, and ``checks`` (``flatten_pair`` + ``check_leaves`` +
``resolve_writes``: what an uncached stateless ``ema_update`` does before its first write).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.cli_args import no_options
from ema_core._leaf_checks import check_leaves
from ema_core._tree_pair import flatten_pair
from ema_core._writes import resolve_writes

SIZES = (1_000, 10_000, 100_000)


def best(step: Callable[[], Any], repeats: int) -> float:
    """The best of ``repeats`` timed calls (seconds), after one untimed call; the garbage of
    what ran before is collected first, so that none of its collection lands here."""
    gc.collect()
    step()
    fastest = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        step()
        fastest = min(fastest, time.perf_counter() - tic)
    return fastest


def rows(repeats: int = 5) -> list[tuple[str, int, float]]:
    """(case, leaves, best seconds) for each size."""
    out = []
    for n in SIZES:
        shadow = {f"layer{i}.weight": np.zeros(2, np.float32) for i in range(n)}
        params = {k: np.ones(2, np.float32) for k in shadow}

        def flat(shadow: Any = shadow, params: Any = params) -> Any:
            return flatten_pair(shadow, params, "shadow", "params")

        def checks(shadow: Any = shadow, params: Any = params) -> Any:
            s, p, paths, _ = flatten_pair(shadow, params, "shadow", "params")
            check_leaves(s, p, paths)
            return resolve_writes(None, s, paths)

        out.append(("flatten_pair", n, best(flat, repeats)))
        out.append(("checks", n, best(checks, repeats)))
    return out


def table(timed: list[tuple[str, int, float]], ms_decimals: int = 2) -> str:
    """``(case, leaves, seconds)`` rows as the plain table the host benchmarks print."""
    wide = max([14, *(len(case) + 1 for case, _, _ in timed)])
    lines = [f"{'case':<{wide}}{'leaves':>9}{'ms':>10}{'us/leaf':>9}", "-" * (wide + 28)]
    for case, n, sec in timed:
        lines.append(f"{case:<{wide}}{n:>9}{sec * 1e3:>10.{ms_decimals}f}{sec * 1e6 / n:>9.3f}")
    return "\n".join(lines)


def main(repeats: int = 5) -> str:
    return table(rows(repeats))


if __name__ == "__main__":
    no_options("python -m benchmarks.tree", __doc__)
    print(main())

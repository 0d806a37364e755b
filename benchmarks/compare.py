"""Side-by-side timing of two versions of ema-core on the same machine, in one session:

    python -m benchmarks.compare REV [REV ...]      (REV: any git revision; "." = the checkout)

Each revision is checked out into a temporary git worktree and timed in its own process, the
revisions taking turns for ``--rounds`` rounds, so that the machine's drift hits them alike.
Timed: the torch ``EMA`` class and numpy's ``ema_update`` on ResNet-50 and on 20k tiny tensors,
each with the ceiling measured beside it in the same process (``x ceiling``); with ``--jax``,
JAX's ``make_update`` on the same workloads in fp32 instead, and on the packed state (also
ResNet-50 with bf16 params) where the revision has one (ceiling: one flat donated jit of the same
bytes). This is how a change is checked for regressions: the committed results of an earlier
day ran on a machine whose bandwidth has since moved by tens of percent.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.cli_args import int_at_least

ROOT = Path(__file__).resolve().parents[1]

#: Run inside each revision's worktree (its own ``ema_core`` first on the path).
PROBE = r"""
import statistics, sys, time
import numpy as np, torch, ema_core
from benchmarks.workloads import load
try:
    from ema_core.torch import EMA
except ImportError:  # before the user-facing classes moved above the API
    from ema_core.backends.torch import EMA

def median_ms(step, n=15):
    step(1); step(2); times = []
    for i in range(n):
        tic = time.perf_counter(); step(i + 3); times.append(time.perf_counter() - tic)
    return statistics.median(times) * 1e3

for name in ("resnet50", "many_small_20k"):
    shapes = load(name).shapes
    for dtype in (torch.float32, torch.bfloat16):
        params = {f"p{i}": torch.randn(s).to(dtype) for i, s in enumerate(shapes)}
        ema = EMA(params, decay=0.999)
        n = sum(p.numel() for p in params.values())
        if dtype is torch.bfloat16:  # bf16 params over fp32 shadows move 10 bytes per element,
            n = n * 10 // 12  # the flat fp32 stream 12: the same bytes, as the harness does
        a, b = torch.ones(n), torch.ones(n)
        ceiling = median_ms(lambda t: a.lerp_(b, 0.001))
        ms = median_ms(ema.update)
        print(f"torch EMA class  {name:<15}{str(dtype)[6:]:<9}{ms:8.1f}{ceiling / ms:8.2f}")
    ps = [np.random.rand(*s).astype(np.float32) for s in shapes]
    ss = [p.copy() for p in ps]
    n = sum(p.size for p in ps)
    a, b = np.ones(n, np.float32), np.ones(n, np.float32)
    ceiling = median_ms(lambda t: a.__iadd__(b))
    ms = median_ms(lambda t: ema_core.ema_update(ss, ps, t, decay=0.999))
    print(f"numpy ema_update {name:<15}{'float32':<9}{ms:8.1f}{ceiling / ms:8.2f}")
"""

#: ``--jax``: ``make_update`` (state donated) against one flat donated jit of the same bytes;
#: where the revision has ``ema_core.jax.pack``, also on the packed state (``jax packed``), and
#: on ResNet-50 with bf16 params (the ceiling then moves 10 bytes per element, as they do).
PROBE_JAX = r"""
import statistics, time
import numpy as np, jax, jax.numpy as jnp, ema_core
from ema_core.jax import make_update
from benchmarks.workloads import load
try:
    from ema_core.jax import pack
except ImportError:  # a revision before the packed state
    pack = None

def median_ms(step, n=15):
    jax.block_until_ready(step(1)); jax.block_until_ready(step(2)); times = []
    for i in range(n):
        tic = time.perf_counter(); jax.block_until_ready(step(i + 3))
        times.append(time.perf_counter() - tic)
    return statistics.median(times) * 1e3

CASES = (("resnet50", "float32"), ("resnet50", "bfloat16"), ("many_small_20k", "float32"))
for name, dtype in CASES:
    shapes = load(name).shapes
    params = [jnp.asarray(np.random.rand(*s).astype(np.float32), dtype) for s in shapes]
    config = ema_core.Config(schedule=0.999)
    n = sum(p.size for p in params) * (10 if dtype == "bfloat16" else 12) // 12
    flat = jax.jit(lambda a, b: a + 0.001 * (b - a), donate_argnums=0)
    box = {"a": jnp.ones(n)}
    b = jnp.ones(n)

    def ceiling(t):
        box["a"] = flat(box["a"], b)
        return box["a"]

    states = {"make_update": ema_core.init(params, config)}
    if pack is not None:
        states["packed"] = pack(ema_core.init(params, config))
    for case, state in states.items():
        if case == "make_update" and dtype != "float32":
            continue  # the unpacked rows stay what they were: fp32
        box["state"], update = state, make_update(config)

        def step(t):
            box["state"] = update(box["state"], params)
            return box["state"]

        c, ms = median_ms(ceiling), median_ms(step)
        print(f"jax {case:<13}{name:<15}{dtype:<9}{ms:8.1f}{c / ms:8.2f}")
        del box["state"], state
"""


def _worktree(rev: str, where: Path) -> Path:
    if rev == ".":
        return ROOT
    path = where / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(path), rev],
                   check=True)  # fmt: skip
    return path


def _unknown(revs: list[str]) -> str | None:
    """Why the revisions cannot be compared (checked before any worktree is made), or None."""
    if len(set(revs)) < len(revs):
        return f"give each revision once, got {revs}"
    for rev in revs:
        if rev == ".":
            continue
        found = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            capture_output=True,
            check=False,
        )
        if found.returncode:
            return f"{rev!r} is not a revision of this repository"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    ap.add_argument("revs", nargs="+")
    ap.add_argument("--rounds", type=int_at_least(1), default=2)
    ap.add_argument("--jax", action="store_true", help="time JAX make_update instead")
    args = ap.parse_args(argv)
    problem = _unknown(args.revs)
    if problem:
        ap.error(problem)
    probe = PROBE_JAX if args.jax else PROBE
    from benchmarks.__main__ import describe

    meta = describe("cpu")
    print(f"{meta['machine']}, {meta['cpus']} CPUs, {meta['date']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        trees: dict[str, Path] = {}
        try:
            for rev in args.revs:
                trees[rev] = _worktree(rev, Path(tmp))
            for r in range(args.rounds):
                for rev, tree in trees.items():
                    print(f"== round {r + 1}, {rev}  (case, workload, dtype, ms, x ceiling)",
                          flush=True)  # fmt: skip
                    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT}"}
                    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tree,
                                         capture_output=True, text=True, check=False)  # fmt: skip
                    print(out.stdout, end="", flush=True)
                    if out.returncode:
                        print(f"the probe of {rev} failed:\n{out.stderr}", file=sys.stderr)
                        return 1
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                    str(tree)], check=False)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""ema-core's main job, in about a minute on a CPU (``make demo`` runs this file).

1. A small CNN learns scikit-learn's digits (8x8 images, shipped with scikit-learn: no
   download) with deliberately noisy SGD, twice: in torch through Lightning with ema-core's
   ``EMACallback``, and in JAX through optax with ``ema_core.jax.with_ema``. The table shows the
   test accuracy of the raw (live) weights and of their EMA; a PNG shows both curves.
2. One EMA config trains the same small problem in every installed framework (numpy, torch,
   JAX, array-api-strict); the second table shows that the EMA trajectories agree.

Usage: ``python examples/demo.py [--out demo_curves.png]``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _demo_agreement as agreement
import _demo_data as data
from matplotlib.figure import Figure
from tqdm import tqdm

Curves = dict[str, list[float]]
LAST = 5  # evaluations summarised in the "last evaluations" columns
RUNS = {  # name -> (modules it needs, module of the run, how it trains)
    "torch": (("torch", "lightning"), "_demo_torch", "Lightning + EMACallback"),
    "JAX": (("jax", "optax"), "_demo_jax", "optax + with_ema"),
}


def bar(desc: str, total: int) -> tqdm:
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, mininterval=0.5, ncols=88)


def train_all(digits: data.Digits) -> dict[str, Curves]:
    """Each CNN run whose framework is installed: name -> its test-accuracy curves."""
    curves = {}
    for name, (needs, module, how) in RUNS.items():
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if missing:
            print(f"{name}: skipped, needs {' and '.join(missing)}")
            continue
        train: Callable[[data.Digits, Callable[[], object]], Curves]
        train = importlib.import_module(module).train
        with bar(f"{name} ({how})", data.STEPS) as progress:
            curves[name] = train(digits, progress.update)
    return curves


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def span(xs: list[float]) -> str:
    return f"{100 * min(xs):.1f}-{100 * max(xs):.1f} %"


def accuracy_table(curves: dict[str, Curves]) -> None:
    last = f"last {LAST} evaluations (min-max)"
    print(f"\n1. Test accuracy on the {data.TEST_SIZE} held-out images, raw weights vs their EMA")
    print(f"{'':<34}{'after the last step':^20}{last:^34}".rstrip())
    print(f"{'framework':<10}{'trained by':<24}{'raw':>10}{'EMA':>10}{'raw':>17}{'EMA':>17}")
    print("-" * 88)
    for name, c in curves.items():
        raw, avg = c["raw"][-LAST:], c["ema"][-LAST:]
        print(
            f"{name:<10}{RUNS[name][2]:<24}{pct(raw[-1]):>10}{pct(avg[-1]):>10}"
            f"{span(raw):>17}{span(avg):>17}"
        )
    gains = [f"{100 * (c['ema'][-1] - c['raw'][-1]):+.1f} points ({n})" for n, c in curves.items()]
    if gains:
        print(f"EMA minus raw after the last step: {', '.join(gains)}")


def plot(curves: dict[str, Curves], out: Path) -> None:
    fig = Figure(figsize=(5 * len(curves), 3.8), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (name, c) in zip(axes, curves.items(), strict=True):
        ax.plot(c["step"], c["raw"], color="tab:orange", lw=1.2, marker=".", label="raw weights")
        ax.plot(c["step"], c["ema"], color="tab:blue", lw=2.2, label="EMA of the weights")
        ax.set(title=f"{name}: {RUNS[name][2]}", xlabel="optimizer step", ylim=(0.5, 1.0))
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle("A CNN on scikit-learn's digits, noisy SGD: the raw weights and their EMA")
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_curves.png"), help="the PNG")
    out: Path = parser.parse_args(argv).out
    if out.suffix.lower() != ".png":  # found now, not after the training (exit 2, not 1)
        parser.error(f"--out {out}: give a .png file name")
    if out.is_dir() or not out.parent.is_dir():
        parser.error(f"--out {out}: its folder must exist and the name must not be a folder")
    start = time.perf_counter()
    if isinstance(sys.stdout, io.TextIOWrapper):  # keep the text in step with the bars
        sys.stdout.reconfigure(line_buffering=True)
    digits = data.load()
    print(
        "ema-core demo: what an EMA of the weights buys, in torch (Lightning) and JAX (optax)\n"
        f"  data   scikit-learn's digits, 8x8 images: {len(digits.y_train)} to train on,"
        f" {len(digits.y_test)} to test (no download)\n"
        f"  model  a small CNN (2 conv layers, 1 linear), plain SGD, lr {data.LR},"
        f" batches of {data.BATCH},\n         {data.STEPS} steps: noisy on purpose;"
        " the same batches in both frameworks\n"
        f"  EMA    ema.Config(schedule=ema.schedules.warmup({data.CONFIG.schedule.decay})),"
        " updated after every optimizer step\n"
    )
    curves = train_all(digits)
    accuracy_table(curves)
    found = agreement.frameworks()
    print(
        "\n2. The same EMA config in every installed framework: a noisy-SGD linear regression,"
        f"\n   written once against the Array API, {agreement.STEPS} steps\n"
    )
    with bar(f"one EMA config, {len(found)} frameworks", agreement.STEPS * len(found)) as progress:
        results = agreement.measure(found, progress.update)
    ok = agreement.table(results)
    if curves:
        plot(curves, out)
        print(f"\nCurves of test accuracy over training, raw vs EMA: {out.resolve()}")
    print(f"Done in {time.perf_counter() - start:.0f} s.")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

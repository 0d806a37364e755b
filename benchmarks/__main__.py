"""``python -m benchmarks [--quick] [--big] [--backend B] [--workload W] [--dtype D] [--out DIR]``

``python -m benchmarks --bank`` times the torch ``EMABank`` against separate EMAs only;
``python -m benchmarks --tree`` times flattening and checking flat dicts of 1k-100k leaves only;
``python -m benchmarks --eager`` times one eager ``ema_core.update`` of a JAX state only;
``python -m benchmarks --routes`` times the host's work per update on the Triton routes only.

Times ema-core on real model shapes for every installed backend, beside the peer EMAs a user
would otherwise pick and a ceiling measured in the same run, and prints GB/s and both ratios.
Writes ``<device>-<date>[-<tag>].json``, ``.md`` and ``.png`` under ``--out`` (checked, with
``--tag``, ``--repeats`` and ``--device``, before any case runs).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import bank, chart, eager, harness, routes, stateless, tree, workloads
from benchmarks.backends import MODULES
from benchmarks.cli_args import int_at_least
from benchmarks.peers import PEERS

#: Left out of the default plan to keep `make bench` under 10 minutes on 2 cores (ask for them
#: with --workload/--dtype): JAX compiles 20k tiny arrays for minutes, and a second dtype there
#: tells nothing new; array-api-strict is a portability check, one workload is enough.
TRIMMED = {("jax", "many_small_20k", "bf16")} | {
    ("array_api_strict", w, "fp32") for w in ("vit_b16", "gpt2_small")
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="resnet50 only, fp32, 3 repeats (and the tree, stateless and bank tables)",
    )
    ap.add_argument("--big", action="store_true", help="include llama_1b")
    ap.add_argument("--backend", action="append", choices=MODULES)
    ap.add_argument("--workload", action="append", choices=workloads.available())
    ap.add_argument("--dtype", action="append", choices=sorted(harness.BYTES_PER_ELEMENT))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--no-peers", action="store_true", help="time ema-core and ceilings only")
    ap.add_argument(
        "--repeats", type=int_at_least(3), default=8, help="timed calls per case (at least 3)"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default="", help="appended to the result files' names")
    ap.add_argument("--tree", action="store_true", help="only the nest-size benchmark (tree.py)")
    ap.add_argument(
        "--stateless",
        action="store_true",
        help="only the stateless ema_update against the EMA class (stateless.py)",
    )
    ap.add_argument(
        "--eager",
        action="store_true",
        help="only one eager ema_core.update of a JAX state against make_update (eager.py)",
    )
    ap.add_argument(
        "--routes",
        action="store_true",
        help="only the host's work per update on the Triton routes, CPU tensors (routes.py)",
    )
    ap.add_argument(
        "--bank",
        action="store_true",
        help="only the torch EMABank of K EMAs against K separate EMA objects (bank.py)",
    )
    args = ap.parse_args(argv)
    problem = _output_problem(args)
    if problem:  # found now, not after the whole run has been timed
        ap.error(problem)
    return args


def _output_problem(args: argparse.Namespace) -> str | None:
    """What would stop the run from writing its results (checked before any case runs), or
    from running on ``--device``."""
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "--device cuda, but torch sees no CUDA device on this machine"
    if any(c in args.tag for c in "/\\") or args.tag in (".", ".."):
        return f"--tag {args.tag!r} cannot be part of a file name"
    out = args.out
    while not out.exists() and out.parent != out:
        out = out.parent
    if not out.is_dir():
        return f"--out {args.out} is (or lies under) a file, not a directory"
    if not os.access(out, os.W_OK):
        return f"--out {args.out}: {out} is not writable"
    return None


def describe(device: str) -> dict[str, Any]:
    """Where this ran: the CPU model (or GPU name), cores and the date."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    name = cpu
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return {
        "machine": name,
        "cpus": os.cpu_count(),
        "device": device,
        "date": date,
        "python": platform.python_version(),
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith("EMA_CORE_")},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.tree:
        print(tree.main())
        return 0
    if args.stateless:
        print(stateless.main())
        return 0
    if args.bank:
        print(bank.main())
        return 0
    if args.eager:
        print(eager.main())
        return 0
    if args.routes:
        meta = describe("cpu")
        print(f"{meta['machine']}, {meta['date']}, python -m benchmarks --routes")
        print(routes.main())
        return 0
    names = args.workload or (
        ["resnet50"]
        if args.quick
        else list(workloads.DEFAULT) + (list(workloads.BIG) if args.big else [])
    )
    dtypes = args.dtype or (["fp32"] if args.quick else ["fp32", "bf16"])
    repeats = 3 if args.quick else args.repeats
    rows: list[harness.Row] = []
    failed: list[str] = []
    plan = [
        (b, w, d)
        for b in (args.backend or MODULES)
        for w in names
        for d in dtypes
        if args.dtype or args.workload or (b, w, d) not in TRIMMED
    ]
    # read first: an interrupt (gpu.sh's time limit) that lands here after the cases (CUDA
    # imports torch) would lose every row measured (the H200 run of 2026-12-04, jax-20k)
    meta = describe(args.device)
    start = time.perf_counter()
    for i, (backend, wname, dtype) in enumerate(plan, 1):
        module = importlib.import_module(f"benchmarks.backends.{backend}")
        reason = module.missing()
        bar = "#" * (30 * i // len(plan))
        print(
            f"[{bar:<30}] {i}/{len(plan)} {time.perf_counter() - start:5.0f}s {backend} "
            f"{wname} {dtype}" + (f": skipped, {reason}" if reason else ""),
            file=sys.stderr,
            flush=True,
        )
        if reason is None:
            peers = (
                None
                if args.no_peers or backend not in PEERS
                else importlib.import_module(PEERS[backend])
            )
            try:
                rows += harness.measure(
                    module, workloads.load(wname), dtype, args.device, repeats, peers, failed
                )
            except KeyboardInterrupt:  # a time limit (gpu.sh): keep the rows measured so far
                failed.append(
                    f"{backend} {wname} {dtype}: cut by an interrupt; later cases not run"
                )
                print(failed[-1], file=sys.stderr, flush=True)
                break
            except Exception as exc:  # one broken case costs its own rows, not the run's
                failed.append(f"{backend} {wname} {dtype}: {type(exc).__name__}: {exc}")
                print(f"case failed: {failed[-1]}", file=sys.stderr, flush=True)
                traceback.print_exc()
            gc.collect()
    print(harness.format_table(rows))
    # the tree, stateless and bank tables time the host (CPU tensors, flat dicts) whatever
    # --device says: CPU runs only
    on_cpu = args.device == "cpu"
    tree_table = tree.main() if on_cpu else ""
    print(tree_table)
    with_torch = "torch" in (args.backend or MODULES) and on_cpu
    stateless_table = stateless.main() if with_torch else ""
    print(stateless_table)
    bank_table = bank.main() if with_torch else ""
    print(bank_table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "-".join(filter(None, [args.device, meta["date"], args.tag]))
    (stem.parent / f"{stem.name}.json").write_text(
        json.dumps({"meta": meta, "rows": harness.as_dicts(rows)}, indent=1)
    )
    tree_md = (
        "\n\nFlattening and checking flat dicts (`python -m benchmarks --tree`):\n\n"
        f"```\n{tree_table}\n```\n"
        if tree_table
        else ""
    )
    if stateless_table:
        tree_md += (
            "\nThe stateless torch `ema_update` against the `EMA` class, timed in strict "
            "alternation (`python -m benchmarks --stateless`):\n\n"
            f"```\n{stateless_table}\n```\n"
        )
    if bank_table:
        tree_md += (
            "\nThe torch `EMABank` of K EMAs against K separate `EMA` objects, timed in strict "
            "alternation (`python -m benchmarks --bank`):\n\n"
            f"```\n{bank_table}\n```\n"
        )
    took = time.perf_counter() - start
    ran = f"\nThe whole run took {took // 60:.0f} min {took % 60:.0f} s.\n"
    if failed:
        ran += "\nCases and contenders without rows:\n\n" + "".join(
            f"- {line}\n" for line in failed
        )
    print(ran.strip(), file=sys.stderr)
    (stem.parent / f"{stem.name}.md").write_text(  # not with_suffix: a tag may hold a dot
        harness.format_markdown(rows, meta) + tree_md + ran
    )
    picture = stem.parent / f"{stem.name}.png"
    drawn = chart.draw(rows, picture, f"ema-core benchmark: {meta['machine']}")
    print(
        f"wrote {stem}.json, .md"
        + (", .png" if drawn else " (no chart: no matplotlib or no rows)"),
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

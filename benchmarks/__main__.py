"""``python -m benchmarks [--quick] [--big] [--backend B] [--workload W] [--dtype D] [--out DIR]``

``python -m benchmarks --bank`` times the torch ``EMABank`` against separate EMAs only;
``python -m benchmarks --tree`` times flattening and checking flat dicts of 1k-100k leaves only;
``python -m benchmarks --eager`` times one eager ``ema_core.update`` of a JAX state only;
``python -m benchmarks --routes`` times the host's work per update on the Triton routes only.

Times ema-core on real model shapes for every installed backend, beside the peer EMAs a user
would otherwise pick and a ceiling measured in the same run, and prints GB/s and both ratios.
Writes ``<device>-<date>[-<tag>].json``, ``.md`` and ``.png`` under ``--out`` (checked, with
``--tag``, ``--repeats``, ``--device`` and each ``--backend`` named, before any case runs), with
``-2``, ``-3``, ... appended where an earlier run's files hold that name: none is overwritten.
An interrupt (Ctrl-C, gpu.sh's time limits) keeps what was measured: the files are written,
marked as cut, and the exit status is 130; otherwise 1 if a case or contender has no rows
(a backend that is not installed is skipped and listed, unless named with ``--backend``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import bank, eager, harness, report, routes, stateless, tables, tree, workloads
from benchmarks.backends import MODULES
from benchmarks.cli_args import int_at_least
from benchmarks.peers import PEERS
from benchmarks.report import describe

#: Left out of the default plan to keep `make bench` under 10 minutes on 2 cores (ask for them
#: with --workload/--dtype): JAX compiles 20k tiny arrays for minutes, and a second dtype there
#: tells nothing new; array-api-strict is a portability check, one workload is enough.
TRIMMED = {("jax", "many_small_20k", "bf16")} | {
    ("array_api_strict", w, "fp32") for w in ("vit_b16", "gpt2_small")
}
REPEATS = 8
#: The longest --tag whose files ("<device>-<date>-<tag>-<n>.json") fit in 255 bytes.
MAX_TAG = 200
OUT = Path("benchmarks/results")
#: The flags that print one table instead of the run (one at most), and what that table times.
ONLY = {
    "tree": "the nest-size benchmark (tree.py)",
    "stateless": "the stateless ema_update against the EMA class (stateless.py)",
    "eager": "one eager ema_core.update of a JAX state against make_update (eager.py)",
    "routes": "the host's work per update on the Triton routes, CPU tensors (routes.py)",
    "bank": "the torch EMABank of K EMAs against K separate EMA objects (bank.py)",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="resnet50 only, fp32, 3 repeats (and the tree, stateless and bank tables)",
    )
    ap.add_argument(
        "--big", action="store_true", help="add llama_1b to the default workloads (no --workload)"
    )
    ap.add_argument("--backend", action="append", choices=MODULES)
    ap.add_argument("--workload", action="append", choices=workloads.available())
    ap.add_argument("--dtype", action="append", choices=sorted(harness.BYTES_PER_ELEMENT))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--no-peers", action="store_true", help="time ema-core and ceilings only")
    ap.add_argument(
        "--repeats",
        type=int_at_least(3),
        help=f"timed calls per contender (at least 3; default {REPEATS}, with --quick 3); a "
        "contender stops early once 3 s are spent: the .json's 'timed' says how many ran",
    )
    ap.add_argument("--out", type=Path, help=f"where the files go (default {OUT})")
    ap.add_argument("--tag", default="", help="appended to the result files' names")
    only = ap.add_mutually_exclusive_group()
    for flag, text in ONLY.items():
        only.add_argument(f"--{flag}", action="store_true", help=f"only {text}")
    args = ap.parse_args(argv)
    problem = _option_problem(args)  # before the defaults fill in what was not given
    args.repeats = 3 if args.quick else args.repeats or REPEATS
    args.out = args.out or OUT
    problem = problem or _output_problem(args) or _backend_problem(args)
    if problem:  # found now, not after the whole run has been timed
        ap.error(problem)
    return args


def _option_problem(args: argparse.Namespace) -> str | None:
    """Options that another one given with them would silently drop."""
    table = next((flag for flag in ONLY if getattr(args, flag)), None)
    if table is not None:
        given = {
            "--quick": args.quick,
            "--big": args.big,
            "--backend": args.backend,
            "--workload": args.workload,
            "--dtype": args.dtype,
            "--device": args.device != "cpu",
            "--no-peers": args.no_peers,
            "--repeats": args.repeats is not None,
            "--out": args.out is not None,
            "--tag": args.tag,
        }
        dropped = [option for option, value in given.items() if value]
        if dropped:
            return f"--{table} prints its own table only: {', '.join(dropped)} would not apply"
    if args.quick and args.repeats is not None:
        return f"--quick times 3 repeats: give --repeats {args.repeats} without --quick"
    if args.big and (args.quick or args.workload):
        other = "--quick" if args.quick else "--workload"
        return f"--big adds llama_1b to the default workloads: not with {other}"
    return None


def _output_problem(args: argparse.Namespace) -> str | None:
    """What would stop the run from writing its results (checked before any case runs), or
    from running on ``--device``."""
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "--device cuda, but torch sees no CUDA device on this machine"
    if any(c in args.tag for c in "/\\") or args.tag in (".", ".."):
        return f"--tag {args.tag!r} cannot be part of a file name"
    if len(args.tag.encode()) > MAX_TAG:
        return f"--tag is {len(args.tag.encode())} bytes: at most {MAX_TAG} fit in a file name"
    out = args.out
    while not out.exists() and out.parent != out:
        out = out.parent
    if not out.is_dir():
        return f"--out {args.out} is (or lies under) a file, not a directory"
    if not os.access(out, os.W_OK):
        return f"--out {args.out}: {out} is not writable"
    return None


def _backend_problem(args: argparse.Namespace) -> str | None:
    """A backend named with ``--backend`` that cannot run here, or that times none of the
    planned cases (the default plan of every backend skips those, listing them under the
    cases without rows)."""
    for backend in dict.fromkeys(args.backend or ()):
        module = importlib.import_module(f"benchmarks.backends.{backend}")
        reason = module.missing()
        if reason is not None:
            return f"--backend {backend} cannot run here: {reason}"
        planned = [(w, d) for b, w, d in _plan(args) if b == backend]
        whys = [_no_case(module, workloads.load(w), d, args.device) for w, d in planned]
        if whys and all(whys):
            return f"--backend {backend} times none of the cases asked for: {whys[0]}"
    return None


def _no_case(module: Any, load: workloads.Workload, dtype: str, device: str) -> str | None:
    """Why ``module`` times nothing for this case (its ``no_case``), or None."""
    no_case = getattr(module, "no_case", None)
    return None if no_case is None else no_case(load, dtype, device)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    table = next((flag for flag in ONLY if getattr(args, flag)), None)
    if table is not None:
        print(_only(table))
        return 0
    run = report.Run(describe(args.device))
    # described first: an interrupt (gpu.sh's time limit) that lands there after the cases
    # (CUDA imports torch) would lose every row measured (the H200 run of 2026-12-04, jax-20k)
    start = time.perf_counter()
    printed = False
    try:
        _cases(args, run, start)
        print(tables.format_table(run.rows))
        printed = True
        _host_tables(args, run)
    except KeyboardInterrupt:  # a time limit (gpu.sh), Ctrl-C: keep what was measured
        run.interrupted = True
        run.failed.append(f"{run.where}: cut by an interrupt; what follows it not run")
        print(run.failed[-1], file=sys.stderr, flush=True)
        if not printed:
            print(tables.format_table(run.rows))
    if _write(args, run, start) or run.interrupted:
        return 130  # as a shell reports a command ended by SIGINT
    return 1 if run.failed else 0


def _write(args: argparse.Namespace, run: report.Run, start: float) -> bool:
    """Write the run's files and say which; whether an interrupt arrived meanwhile (held)."""
    name = "-".join(filter(None, [args.device, run.meta["date"], args.tag]))
    with report.interrupts_held() as arrived:  # a second Ctrl-C waits for the files
        took = time.perf_counter() - start
        print(report.summary(run, took).strip(), file=sys.stderr)
        written = report.write(run, args.out, name, took)
    taken = "" if written[0].name == f"{name}.json" else f" ({name} was taken: not overwritten)"
    print(
        f"wrote {', '.join(map(str, written))}{taken}"
        + ("" if len(written) == 3 else " (no chart: no matplotlib or no rows)"),
        file=sys.stderr,
    )
    return bool(arrived)


def _only(table: str) -> str:
    """The one table a single-table flag asks for."""
    if table == "routes":
        meta = describe("cpu")
        print(f"{meta['machine']}, {meta['date']}, python -m benchmarks --routes")
    modules = {"tree": tree, "stateless": stateless, "bank": bank, "eager": eager}
    return str(modules[table].main() if table in modules else routes.main())


def _plan(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(backend, workload, dtype) of each case, in run order."""
    names = args.workload or (
        ["resnet50"]
        if args.quick
        else list(workloads.DEFAULT) + (list(workloads.BIG) if args.big else [])
    )
    dtypes = args.dtype or (["fp32"] if args.quick else ["fp32", "bf16"])
    return [
        (b, w, d)
        for b in (args.backend or MODULES)
        for w in names
        for d in dtypes
        if args.dtype or args.workload or (b, w, d) not in TRIMMED
    ]


def _cases(args: argparse.Namespace, run: report.Run, start: float) -> None:
    """Time each case of the plan into ``run``: a backend that cannot run here is skipped (and
    listed), a case that raises costs its own rows."""
    plan = _plan(args)
    for i, (backend, wname, dtype) in enumerate(plan, 1):
        run.where = f"{backend} {wname} {dtype}"
        module = importlib.import_module(f"benchmarks.backends.{backend}")
        reason = module.missing()
        bar = "#" * (30 * i // len(plan))
        print(
            f"[{bar:<30}] {i}/{len(plan)} {time.perf_counter() - start:5.0f}s {run.where}"
            + (f": skipped, {reason}" if reason else ""),
            file=sys.stderr,
            flush=True,
        )
        if reason is not None:
            run.skipped.setdefault(f"{backend}: skipped, {reason}", []).append(f"{wname} {dtype}")
            continue
        use_peers = not args.no_peers and backend in PEERS
        peers = importlib.import_module(PEERS[backend]) if use_peers else None
        try:
            load = workloads.load(wname)
            why = _no_case(module, load, dtype, args.device)
            if why is not None:  # a combination the backend does not time: listed, not failed
                print(f"  {run.where}: skipped, {why}", file=sys.stderr, flush=True)
                run.skipped.setdefault(f"{backend}: skipped, {why}", []).append(f"{wname} {dtype}")
                continue
            run.rows += harness.measure(
                module, load, dtype, args.device, args.repeats, peers, run.failed
            )
        except Exception as exc:  # one broken case costs its own rows, not the run's
            run.failed.append(f"{run.where}: {type(exc).__name__}: {exc}")
            print(f"case failed: {run.failed[-1]}", file=sys.stderr, flush=True)
            traceback.print_exc()
        gc.collect()


def _host_tables(args: argparse.Namespace, run: report.Run) -> None:
    """The tree, stateless and bank tables into ``run``: they time the host (CPU tensors, flat
    dicts) whatever ``--device`` says, so CPU runs only; stateless and bank need torch."""
    on_cpu = args.device == "cpu"
    with_torch = on_cpu and "torch" in (args.backend or MODULES)
    tables: dict[str, Callable[[], str]] = {"tree": tree.main} if on_cpu else {}
    if with_torch:
        tables |= {"stateless": stateless.main, "bank": bank.main}
    for name, table in tables.items():
        run.where = f"the {name} table"
        run.tables[name] = table()
        print(run.tables[name])


if __name__ == "__main__":
    raise SystemExit(main())

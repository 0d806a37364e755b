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
import sys
import time
import traceback
from collections.abc import Callable

from benchmarks import (
    bank,
    eager,
    harness,
    options,
    report,
    routes,
    stateless,
    tables,
    tree,
    workloads,
)
from benchmarks.backends import MODULES
from benchmarks.options import ONLY, TRIMMED, no_case, plan
from benchmarks.peers import PEERS
from benchmarks.report import describe

__all__ = ["TRIMMED", "main", "parse"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The options (``benchmarks.options.parse``), with this module's text as the help."""
    return options.parse(argv, __doc__)


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


def _cases(args: argparse.Namespace, run: report.Run, start: float) -> None:
    """Time each case of the plan into ``run``: a backend that cannot run here is skipped (and
    listed), a case that raises costs its own rows."""
    cases = plan(args)
    for i, (backend, wname, dtype) in enumerate(cases, 1):
        run.where = f"{backend} {wname} {dtype}"
        module = importlib.import_module(f"benchmarks.backends.{backend}")
        reason = module.missing()
        bar = "#" * (30 * i // len(cases))
        print(
            f"[{bar:<30}] {i}/{len(cases)} {time.perf_counter() - start:5.0f}s {run.where}"
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
            why = no_case(module, load, dtype, args.device)
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

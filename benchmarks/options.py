"""The benchmark command line's options (``parse``), checked before any case runs (conflicting
flags, the output folder and ``--tag``, each ``--backend`` named), and the plan of cases
(``plan``: backend, workload, dtype) with the reason a backend gives for a case it does not time
(``no_case``)."""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import Any

from benchmarks import harness, workloads
from benchmarks.backends import MODULES
from benchmarks.cli_args import int_at_least

__all__ = ["MAX_TAG", "ONLY", "OUT", "REPEATS", "TRIMMED", "no_case", "parse", "plan"]


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


def parse(argv: list[str] | None, description: str | None = None) -> argparse.Namespace:
    """The options, checked: a conflict, an output that cannot be written or a ``--backend``
    that cannot run here is argparse's error (exit 2) before any case runs."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=description)
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
    try:  # the tag goes into file names and into the results' text (UTF-8)
        size = len(args.tag.encode())
    except UnicodeEncodeError:  # a byte the locale could not decode (a Latin-1 name)
        return f"--tag {_shown(args.tag)} is not UTF-8 text"
    if size > MAX_TAG:
        return f"--tag is {size} bytes: at most {MAX_TAG} fit in a file name"
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
        planned = [(w, d) for b, w, d in plan(args) if b == backend]
        whys = [no_case(module, workloads.load(w), d, args.device) for w, d in planned]
        if whys and all(whys):
            return f"--backend {backend} times none of the cases asked for: {whys[0]}"
    return None


def no_case(module: Any, load: workloads.Workload, dtype: str, device: str) -> str | None:
    """Why ``module`` times nothing for this case (its ``no_case``), or None."""
    no_case = getattr(module, "no_case", None)
    return None if no_case is None else no_case(load, dtype, device)  # type: ignore[no-any-return]


def plan(args: argparse.Namespace) -> list[tuple[str, str, str]]:
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


def _shown(text: str) -> str:
    """A text with undecodable bytes as those bytes (``b'r\\xe9sum\\xe9'``), else escaped."""
    try:
        return repr(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a lone surrogate no byte stands for (given from Python)
        return ascii(text)

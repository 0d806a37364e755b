"""``python -m benchmarks [--quick] [--backend B] [--workload W] [--dtype D] [--out DIR]``

Times ema-core on real model shapes for every installed backend, against a ceiling measured in
the same run, and prints achieved GB/s and the ratio. Results go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import platform
import sys
from pathlib import Path

from benchmarks import harness, workloads
from benchmarks.backends import MODULES


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="resnet50 only, fp32, few repeats")
    ap.add_argument("--big", action="store_true", help="include llama_1b")
    ap.add_argument("--backend", action="append", choices=MODULES)
    ap.add_argument("--workload", action="append", choices=workloads.available())
    ap.add_argument("--dtype", action="append", choices=sorted(harness.BYTES_PER_ELEMENT))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    names = args.workload or (
        ["resnet50"]
        if args.quick
        else list(workloads.DEFAULT) + (list(workloads.BIG) if args.big else [])
    )
    dtypes = args.dtype or (["fp32"] if args.quick else ["fp32", "bf16"])
    repeats = 3 if args.quick else args.repeats
    rows: list[harness.Row] = []
    plan = [(b, w, d) for b in (args.backend or MODULES) for w in names for d in dtypes]
    for i, (backend, wname, dtype) in enumerate(plan, 1):
        module = importlib.import_module(f"benchmarks.backends.{backend}")
        reason = module.missing()
        print(
            f"[{i}/{len(plan)}] {backend} {wname} {dtype}"
            + (f": skipped, {reason}" if reason else ""),
            file=sys.stderr,
            flush=True,
        )
        if reason is None:
            rows += harness.measure(module, workloads.load(wname), dtype, args.device, repeats)
            gc.collect()
    print(harness.format_table(rows))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    machine = f"{platform.node() or 'host'}-{args.device}"
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{machine}-{stamp}.json"
    meta = {
        "machine": platform.platform(),
        "processor": platform.processor(),
        "device": args.device,
        "python": platform.python_version(),
        "date": stamp,
    }
    out.write_text(json.dumps({"meta": meta, "rows": harness.as_dicts(rows)}, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What one ``python -m benchmarks`` run measured, where it ran (:func:`describe`), and its
files: ``<stem>.json``, ``.md`` and ``.png`` under ``--out``, the stem
``<device>-<date>[-<tag>]``, or ``-2``, ``-3``, ... after it where an earlier run's files
already hold that name (nothing is overwritten). Ctrl-C is held while the files are written,
so that an interrupt cannot leave half of them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import chart, harness, tables

#: The files of one run, after its stem.
EXTENSIONS = (".json", ".md", ".png")

#: The host tables that end a CPU run, and the words that introduce each in the ``.md``.
HEADINGS = {
    "tree": "\nFlattening and checking flat dicts (`python -m benchmarks --tree`):",
    "stateless": "The stateless torch `ema_update` against the `EMA` class, timed in strict "
    "alternation (`python -m benchmarks --stateless`):",
    "bank": "The torch `EMABank` of K EMAs against K separate `EMA` objects, timed in strict "
    "alternation (`python -m benchmarks --bank`):",
}


@dataclass
class Run:
    """What a run has measured so far; ``where`` is what it is doing (an interrupt's place)."""

    meta: dict[str, Any]
    rows: list[harness.Row] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # "backend: why" -> cases
    tables: dict[str, str] = field(default_factory=dict)  # name -> its printed table
    where: str = "the run's start"
    interrupted: bool = False


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


def file(stem: Path, ext: str) -> Path:
    return stem.parent / f"{stem.name}{ext}"  # not with_suffix: a tag may hold a dot


def free_stem(out: Path, name: str) -> Path:
    """The first of ``name``, ``name-2``, ``name-3``, ... under ``out`` none of whose files
    exists, its ``.json`` created empty (so that a run beside this one cannot take it too)."""
    n = 1
    while True:
        stem = out / (name if n == 1 else f"{name}-{n}")
        n += 1
        if any(file(stem, ext).exists() for ext in EXTENSIONS):
            continue
        try:
            file(stem, ".json").open("x").close()
        except FileExistsError:
            continue
        return stem


@contextlib.contextmanager
def interrupts_held() -> Iterator[list[int]]:
    """SIGINT held for the body: the signals that arrived meanwhile are listed in the list it
    yields, for the caller's exit status. Outside the main thread nothing is held."""
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: arrived.append(signum))
    try:
        yield arrived
    finally:
        signal.signal(signal.SIGINT, previous)


def markdown(run: Run, took: float) -> str:
    """The ``.md``: the rows' table, the host tables, the time taken and what has no rows."""
    text = tables.format_markdown(run.rows, run.meta)
    for name, table in run.tables.items():
        if table:
            text += f"\n{HEADINGS[name]}\n\n```\n{table}\n```\n"
    return text + summary(run, took)


def summary(run: Run, took: float) -> str:
    """How long the run took, and the cases and contenders without rows (and why)."""
    minutes, seconds = divmod(round(took), 60)  # 119.7 s is 2 min 0 s, not 1 min 60 s
    text = f"\nThe whole run took {minutes} min {seconds} s.\n"
    missing = run.failed + [f"{why} ({', '.join(cases)})" for why, cases in run.skipped.items()]
    if missing:
        text += "\nCases and contenders without rows:\n\n" + "".join(f"- {x}\n" for x in missing)
    if run.interrupted:
        text += "\nThis run was cut by an interrupt: its tables hold what it measured before.\n"
    return text


def write(run: Run, out: Path, name: str, took: float) -> list[Path]:
    """Write the run's files under a free stem (:func:`free_stem`); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    stem = free_stem(out, name)
    meta = {**run.meta, "interrupted": run.interrupted}
    data = {"meta": meta, "rows": harness.as_dicts(run.rows)}
    file(stem, ".json").write_text(json.dumps(data, indent=1))
    file(stem, ".md").write_text(markdown(run, took))
    written = [file(stem, ".json"), file(stem, ".md")]
    if chart.draw(run.rows, file(stem, ".png"), f"ema-core benchmark: {run.meta['machine']}"):
        written.append(file(stem, ".png"))
    return written

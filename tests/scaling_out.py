"""Shared by the multi-process tests (tests/test_dist_torch.py, tests/test_dist_jax.py, ...): the
README's "Scaling out" examples (```py blocks, not ```python, which test_readme runs in-process),
the skip of a module that needs FSDP2 on gloo, and starting worker processes and collecting
their output: ``launch_cases`` starts a gloo job whose workers' main is ``worker_main``;
``eight_devices`` runs a JAX script on 8 CPU devices that ends with ``print_results``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def blocks(containing: str, readme: Path = README) -> list[str]:
    """The ```py blocks of the "## Scaling out" section that contain ``containing``."""
    found = re.search(r"^## Scaling out.*?(?=^## |\Z)", readme.read_text(), flags=re.S | re.M)
    code = re.findall(r"```py\n(.*?)```", found.group(0), flags=re.S) if found else []
    return [b for b in code if containing in b]


def require_fsdp2() -> tuple[Any, Any, Any]:
    """``torch``, ``torch.distributed`` and ``torch.distributed.fsdp``; the calling test module
    is skipped unless torch.distributed has gloo and FSDP2 (``fully_shard``)."""
    torch = pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    if not (dist.is_available() and dist.is_gloo_available() and hasattr(fsdp, "fully_shard")):
        pytest.skip(
            "needs torch.distributed with gloo and FSDP2 (fully_shard)", allow_module_level=True
        )
    return torch, dist, fsdp


def run_workers(commands: list[list[str]], env: dict[str, str], timeout: float) -> list[str]:
    """Start one process per command (in the repository root with environment ``env``, all at
    once, as ranks of one job) and return each one's output; a hung job is killed after
    ``timeout`` seconds, and its output says so."""
    procs = [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for command in commands
    ]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            logs.append(f"timed out after {timeout} s\n" + proc.communicate()[0])
    return logs


def rank_results(paths: list[Path], logs: list[str]) -> list[dict[str, str]]:
    """Per rank, what its worker wrote to ``paths[rank]`` (check -> "ok" or a traceback; empty
    when it wrote nothing) and ``_log``: the end of its output."""
    results = []
    for path, log in zip(paths, logs, strict=True):
        found = json.loads(path.read_text()) if path.exists() else {}
        results.append({**found, "_log": log[-3000:]})
    return results


def assert_every_rank(results: list[dict[str, str]], check: str) -> None:
    """``check`` passed on every rank; else the rank's traceback, or its output if never run."""
    for rank, found in enumerate(results):
        detail = found.get(check, "not reached; the rank's output:\n" + found["_log"])
        assert detail == "ok", f"rank {rank}, check {check}:\n{detail}"


def launch_cases(folder: Path, module: str, tag: str, world: int = 2, timeout: float = 90) -> Any:
    """Run ``python -m module RANK WORLD FOLDER`` as the ``world`` ranks of one gloo job (one
    thread each; ``worker_main`` is the module's main) and return ``rank_results`` of the
    ``<tag>.<rank>.json`` files its ranks wrote."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = [sys.executable, "-m", module]
    commands = [[*worker, str(rank), str(world), str(folder)] for rank in range(world)]
    logs = run_workers(commands, env, timeout)
    return rank_results([folder / f"{tag}.{rank}.json" for rank in range(world)], logs)


def worker_main(dist: Any, make_cases: Callable[[int], Any], names: list[str], tag: str) -> None:
    """A ``launch_cases`` worker (argv: RANK WORLD FOLDER): joins the gloo group through a file
    store in FOLDER and runs each case ``names`` names, a method of ``make_cases(world)``, in
    the same order on every rank, writing ``<tag>.<rank>.json`` (case -> "ok" or its
    traceback) after each and meeting the other ranks at a barrier."""
    rank, world, folder = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    store = f"file://{folder / f'{tag}.store'}"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
    results: dict[str, str] = {}
    try:
        cases = make_cases(world)
        for name in names:
            results[name] = _outcome(getattr(cases, name))
            (folder / f"{tag}.{rank}.json").write_text(json.dumps(results))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _outcome(case: Callable[[], None]) -> str:
    try:
        case()
        return "ok"
    except (Exception, pytest.fail.Exception):  # pytest.raises fails with a BaseException
        return traceback.format_exc()


def eight_devices(args: list[str], cases: list[str], timeout: float) -> dict[str, str]:
    """Run ``python ARGS CASES`` in the repository root with JAX on 8 CPU devices (the count is
    fixed when JAX starts, so in a process of its own) and return the results its
    ``print_results`` printed (case -> "ok" or the traceback)."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, *args, *cases],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    found: dict[str, str] = json.loads(lines[-1].removeprefix("RESULTS "))
    return found


def print_results(names: list[str], cases: Mapping[str, Callable[[], None]]) -> None:
    """Run each named case (a function of ``cases``) and print one ``RESULTS`` json line for
    ``eight_devices``: case -> "ok" or its traceback."""
    print("RESULTS " + json.dumps({name: _outcome(cases[name]) for name in names}))

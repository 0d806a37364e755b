"""Shared by the multi-process tests (tests/test_dist_torch.py, tests/test_dist_jax.py, ...): the
README's "Scaling out" examples (```py blocks, not ```python, which test_readme runs in-process),
the skip of a module that needs FSDP2 on gloo, and starting worker processes and collecting
their output: ``shared_launch`` runs the cases of several test modules in one gloo job per world
size and test run (each rank imports torch once: about 5 s of CPU a rank on the 2-core VM);
``eight_devices`` runs a JAX script on 8 CPU devices that ends with ``print_results``."""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import re
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
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


def run_cases(dist: Any, folder: Path, cases: Any, names: Sequence[str], tag: str) -> None:
    """Run each case ``names`` names, a method of ``cases``, in the same order on every rank,
    writing ``<tag>.<rank>.json`` (case -> "ok" or its traceback) after each and meeting the
    other ranks at a barrier."""
    results: dict[str, str] = {}
    for name in names:
        results[name] = _outcome(getattr(cases, name))
        (folder / f"{tag}.{dist.get_rank()}.json").write_text(json.dumps(results))
        dist.barrier()


#: The parts of the shared gloo jobs (``shared_launch``), by world size, in the order they run:
#: (tag, worker module). Each module's ``part(tag, rank, world, folder)`` gives the object
#: whose methods are the cases, and their names.
SHARED: dict[int, tuple[tuple[str, str], ...]] = {
    2: (
        ("two", "tests.dist_workers"),
        ("hostile", "tests.dist_hostile_worker"),
        ("leftover", "tests.dtensor_leftover_worker"),
        ("walk", "tests.dist_walkthrough_worker"),
        ("hunt1208", "tests.dist_hunt_1208_worker"),
    ),
    4: (("four", "tests.dist_workers"), ("configs", "tests.fsdp_configs_worker")),
}
#: Seconds for a whole shared job; a hung collective ends here (and fails every part after it).
SHARED_TIMEOUT = 300


def shared_worker_main() -> None:
    """A rank of a shared job (argv: RANK WORLD FOLDER): one process group, then every part of
    ``SHARED[WORLD]`` in turn through ``run_cases``."""
    import torch.distributed as dist

    rank, world, folder = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    dist.init_process_group(
        "gloo", init_method=f"file://{folder / 'shared.store'}", rank=rank, world_size=world
    )
    try:
        for tag, module in SHARED[world]:
            cases, names = importlib.import_module(module).part(tag, rank, world, folder)
            run_cases(dist, folder, cases, names, tag)
    finally:
        dist.destroy_process_group()


def shared_launch(factory: pytest.TempPathFactory, world: int) -> tuple[Path, dict[str, Any]]:
    """The folder of the shared job of ``world`` ranks, and per tag of ``SHARED[world]`` its
    ``rank_results``. The job runs once per test run: the first test module to ask launches it
    (under pytest-xdist the workers share a folder and a file lock; the others wait for it)."""
    if world == 4:  # its "four" part loads the checkpoint the 2-rank job saves: that one first
        shared_launch(factory, 2)
    base = factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / f"shared{world}"
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = root / "logs.json"
        if not done.exists():
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                ),
                "OMP_NUM_THREADS": "1",
            }
            worker = [sys.executable, "-m", "tests.dist_shared_worker"]
            commands = [[*worker, str(rank), str(world), str(root)] for rank in range(world)]
            done.write_text(json.dumps(run_workers(commands, env, SHARED_TIMEOUT)))
        logs = json.loads(done.read_text())
    found = {
        tag: rank_results([root / f"{tag}.{rank}.json" for rank in range(world)], logs)
        for tag, _ in SHARED[world]
    }
    return root, found


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

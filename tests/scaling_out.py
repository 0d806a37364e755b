"""Shared by the multi-process tests (tests/test_dist_torch.py, tests/test_dist_jax.py, ...): the
README's "Scaling out" examples (```py blocks, not ```python, which test_readme runs in-process),
the skip of a module that needs FSDP2 on gloo, and starting worker processes and collecting
their output."""

from __future__ import annotations

import json
import re
import subprocess
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

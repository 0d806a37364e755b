"""Helpers shared by the backend modules."""

from __future__ import annotations

import importlib.util

import numpy as np

from benchmarks.workloads import Workload


def missing(module: str) -> str | None:
    return None if importlib.util.find_spec(module) else f"{module} is not installed"


def host_arrays(workload: Workload, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(shadows, params) as float32 numpy arrays with the workload's shapes."""
    rng = np.random.default_rng(seed)
    shadows = [rng.standard_normal(s, dtype=np.float32) for s in workload.shapes]
    params = [rng.standard_normal(s, dtype=np.float32) for s in workload.shapes]
    return shadows, params


def flat_elements(workload: Workload, dtype: str) -> int:
    """Elements of a flat fp32 two-read-one-write stream that moves the workload's bytes."""
    per = {"fp32": 12, "bf16": 10}[dtype]
    return per * workload.elements // 12

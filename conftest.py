"""Root pytest configuration: doctests run over the package; modules whose framework is missing
(CuPy on a machine without CUDA, or torch, JAX, optax where they are not installed) are not
collected; the costliest test files are collected first (``HEAVY``)."""

from __future__ import annotations

import importlib.util
import os

import pytest

#: The test files that cost the most CPU (``--durations=0`` summed per file, 2026-12-03), most
#: first. ``make test`` hands whole files to its two workers in collection order
#: (``--dist loadfile --no-loadscope-reorder``); starting with the longest keeps one worker from
#: finishing a 90 s file alone at the end (xdist's own reorder, by number of tests per file,
#: put these files of few slow tests last). Every name must exist (a test checks it).
HEAVY = (
    "tests/test_presets_peers_random.py",
    "tests/test_dist_torch.py",
    "tests/test_stateful_jax.py",
    "tests/test_demo.py",
    "tests/test_integration_keras.py",
    "tests/test_presets_peers.py",
    "tests/test_integration_lightning_fsdp2.py",
    "tests/test_properties.py",
    "tests/test_bank_jax.py",
    "tests/test_reference.py",
    "tests/test_jax_recompile_hostile.py",
    "tests/test_testing_kit.py",
    "tests/test_bank_torch.py",
    "tests/test_buffers_every_call.py",
    "tests/test_readme.py",
    "tests/test_keras_fit_flows_hostile.py",
    "tests/test_bank_jax_training_loop_hostile.py",
    "tests/test_integrations_mixed_precision_hostile.py",
    "tests/test_integrations_resume_hostile.py",
    "tests/test_jax_training_loop_hostile.py",
    "tests/test_presets_edges_hostile.py",
    "tests/test_torch_training_loop_hostile.py",
    "tests/test_checkpoint_export_training_hostile.py",
    "tests/test_lightning_fit_flows_hostile.py",
    "tests/test_torch_tensor_kinds_hostile.py",
    "tests/test_torch_contexts_hostile.py",
    "tests/test_mutants_fixes_1203e.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``HEAVY`` files first, in their order; every other item keeps its place."""
    rank = {name: i for i, name in enumerate(HEAVY)}
    where = {id(item): rank.get(item.nodeid.split("::", 1)[0], len(HEAVY)) for item in items}
    items.sort(key=lambda item: where[id(item)])  # stable: the order within a file is kept


# Keras 3 picks its backend at import, tensorflow by default (not installed here): the keras
# integration's doctests run on JAX when it is there, else on torch.
if "KERAS_BACKEND" not in os.environ:
    for _backend in ("jax", "torch"):
        if importlib.util.find_spec(_backend) is not None:
            os.environ["KERAS_BACKEND"] = _backend
            break

collect_ignore_glob = []
for _framework, _pattern in (
    ("cupy", "ema_core/backends/cupy*"),
    ("torch", "ema_core/backends/torch/*"),
    ("torch", "ema_core/torch/*"),
    ("jax", "ema_core/backends/jax/*"),
    ("jax", "ema_core/jax/*"),
    ("optax", "ema_core/jax/_optax.py"),
    ("lightning", "ema_core/integrations/lightning.py"),
    ("torch", "ema_core/integrations/accelerate.py"),
    ("accelerate", "ema_core/integrations/accelerate.py"),
    ("keras", "ema_core/integrations/keras.py"),
    ("keras", "ema_core/integrations/_keras_*"),
):
    if importlib.util.find_spec(_framework) is None:
        collect_ignore_glob.append(_pattern)

"""FSDP2 fixes from the hunt of 2026-12-05 (CPU, gloo, 2 ranks: tests/dist_hunt_1208_worker.py
in the shared 2-rank job): a param FSDP2 leaves alone (``ignored_params``, registered after
``fully_shard``) is tracked as a plain tensor while an EMA built inside forward is still
refused; ``model.to(dtype)`` converts sharded shadows by the dtype rule, as plain ones; and
``ema_update`` / ``update`` with ``guard_finite`` over DTensors give one answer on every rank.
"""

from __future__ import annotations

import pytest

from tests.scaling_out import assert_every_rank, require_fsdp2, shared_launch

torch, dist, fsdp = require_fsdp2()

from tests.dist_hunt_1208_worker import CASES  # noqa: E402

pytestmark = pytest.mark.slow  # multi-process: `pytest -m "not slow"` leaves it out


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict[str, str]]:
    return shared_launch(tmp_path_factory, 2)[1]["hunt1208"]


@pytest.mark.parametrize("case", CASES)
def test_case_on_every_rank(results, case):
    assert_every_rank(results, case)

"""Hostile inputs to the torch.distributed paths (FSDP2 on CPU, gloo, 2 ranks, in the shared
2-rank job of ``tests.scaling_out.shared_launch``).

Every case of ``tests/dist_hostile_worker.py`` runs on both ranks in one process group; each
test reads one case's result on every rank. A refusal must come on every rank before anything
is written, and a case that leaves a rank waiting in a collective ends in the launch's timeout.
"""

from __future__ import annotations

import pytest

from tests.scaling_out import assert_every_rank, require_fsdp2, shared_launch

torch, dist, fsdp = require_fsdp2()

from tests.dist_hostile_worker import CASES  # noqa: E402

pytestmark = pytest.mark.slow  # multi-process: `pytest -m "not slow"` leaves it out


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict[str, str]]:
    return shared_launch(tmp_path_factory, 2)[1]["hostile"]


@pytest.mark.parametrize("case", CASES)
def test_case_on_every_rank(results, case):
    assert_every_rank(results, case)

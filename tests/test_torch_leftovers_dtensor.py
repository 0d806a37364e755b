"""FSDP2 params replaced by plain tensors, told apart from FSDP2's own all-gathered copies
(CPU, gloo, 2 ranks: tests/dtensor_leftover_worker.py in the shared 2-rank job).

A plain ``nn.Parameter`` put in a sharded param's place is refused by name at every update,
before any write; the plain copies FSDP2 itself leaves in the module (``unshard()``, a forward
with ``reshard_after_forward=False``) are put back to their shards and never taken for one.
"""

from __future__ import annotations

import pytest

from tests.scaling_out import assert_every_rank, require_fsdp2, shared_launch

torch, dist, fsdp = require_fsdp2()

from tests.dtensor_leftover_worker import CASES  # noqa: E402

pytestmark = pytest.mark.slow  # multi-process: `pytest -m "not slow"` leaves it out


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict[str, str]]:
    return shared_launch(tmp_path_factory, 2)[1]["leftover"]


@pytest.mark.parametrize("case", CASES)
def test_case_on_every_rank(results, case):
    assert_every_rank(results, case)

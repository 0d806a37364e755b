"""A new user's walk through DDP and FSDP2 with ema-core (gloo, CPU, 2 ranks, shared job).

The cases of ``tests/dist_walkthrough_worker.py`` run on both ranks in one process group; each
test reads one case's result on every rank. The last test loads the file the 2-rank FSDP2 run
saved into an unsharded EMA here (2 ranks -> 1). The rest need no process group.
"""

from __future__ import annotations

import pytest

from tests.scaling_out import assert_every_rank, require_fsdp2, shared_launch

torch, dist, fsdp = require_fsdp2()

from ema_core.checkpoint import load, save  # noqa: E402
from ema_core.torch import EMA, full_state_dict  # noqa: E402
from tests.dist_walkthrough_worker import CASES, CONFIG, net  # noqa: E402

pytestmark = pytest.mark.slow  # multi-process: `pytest -m "not slow"` leaves it out


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    folder, found = shared_launch(tmp_path_factory, 2)
    return folder, found["walk"]


@pytest.mark.parametrize("case", CASES)
def test_case_on_every_rank(launched, case):
    assert_every_rank(launched[1], case)


def test_two_rank_file_loads_into_an_unsharded_ema(launched):
    folder, results = launched
    assert_every_rank(results, "fsdp_file_round_trip")
    reference = torch.load(folder / "reference.pt", weights_only=True)
    plain = load(folder / "full.safetensors", EMA(net(seed=2), config=CONFIG))
    assert plain.average.keys() == reference.keys()
    for name, value in plain.average.items():
        assert torch.equal(value, reference[name]), name


@pytest.mark.parametrize("wrong", ["module", "state_dict", "none"])
def test_full_state_dict_takes_an_ema_only(wrong):
    model = torch.nn.Linear(3, 2)
    given = {"module": model, "state_dict": EMA(model, decay=0.9).state_dict(), "none": None}
    with pytest.raises(TypeError, match=r"full_state_dict\(ema\) takes an ema_core.torch.EMA"):
        full_state_dict(given[wrong], keep_on="all")


def test_saving_an_empty_dict_says_to_save_on_rank_0(tmp_path):
    hint = r"got an empty dict .*call it on every rank and save on rank 0 only"
    with pytest.raises(TypeError, match=hint):
        save(tmp_path / "ema.safetensors", {})
    assert list(tmp_path.iterdir()) == []

"""Fixes of the hostile-input round on the update rule: a counter schedule whose first decay is
negative."""

from __future__ import annotations

import numpy as np
import pytest

import ema_core as ema
from ema_core import presets, schedules
from ema_core.compat.allennlp import ExponentialMovingAverage


@pytest.mark.parametrize("numerator", [-5, -1.5, -9.99])
def test_num_updates_refuses_a_numerator_whose_first_decay_is_negative(numerator: float) -> None:
    """``num_updates(0.9, numerator=-5)`` was taken: its decays at t = 1..4 are below 0, which an
    interval or ``every`` multiplied into a positive decay and applied without a word (and a jit
    applied as they were: the shadow overshot the params)."""
    with pytest.raises(ValueError, match=r"numerator must be >= -1: the decay at step 1") as e:
        schedules.num_updates(0.9, numerator=numerator)
    assert str(e.value).endswith(f"got {numerator}")


def test_num_updates_takes_a_numerator_of_minus_one_its_first_update_a_copy() -> None:
    schedule = schedules.num_updates(0.9, numerator=-1)
    assert schedule(1) == 0.0 and schedule(2) == pytest.approx(1 / 12)
    got = ema.ema_update(np.zeros(2), np.ones(2), 2, config=ema.Config(schedule, interval=2))
    np.testing.assert_allclose(got, 1.0)  # d_1 * d_2 = 0: the params, not a blend past them


def test_allennlp_keeps_a_negative_numerator_with_a_counter_at_or_above_its_negative() -> None:
    """AllenNLP's own counter starts where the caller says: its checks (the counter >= -numerator)
    keep the ratio >= 0, so its numerators below -1 stay taken."""
    config = presets.allennlp(0.99, numerator=-3.0, denominator=10.0, num_updates=3)
    assert config.decay(1) == 0.0 and config.decay(2) == pytest.approx(1 / 14)
    average = ExponentialMovingAverage([("w", np.zeros(2))], decay=0.99, numerator=-3.0)
    average.apply(3)  # the counter at -numerator: decay 0, a copy
    with pytest.raises(ValueError, match="num_updates"):
        average.apply(2)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype", [None, "float32", "same"])
def test_a_complex32_leaf_gets_a_complex64_shadow_that_does_not_stall(dtype: str | None) -> None:
    """torch's half complex kept a complex32 shadow: at decay 0.9995 each step's move, 5e-4 of
    the gap, is below half a half-precision ulp near 1, and the average stayed at 1 (README:
    arithmetic never runs in a half dtype). ``dtype="same"`` keeps it, as for a half leaf."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    config = ema.Config(schedule=0.9995, dtype=dtype)
    start = torch.ones(3, dtype=torch.complex32)
    target = {"z": (2 * start.to(torch.complex64)).to(torch.complex32)}
    state = ema.init({"z": start}, config)
    model = torch.nn.Module()
    model.z = torch.nn.Parameter(start.clone(), requires_grad=False)
    average = EMA(model, config=config)
    with torch.no_grad():
        model.z.copy_(target["z"])
    for _ in range(3000):
        state = ema.update(state, target, config)
        average.update()
    kept = torch.complex32 if dtype == "same" else torch.complex64
    assert state.shadow["z"].dtype == average.average["z"].dtype == kept
    want = 2 - 0.9995**3000  # the gap left: 0.9995 ** 3000 of 1
    for got in (state.shadow["z"], average.average["z"]):
        real = got.to(torch.complex64).real
        if dtype == "same":
            assert torch.all(real < 1.1)  # stalled near 1.02 (not 1.78), as a float16 shadow does
        else:
            torch.testing.assert_close(real, torch.full((3,), want), rtol=1e-4, atol=0)


def test_interleaved_torch_views_that_share_no_element_are_two_leaves() -> None:
    """``b[0::2]`` beside ``b[1::2]`` share no element: numpy took them, torch refused them as
    sharing memory (its check compared byte ranges only)."""
    torch = pytest.importorskip("torch")
    for b in (np.zeros(6), torch.zeros(6)):
        ones = {"a": b[0::2] * 0 + 1, "b": b[1::2] * 0 + 2}
        ema.ema_update({"a": b[0::2], "b": b[1::2]}, ones, 1, decay=0.5)
        assert b.tolist() == [0.5, 1.0] * 3
    b = torch.zeros(4, 4)  # a column and a row meet at b[1, 0]
    before = b.clone()
    with pytest.raises(ValueError, match=r"shadow\['a'\] and shadow\['b'\] share memory"):
        ema.ema_update({"a": b[:, 0], "b": b[1]}, {"a": torch.ones(4), "b": torch.ones(4)}, 1)
    assert torch.equal(b, before)
    ema.ema_update(
        {"a": b[:, 0], "b": b[1, 1:]}, {"a": torch.ones(4), "b": torch.ones(3)}, 1, decay=0.0
    )
    assert b[:, 0].tolist() == [1.0] * 4 and b[1, 1:].tolist() == [1.0] * 3


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_complex32_shadows_saved_before_widening_load_and_peers_continue() -> None:
    """With complex64 shadows for complex32 params, a state an EMA saved with complex32 shadows
    and a peer's complex32 shadows (torch_ema keeps the param dtype) were refused: the load
    widens them exactly, as it widens bf16 into float32."""
    torch = pytest.importorskip("torch")
    from ema_core.checkpoint import load_peer
    from ema_core.torch import EMA

    model = torch.nn.Module()
    start = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    model.w = torch.nn.Parameter(start.to(torch.complex32), requires_grad=False)
    old = start.to(torch.complex32) * 2
    ema = EMA(model, config=presets.torch_ema(0.99))
    saved = {**ema.state_dict(), "step": torch.tensor(5)}
    ema.load_state_dict({**saved, "shadow": {"w": old}})
    assert ema.step == 5 and torch.equal(ema.average["w"], old.to(torch.complex64))
    other = EMA(model, config=presets.torch_ema(0.99))
    peer = {"decay": 0.99, "num_updates": 7, "collected_params": None, "shadow_params": [old]}
    load_peer(other, peer, peer="torch_ema")
    assert other.step == 7 and torch.equal(other.average["w"], old.to(torch.complex64))


def test_an_overlap_numpy_cannot_lay_out_is_taken_as_overlapping() -> None:
    """A view expanded past what a numpy array may span raised numpy's "array is too big"
    from the exact check; it is taken as overlapping, as before the check was exact."""
    torch = pytest.importorskip("torch")
    from ema_core._memory_overlap import overlap

    base = torch.zeros(4)
    assert overlap(base[:1].expand(2**31, 2**31), base[:1])
    assert not overlap(base[0::2], base[1::2])

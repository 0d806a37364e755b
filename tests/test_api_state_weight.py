"""``ema_core.update`` checks ``state.weight`` before anything runs: a Python number or a 0-d
float array, as ``init`` makes it. A wider array spread over the shadows' bias correction and
an integer one rounded it; a Python float failed deep inside the update and now moves."""

from __future__ import annotations

import numpy as np
import pytest

import ema_core as ema

BAD = [
    (np.ones(2, np.float32), ValueError, "shape"),
    (np.asarray(1, np.int32), TypeError, "dtype"),
    ("1", TypeError, "str"),
    (True, TypeError, "bool"),
]


@pytest.mark.parametrize(("weight", "error", "said"), BAD)
def test_a_malformed_weight_is_refused_and_nothing_changes(weight, error, said):
    shadow = {"w": np.zeros(2, np.float32)}
    state = ema.init(shadow)._replace(weight=weight)
    with pytest.raises(error, match=rf"state\.weight must be a .*0-d float array.*{said}"):
        ema.update(state, {"w": np.ones(2, np.float32)}, ema.Config(schedule=0.5))
    assert shadow["w"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("weight", [np.float32(0.5), np.asarray(0.5), np.asarray(0.5, np.float16)])
def test_zero_d_float_weights_move(weight):
    state = ema.init({"w": np.zeros(2, np.float32)})._replace(weight=weight)
    new = ema.update(state, {"w": np.ones(2, np.float32)}, ema.Config(schedule=0.5))
    assert float(new.weight) == 0.75 and np.dtype(new.weight.dtype) == np.dtype(weight.dtype)


def test_a_python_float_weight_moves_and_stays_a_float():
    state = ema.init({"w": np.zeros(2, np.float32)})._replace(weight=0.5)
    new = ema.update(state, {"w": np.ones(2, np.float32)}, ema.Config(schedule=0.5))
    assert new.weight == 0.75 and isinstance(new.weight, float)

"""A nest with the key ``"a/b"`` beside the path ``a`` / ``b``: ``checkpoint.save`` wrote the
two as ``shadow/a~1b`` and ``shadow/a/b`` and ``load`` / ``check`` refused the file as one
shadow twice (README, checkpoint format: escaped names keep the two apart). A torch ``EMA``,
whose names are flat, still reads the two as one name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
from ema_core.checkpoint import check, load, save


@pytest.mark.parametrize(
    "params",
    [
        {"a/b": np.ones(1), "a": {"b": np.full(2, 2.0)}},
        {"a": {"b/c": np.ones(1)}, "a/b": {"c": np.full(2, 2.0)}},
    ],
)
def test_a_slash_key_beside_the_same_path_round_trips(tmp_path: Path, params: dict) -> None:
    config = ema.Config(schedule=0.5)
    state = ema.update(ema.init(params, config), params, config)
    path = save(tmp_path / "ema.safetensors", state)
    like = ema.init(params)
    assert check(path, like) is None
    loaded = load(path, like)
    got = [np.asarray(x) for x in _leaves(loaded.shadow)]
    want = [np.asarray(x) for x in _leaves(state.shadow)]
    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def _leaves(tree: object) -> list[object]:
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    return [tree]


def test_a_torch_ema_still_reads_both_spellings_as_one_name(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    params = {"a/b": np.ones(2), "a": {"b": np.full(2, 2.0)}}
    path = save(tmp_path / "ema.safetensors", ema.init(params))
    model = torch.nn.Module()
    model.register_parameter("a/b", torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"'shadow/a/b' and 'shadow/a~1b' are both the shadow"):
        load(path, EMA(model))

"""``ema_core.checkpoint.check``: a file that fits passes and nothing changes; every refusal is
the one ``load`` makes for the same file and arguments (type and message), with nothing written;
no shadow byte is read."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import _safetensors
from ema_core.checkpoint import check, load, save

torch = pytest.importorskip("torch")
from ema_core.torch import EMA  # noqa: E402
from tests.test_checkpoint import model, train  # noqa: E402


def _bits(target: EMA) -> tuple[Any, dict[str, Any]]:
    shadows = target.state_dict()["shadow"]
    return target.step, {n: t.clone().view(-1).view(torch.uint8) for n, t in shadows.items()}


def _unchanged(target: EMA, before: tuple[Any, dict[str, Any]]) -> None:
    step, shadows = _bits(target)
    assert step == before[0] and shadows.keys() == before[1].keys()
    assert all(torch.equal(shadows[n], before[1][n]) for n in shadows)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, Any]:
    net = model()
    first = EMA(net, decay=0.9)
    train(net, first, 2)
    return save(tmp_path / "e.safetensors", first), net


def test_a_good_file_passes_and_changes_nothing(saved: tuple[Path, Any]) -> None:
    path, net = saved
    target = EMA(copy.deepcopy(net), decay=0.9)
    train(net, target, 3)
    before, data = _bits(target), path.read_bytes()
    assert check(path, target) is None
    _unchanged(target, before)
    assert path.read_bytes() == data
    partial = EMA(copy.deepcopy(net), decay=0.9, exclude="2.*")
    check(path, partial, strict=False)  # the names both have, as load(strict=False) takes them
    state = ema.init({"w": np.zeros(2)}, ema.Config(schedule=0.5))
    bare = save(path.with_name("s.safetensors"), state, ema.Config(schedule=0.5))
    assert check(bare, state, config=ema.Config(schedule=0.5)) is None


# Each case: (saved file, its model) -> (path, like, keyword arguments) that load refuses.
Case = Callable[[Path, Any], tuple[Any, Any, dict[str, Any]]]
_CASES: dict[str, Case] = {
    "config": lambda p, n: (p, EMA(copy.deepcopy(n), decay=0.5), {}),
    "missing-key": lambda p, n: (p, EMA(copy.deepcopy(n), decay=0.9, exclude="2.*"), {}),
    "dtype": lambda p, n: (p, EMA(model(torch.float64), decay=0.9), {}),
    "shape": lambda p, n: (
        p,
        EMA(torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(3)), decay=0.9),
        {"strict": False},
    ),
    "config-given": lambda p, n: (p, EMA(copy.deepcopy(n), decay=0.9), {"config": ema.Config()}),
    "strict-type": lambda p, n: (p, EMA(copy.deepcopy(n), decay=0.9), {"strict": 1}),
    "directory": lambda p, n: (p.parent, EMA(copy.deepcopy(n), decay=0.9), {}),
    "like-type": lambda p, n: (p, {"w": np.ones(2)}, {}),
    "no-config": lambda p, n: (
        save(p.with_name("bare.safetensors"), ema.init({"0.weight": np.ones((3, 4))})),
        EMA(torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False)), decay=0.9),
        {},
    ),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_each_ema_refusal_is_loads_own(saved: tuple[Path, Any], case: str) -> None:
    path, like, kwargs = _CASES[case](*saved)
    before = _bits(like) if isinstance(like, EMA) else None
    with pytest.raises((TypeError, ValueError)) as checked:
        check(path, like, **kwargs)
    with pytest.raises(checked.type) as loaded:
        load(path, like, **kwargs)
    assert str(checked.value) == str(loaded.value)
    if before is not None:
        _unchanged(like, before)


def test_inside_swap_check_refuses_as_load_does(saved: tuple[Path, Any]) -> None:
    path, net = saved
    target = EMA(copy.deepcopy(net), decay=0.9)
    with target.swap():
        with pytest.raises(RuntimeError) as checked:
            check(path, target)
        with pytest.raises(RuntimeError) as loaded:
            load(path, target)
    assert str(checked.value) == str(loaded.value)


def _state_cases(tmp_path: Path) -> list[tuple[Path, Any, dict[str, Any]]]:
    cfg = ema.Config(schedule=0.5)
    tree = {"w": np.ones(2, np.float32), "v": np.ones(3)}
    path = save(tmp_path / "s", ema.init(tree), cfg)
    big = save(tmp_path / "big", ema.EMAState(np.asarray(300), {"w": np.ones(2)}, np.ones(())))
    return [
        (path, ema.init({"w": np.ones(2, np.float32), "u": np.ones(3)}), {}),
        (path, ema.init({"w": np.ones(2), "v": np.ones(3)}), {}),
        (path, ema.init({"w": np.ones(2, np.float32), "v": np.ones(4)}), {}),
        (path, ema.init(tree), {"config": ema.Config(schedule=0.25)}),
        (big, ema.EMAState(np.zeros((), np.int8), {"w": np.ones(2)}, np.ones(())), {}),
        (big, ema.EMAState(np.zeros(()), {"w": np.ones(2)}, np.ones(())), {}),
    ]


def test_each_state_refusal_is_loads_own(tmp_path: Path) -> None:
    cases = _state_cases(tmp_path)
    for path, like, kwargs in cases:
        with pytest.raises((TypeError, ValueError)) as checked:
            check(path, like, **kwargs)
        with pytest.raises(checked.type) as loaded:
            load(path, like, **kwargs)
        assert str(checked.value) == str(loaded.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "s"]  # nothing else written


def test_no_shadow_byte_is_read(saved: tuple[Path, Any], monkeypatch: Any) -> None:
    """check reads the header, step and weight: checking every file before loading any is
    cheap."""
    path, net = saved
    read, names = _safetensors.Reader.read, []

    def spy(self: Any, name: str) -> Any:
        names.append(name)
        return read(self, name)

    monkeypatch.setattr(_safetensors.Reader, "read", spy)
    check(path, EMA(copy.deepcopy(net), decay=0.9))
    check(path, ema.init({"0.weight": np.zeros((3, 4), np.float32)}), strict=False)
    assert sorted(set(names)) == ["step", "weight"]

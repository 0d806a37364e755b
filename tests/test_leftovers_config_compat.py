"""Leftovers: a peer's keyword given to ``Config`` names the field to use; the Paddle and TF
drop-ins save and resume (bit-equal to an uninterrupted run, a bad state changes nothing); and
their bias-corrected read under a decay that rounds to 1 in float32 is the raw average (the peers
divide by 0)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import schedules
from ema_core._config_words import PEER_WORDS
from ema_core.compat.paddle import ExponentialMovingAverage as PaddleEMA
from ema_core.compat.tensorflow import ExponentialMovingAverage as TFEMA

# --- Config(decay=...) and the other peers' keywords -------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decay": 0.99}, r"\(got decay=0\.99\).*Config\(0\.99\) or Config\(schedule=0\.99\)$"),
        ({"beta": 0.9}, r"beta=0\.9\): beta \(ema-pytorch\) is the decay; write Config\(0\.9\)"),
        ({"ema_momentum": 0.9}, r"ema_momentum \(Keras\) is the decay; write Config\(0\.9\)"),
        ({"momentum": 0.25}, r"1 - decay; write Config\(schedule=schedules\.momentum\(0\.25\)\)"),
        ({"update_every": 4}, r"update_every is Config\.interval; write Config\(interval=4\)"),
        ({"exclude_buffers": True}, r"Config\.buffers: True is Config\(buffers='copy'\)"),
        ({"debias": False}, r"False Config\(init='zeros', correction='none'\)"),
        ({"min_decay": 0.5}, r"Config\.schedule\): presets\.timm\(\.\.\., min_decay=0\.5\)"),
        ({"init": "copy", "decay": 0.9}, r"argument decay \(got decay=0\.9\)"),
    ],
)  # fmt: skip
def test_peer_keyword_names_the_field_to_use(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        ema.Config(**kwargs)


@pytest.mark.parametrize("name", sorted(PEER_WORDS))
def test_every_peer_keyword_names_a_config_field(name: str) -> None:
    kwargs: dict[str, Any] = {name: 3}
    with pytest.raises(TypeError, match=rf"^Config has no argument {name} \(got {name}=3\): ") as e:
        ema.Config(**kwargs)
    text = str(e.value)
    fields = [f.name for f in dataclasses.fields(ema.Config)]
    assert any(f"Config.{f}" in text or f"Config({f}=" in text for f in fields), text


@pytest.mark.parametrize(
    ("name", "value", "decays"),
    [("decay", 0.9, [0.9, 0.9]), ("beta", 0.5, [0.5, 0.5]), ("momentum", 0.25, [0.75, 0.75]),
     ("update_every", 2, [1.0, 0.25])],
)  # fmt: skip
def test_the_suggested_config_runs(name: str, value: Any, decays: list[float]) -> None:
    """The first ``Config(...)`` the message suggests builds and has the peer's meaning."""
    with pytest.raises(TypeError) as e:
        ema.Config(**{name: value})
    suggested = re.search(r"write (Config\(.*?\))(?: or|,| \(|$)", str(e.value))
    assert suggested is not None, str(e.value)
    config = eval(suggested.group(1), {"Config": ema.Config, "schedules": schedules})
    if name == "update_every":  # every 2nd update, compensated: 0.5 * 0.5
        config = dataclasses.replace(config, schedule=0.5)
    assert [config.decay(t) for t in (1, 2)] == decays


def test_config_keeps_its_dataclass_behaviour() -> None:
    config = ema.Config(0.9, "copy", None, 2)
    assert config == ema.Config(schedule=0.9, init="copy", interval=2)
    assert hash(config) == hash(ema.Config(schedule=0.9, init="copy", interval=2))
    assert repr(config).startswith("Config(schedule=Constant(decay=0.9), init='copy', dtype=None")
    assert dataclasses.replace(config, interval=3).interval == 3
    assert pickle.loads(pickle.dumps(config)) == config == copy.deepcopy(config)
    with pytest.raises(TypeError, match=r"argument decay \(got decay=0\.5\)"):
        dataclasses.replace(config, decay=0.5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'not_a_field'"):
        ema.Config(not_a_field=1)  # type: ignore[call-arg]


# --- compat.paddle: state_dict / load_state_dict ------------------------------------------------


def _same(a: Any, b: Any) -> None:
    """Equal nests of arrays, bit for bit (dtype, shape, bytes), and equal other values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        _same(tuple(a.values()), tuple(b.values()))
    elif isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and (a.dtype, a.shape) == (b.dtype, b.shape)
        assert a.tobytes() == b.tobytes()
    else:
        assert type(a) is type(b) and a == b


def _fill(params: dict[str, Any], rng: np.random.Generator) -> None:
    for value in params.values():
        value[...] = rng.standard_normal(value.shape).astype(value.dtype)


def _run(
    make: Any, step: Any, params: dict[str, Any], seed: int, steps: int, resume_at: int | None
) -> Any:
    """``steps`` steps of new random params, the EMA saved at ``resume_at`` (a deep copy of its
    state) and loaded into a fresh one that carries on."""
    ema_, rng = make(), np.random.default_rng(seed)
    for t in range(steps):
        if t == resume_at:
            state = copy.deepcopy(ema_.state_dict())
            ema_ = make()
            ema_.load_state_dict(state)
        _fill(params, rng)
        step(ema_, t)
    return ema_


def _paddle_run(steps: int, resume_at: int | None = None) -> tuple[Any, Any]:
    counter = [5]  # the caller's global step, read live
    params = {"w": np.zeros(3, np.float32), "b": np.zeros(2, np.float16)}

    def make() -> PaddleEMA:
        return PaddleEMA(list(params.items()), decay=0.99, thres_steps=lambda: counter[0])

    def step(ema_: Any, t: int) -> None:
        ema_.update()
        counter[0] += 1

    ema_ = _run(make, step, params, 0, steps, resume_at)
    return ema_.average(), ema_.state_dict()


@pytest.mark.parametrize("resume_at", [0, 1, 3])
def test_paddle_resumes_bit_equal(resume_at: int) -> None:
    want = _paddle_run(5)
    _same(_paddle_run(5, resume_at), want)
    assert want[1]["step"] == 5 and want[1]["thres_steps"] == 10


def test_paddle_state_is_a_copy() -> None:
    w = np.ones(2, np.float32)
    ema_ = PaddleEMA([("w", w)], decay=0.5)
    ema_.update()
    state = ema_.state_dict()
    saved = copy.deepcopy(state)
    ema_.update()
    _same(state, saved)


def _paddle_at(steps: int, thres_steps: Any = 2) -> PaddleEMA:
    params = [("w", np.zeros(3, np.float32)), ("b", np.zeros(2, np.float16))]
    ema_ = PaddleEMA(params, decay=0.99, thres_steps=thres_steps)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        _fill(dict(params), rng)
        ema_.update()
    return ema_


def _set(state: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    inner = state
    for key in path[:-1]:
        inner = inner[key]
    if value is _DROP:
        del inner[path[-1]]
    else:
        inner[path[-1]] = value
    return state


_DROP = object()
_BAD_PADDLE = [
    ((), [1], TypeError, "state_dict must be a mapping, got list"),
    (("last_decay",), _DROP, ValueError, r"state_dict must have the keys \['ema', 'step'"),
    (("decay",), 0.5, ValueError, r"\['decay'\] is 0\.5 but this instance's decay is 0\.99"),
    (("thres_steps",), None, ValueError, r"\['thres_steps'\] is None but this instance's \w+ is 2"),
    (("thres_steps",), 3, ValueError, r"\['thres_steps'\] is 3 but this instance's thres_\w+ is 2"),
    (("step",), -1, ValueError, r"state_dict\['step'\] must be an int in \[0, 2\*\*53\], got -1"),
    (("step",), 1.0, TypeError, r"state_dict\['step'\] must be an int >= 0, got float"),
    (("last_decay",), 1.5, ValueError, r"\['last_decay'\] must be in \[0\.0, 1\.0\], got 1\.5"),
    (("ema", "b"), _DROP, ValueError, r"\['ema'\] must name the tracked arrays; missing \['b'\]"),
    (("ema", "b"), np.zeros(3, np.float32), ValueError, r"\['ema'\]\['b'\] has shape \(3,\)"),
    (("ema", "b"), np.zeros(2, np.float16), TypeError, r"\['b'\] has dtype float16, the tracked"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "error", "match"), _BAD_PADDLE)
def test_paddle_bad_state_changes_nothing(
    path: tuple[str, ...], value: Any, error: type[Exception], match: str
) -> None:
    old = _paddle_at(1).state_dict()  # other values than the instance's: a write would show
    bad = value if not path else _set(old, path, value)
    ema_ = _paddle_at(3)
    before, averages = ema_.state_dict(), ema_.average()
    with pytest.raises(error, match=match):
        ema_.load_state_dict(bad)
    _same(ema_.state_dict(), before)
    _same(ema_.average(), averages)


def test_paddle_live_counter_is_the_callers() -> None:
    """A counter read live is not compared (the caller restores it), but must be set."""
    source = _paddle_at(2)
    state = source.state_dict()
    ema_ = _paddle_at(0, thres_steps=np.asarray(7))
    ema_.load_state_dict(state)
    _same(ema_.state_dict(), {**state, "thres_steps": 7})
    _same(ema_.average(), source.average())  # the last decay came along: 3/12, not 0.99
    with pytest.raises(ValueError, match=r"state_dict\['thres_steps'\] is 2 but .* is None"):
        _paddle_at(0, thres_steps=None).load_state_dict(state)


# --- compat.tensorflow: state_dict / load_state_dict --------------------------------------------


def _tf_run(zero_debias: bool, steps: int, resume_at: int | None = None) -> tuple[Any, Any]:
    counter = [3]
    params = {"w": np.zeros(3, np.float32), "b": np.zeros(2, np.float64)}

    def make() -> TFEMA:
        return TFEMA(0.99, num_updates=lambda: counter[0], zero_debias=zero_debias)

    def step(ema_: Any, t: int) -> None:
        ema_.apply([("w", params["w"])] + ([("b", params["b"])] if t >= 2 else []))  # b joins late
        counter[0] += 1

    ema_ = _run(make, step, params, 2, steps, resume_at)
    return {k: ema_.average(k) for k in params}, ema_.state_dict()


@pytest.mark.parametrize("zero_debias", [False, True])
@pytest.mark.parametrize("resume_at", [1, 3, 4])
def test_tensorflow_resumes_bit_equal(zero_debias: bool, resume_at: int) -> None:
    want = _tf_run(zero_debias, 6)
    _same(_tf_run(zero_debias, 6, resume_at), want)
    assert want[1]["local_steps"] == ({"w": 6, "b": 4} if zero_debias else {})


def test_tensorflow_loaded_shadow_waits_for_its_variable() -> None:
    w = np.full(2, 4.0, np.float32)
    saved = TFEMA(0.5)
    saved.apply([("w", w)])
    ema_ = TFEMA(0.5)
    ema_.load_state_dict(saved.state_dict())
    assert ema_.variables_to_restore() == {}  # no variable yet
    _same(ema_.average("w"), w)
    ema_.apply([("w", np.zeros(2, np.float32))])
    _same(ema_.average("w"), np.full(2, 2.0, np.float32))


def test_tensorflow_unnamed_arrays_cannot_be_saved() -> None:
    ema_ = TFEMA(0.5)
    ema_.apply([np.ones(2, np.float32)])
    with pytest.raises(ValueError, match="state_dict needs named variables"):
        ema_.state_dict()


def _tf_at(steps: int, zero_debias: bool = True) -> TFEMA:
    params = {"w": np.zeros(3, np.float32), "b": np.zeros(2, np.float64)}
    ema_, rng = TFEMA(0.99, num_updates=4, zero_debias=zero_debias), np.random.default_rng(3)
    for _ in range(steps):
        _fill(params, rng)
        ema_.apply(list(params.items()))
    return ema_


_BAD_TF = [
    (("zero_debias",), False, ValueError, r"\['zero_debias'\] is False but this instance's"),
    (("num_updates",), None, ValueError, r"state_dict\['num_updates'\] is None but .* is 4"),
    (("shadows", "x"), np.zeros(1, np.float32), ValueError, r"missing \[\], extra \['x'\]"),
    (("shadows", "b"), np.zeros(2, np.int64), TypeError, r"\['shadows'\]\['b'\] must be bfloat16/"),
    (("shadows", "b"), np.zeros(2, np.float32), TypeError, r"'b'\] has dtype float32, the tracked"),
    (("biased", "b"), np.zeros(3), ValueError, r"state_dict\['biased'\]\['b'\] has shape \(3,\)"),
    (("local_steps", "b"), _DROP, ValueError, r"state_dict\['local_steps'\] must map the names"),
    (("local_steps", "b"), -1, ValueError, r"state_dict\['local_steps'\]\['b'\] must be an int in"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "error", "match"), _BAD_TF)
@pytest.mark.parametrize("fresh", [False, True])
def test_tensorflow_bad_state_changes_nothing(
    path: tuple[str, ...], value: Any, error: type[Exception], match: str, fresh: bool
) -> None:
    if fresh and path[0] == "shadows" and "extra" in match:  # no slots: the state disagrees
        match = r"state_dict\['biased'\] must name the tracked arrays; missing \['x'\]"
    elif fresh and path[0] == "shadows" and "the tracked" in match:
        match = r"state_dict\['biased'\]\['b'\] has dtype float64, the tracked array float32"
    bad = _set(_tf_at(1).state_dict(), path, value)
    ema_ = _tf_at(0 if fresh else 3)
    before = None if fresh else ema_.state_dict()
    with pytest.raises(error, match=match):
        ema_.load_state_dict(bad)
    if fresh:
        assert ema_.average("w") is None and ema_.average("b") is None
    else:
        _same(ema_.state_dict(), before)


# --- a decay that rounds to 1 in float32: the raw average, where the peers divide by 0 ----------


def _jump(counter: list[int]) -> Callable[[], int]:
    return lambda: counter[0]


def test_paddle_decay_one_reads_the_raw_average() -> None:
    counter = [0]
    w = np.ones(2, np.float32)
    ema_ = PaddleEMA([("w", w)], decay=1.0, thres_steps=_jump(counter))
    ema_.update()  # decay 1/10: the average moves
    counter[0] = 4 * 10**8  # (1 + n) / (10 + n) is 1.0 in float32: 1 - d ** t is 0
    ema_.update()
    raw = ema_.state_dict()["ema"]["w"]
    assert np.all(raw > 0) and ema_.state_dict()["last_decay"] == 1.0
    _same(ema_.average()["w"], raw)
    with ema_.apply() as applied:
        _same(applied["w"], raw)


def test_tensorflow_decay_one_reads_the_raw_average() -> None:
    counter = [0]
    w = np.ones(2, np.float32)
    ema_ = TFEMA(1.0, num_updates=_jump(counter), zero_debias=True)
    ema_.apply([("w", w)])
    counter[0] = 4 * 10**8
    ema_.apply([("w", w)])
    biased = ema_.state_dict()["biased"]["w"]
    assert np.all(biased > 0)
    _same(ema_.average("w"), biased)

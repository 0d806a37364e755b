"""The test kit against deliberately wrong EMAs: each planted defect fails ``assert_matches``
with a message naming the step, the leaf path, the element and both values (no false pass).
The correct loop they are all derived from passes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import schedules, testing
from ema_core._tree import flatten, unflatten
from ema_core.testing._convert import to_numpy

WARMUP = ema.Config(schedule=schedules.warmup(0.999), init="copy")
ZEROS = ema.Config(schedule=schedules.warmup(0.99), init="zeros")
EVERY2 = ema.Config(schedule=0.9, interval=2)


def loop_ema(config: ema.Config, **defect: Any) -> Callable[[Any], Any]:
    """A correct float64 numpy EMA over any nest (floating leaves averaged, integer ones copied
    at every call), with at most one planted ``defect`` (see the keys read below)."""
    decay_of = defect.get("decay_of", config.decay)

    def make(init: Any) -> Callable[[Any, int], Any]:
        leaves, _, treedef = flatten(init)
        zeros = config.init == "zeros"
        own = leaves if defect.get("alias_init") else [to_numpy(x) for x in leaves]
        shadow = [np.zeros(x.shape) if zeros and _fl(x) else x for x in own]
        box = {"weight": 0.0 if zeros else 1.0}

        def step(params: Any, t: int) -> Any:
            d = float(decay_of(t))
            d = 1 - d if defect.get("swap") else d
            new = flatten(params)[0]
            for i, p in enumerate(new):
                shadow[i] = _one(shadow[i], to_numpy(p), d, defect)
            box["weight"] = d * box["weight"] + (1 - d)
            weight = 1 - d**t if defect.get("power_read") else box["weight"]
            out = [_read(s, weight, config, defect) for s in shadow]
            if defect.get("write_params"):
                for p, o in zip(new, out, strict=True):
                    p[...] = o
            return unflatten(treedef, out)

        return step

    return make


def _fl(x: Any) -> bool:
    return bool(np.asarray(x).dtype.kind == "f")


def _one(s: Any, p: np.ndarray, d: float, defect: dict[str, Any]) -> Any:
    if not _fl(p):
        ints = defect.get("ints", "copy")
        if ints == "average":
            return d * s + (1 - d) * p
        skipped = ints == "skip_at_decay_1" and d == 1.0
        return s if ints == "freeze" or skipped else p.copy()
    if isinstance(s, np.ndarray) and defect.get("alias_init"):
        s *= d
        s += (1 - d) * p  # in place: writes into trajectory.init
        return s
    return d * s + (1 - d) * p


def _read(s: Any, weight: float, config: ema.Config, defect: dict[str, Any]) -> Any:
    if config.init == "zeros" and _fl(s) and not defect.get("no_debias"):
        s = s / weight
    return s.astype(np.float16) if defect.get("half_read") else s


def _traj(steps: int = 8, *, small: float = 1.0, big: float = 1.0) -> testing.Trajectory:
    rng = np.random.default_rng(5)
    nests = [
        {
            "w": (rng.standard_normal((2, 3)) * big).astype(np.float32),
            "b": [(rng.standard_normal(2) * small).astype(np.float32)],
            "n": np.array(k * 3 + 1),  # an integer buffer that changes at every step
        }
        for k in range(steps + 1)
    ]
    return testing.Trajectory(nests[0], nests[1:])


@pytest.mark.parametrize("config", [WARMUP, ZEROS, EVERY2], ids=["copy", "zeros", "interval"])
def test_the_correct_loop_passes(config: ema.Config) -> None:
    # a float64 loop: a float of another width than the shadow's is accepted
    testing.assert_matches(loop_ema(config), config, _traj(), returned_dtype="kind")


# (config, defect, the leaf and step the message must name)
DEFECTS: dict[str, tuple[ema.Config, dict[str, Any], str]] = {
    "off-by-one": (WARMUP, {"decay_of": lambda t: WARMUP.decay(t + 1)}, "t=1, leaf params['"),
    "swapped": (WARMUP, {"swap": True}, "t=1, leaf params['"),
    "no-first-copy": (WARMUP, {"decay_of": schedules.warmup(0.999)}, "t=1, leaf params['"),
    "no-debias": (ZEROS, {"no_debias": True}, "t=1, leaf params['"),
    "power-not-exact": (ZEROS, {"power_read": True}, "t=2, leaf params['"),
    "buffer-averaged": (WARMUP, {"ints": "average"}, "t=2, leaf params['n']"),
    "buffer-frozen": (WARMUP, {"ints": "freeze"}, "t=1, leaf params['n']"),
    "buffer-skipped-at-decay-1": (EVERY2, {"ints": "skip_at_decay_1"}, "t=1, leaf params['n']"),
    "interval-ignored": (EVERY2, {"decay_of": lambda t: 0.9}, "t=1, leaf params['"),
    "no-compensation": (EVERY2, {"decay_of": lambda t: 1.0 if t % 2 else 0.9}, "t=2, leaf"),
    "half-read": (WARMUP, {"half_read": True}, "leaf params['"),
}


@pytest.mark.parametrize("name", list(DEFECTS))
def test_each_planted_defect_fails_with_step_leaf_and_values(name: str) -> None:
    config, defect, where = DEFECTS[name]
    with pytest.raises(AssertionError, match="differs from ema-core first at step") as err:
        testing.assert_matches(loop_ema(config, **defect), config, _traj())
    text = str(err.value)
    assert where in text
    assert "got " in text and "ema-core has " in text and "element " in text
    assert "ema-core applies decay" in text and "Config(" in text


def test_a_wrong_small_leaf_beside_a_large_one_fails() -> None:
    """Tolerances scale per leaf: a leaf of 1e-3 next to one of 1e3 is checked at its own
    scale (one trajectory-wide scale let a wholly wrong small leaf pass)."""

    def wrong_bias(init: Any) -> Callable[[Any, int], Any]:
        step = loop_ema(WARMUP)(init)
        return lambda params, t: {**step(params, t), "b": [np.zeros(2)]}

    with pytest.raises(AssertionError, match=r"leaf params\['b'\]\[0\], element 0"):
        testing.assert_matches(wrong_bias, WARMUP, _traj(small=1e-3, big=1e3))


@pytest.mark.parametrize(
    ("defect", "where"),
    [
        ("write_params", r"trajectory\.steps\[1\]\['w'\] during step t=2"),  # t=1 copies
        ("alias_init", r"trajectory\.init\['w'\] during step t=1"),
    ],
)
def test_an_ema_that_writes_into_its_inputs_fails(defect: str, where: str) -> None:
    """Its averages are right; the params (or init) it was given are not left as they were."""
    with pytest.raises(AssertionError, match=rf"the EMA changed its input {where}") as err:
        testing.assert_matches(loop_ema(WARMUP, **{defect: True}), WARMUP, _traj())
    assert "was " in str(err.value) and ", is " in str(err.value)


def test_swapped_keys_fail_at_the_key() -> None:
    """The EMA returns each leaf under the other's key (same shapes): matched by key."""
    config = ema.Config(schedule=0.9)
    nests = [{"a": np.full(2, float(k)), "b": np.full(2, -3.0 * k)} for k in range(4)]

    def make(init: Any) -> Callable[[Any, int], Any]:
        step = loop_ema(config)(init)
        return lambda params, t: dict(zip(("b", "a"), step(params, t).values(), strict=True))

    with pytest.raises(AssertionError, match=r"step t=1, leaf params\['a'\]"):
        testing.assert_matches(make, config, testing.Trajectory(nests[0], nests[1:]))


def test_rtol_zero_is_exact() -> None:
    """``rtol=0.0`` asks for bit-exact floats (it fell back to the default tolerance)."""

    def close(init: Any) -> Callable[[Any, int], Any]:
        step = loop_ema(WARMUP)(init)

        def run(params: Any, t: int) -> Any:
            out = step(params, t)
            return {**out, "w": out["w"] * (1 + 1e-9)}

        return run

    testing.assert_matches(close, WARMUP, _traj())
    with pytest.raises(AssertionError, match="tolerance 0"):
        testing.assert_matches(close, WARMUP, _traj(), rtol=0.0)


@pytest.mark.parametrize(
    "config",
    [
        ema.Config(schedule=0.9),
        ema.Config(schedule=0.3),  # below 0.5 the rule is blended from the params' side
        WARMUP,
        ZEROS,
        EVERY2,
        ema.Config(schedule=schedules.power_function(sigma_rel=0.1), init="zeros"),
    ],
)
def test_exact_mode_passes_ema_core_numpy_in_float64(config: ema.Config) -> None:
    """The oracle blends in the update rule's own form (``s + r (p - s)``; ``p - d (p - s)``
    below decay 0.5), so ema-core's numpy backend matches it with no tolerance at all (with
    ``d s + r p`` it differed in the last bit and "exact" failed ema-core itself)."""
    rng = np.random.default_rng(3)
    nests = [{"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)} for _ in range(9)]

    def make(init: Any) -> Callable[[Any, int], Any]:
        box = [ema.init({k: v.copy() for k, v in init.items()}, config)]

        def step(params: Any, t: int) -> Any:
            box[0] = ema.update(box[0], params, config)
            return ema.average(box[0], config)

        return step

    testing.assert_matches(
        make, config, testing.Trajectory(nests[0], nests[1:]), rtol=0.0, atol=0.0
    )


def test_torch_ema_float64_passes_at_rtol_1e_15() -> None:
    """The README's advice for torch (``lerp`` rounds differently in the last bit): the torch
    ``EMA`` class in float64 passes at ``rtol=1e-15``."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    rng = np.random.default_rng(4)
    nests = [{"w": rng.standard_normal((3, 4))} for _ in range(12)]

    def make(init: Any) -> Callable[[Any, int], Any]:
        module = torch.nn.Module()
        module.w = torch.nn.Parameter(torch.tensor(init["w"]))
        average = EMA(module, config=ZEROS)

        def step(params: Any, t: int) -> Any:
            with torch.no_grad():
                module.w.copy_(torch.as_tensor(params["w"]))
            average.update()
            return {"w": average.average["w"].numpy().copy()}

        return step

    testing.assert_matches(make, ZEROS, testing.Trajectory(nests[0], nests[1:]), rtol=1e-15)

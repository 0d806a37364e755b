"""Peer parity over drawn settings of each peer's own arguments (hypothesis); optax and Keras.

A few settings per peer and run: decays across 0.5-0.99999 and the edges 0 and 1, intervals,
warm-up flags, ``update_after_step``, floors (above the decay too), buffer flags, accumulator
dtypes, the peers' own switches, timm with and without ``step=``, over 150-180 steps. A failure
prints the setting and a ``@reproduce_failure`` blob. ``--hypothesis-profile=parity-long`` (in
``tests/conftest.py``) draws 255 per peer; ``scripts/parity_bounds.py`` measures the bounds.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import ema_core
from ema_core import presets
from tests import peer_oracles
from tests.peers import (
    BANDS,
    EPS32,
    Bound,
    Judge,
    KerasWorker,
    Setting,
    require,
    require_installed,
)
from tests.test_presets_peers import DRIVERS, bound_for, run_torch

pytestmark = pytest.mark.slow  # the real peer libraries: `pytest -m "not slow"` leaves it out

LONG_PROFILE = "parity-long"
EXAMPLES = 3  # settings per peer per test run, outside the long profile
T = TypeVar("T")


class Draw(Protocol):
    """Where a setting's values come from: hypothesis here, numpy in scripts/parity_bounds.py.
    ``decay()`` is 0, 1 or in [0.5, 0.99999], spread evenly in ``log10(1 - d)``."""

    def decay(self) -> float: ...
    def real(self, lo: float, hi: float) -> float: ...
    def integer(self, lo: int, hi: int) -> int: ...
    def flag(self) -> bool: ...
    def pick(self, options: Sequence[T]) -> T: ...


class HypothesisDraw:
    """``Draw`` through a composite strategy's ``draw``; a quarter of the decays are 0 or 1."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        self.draw = draw

    def decay(self) -> float:
        lo, hi = (float(-np.log10(1.0 - d)) for d in (BANDS[0][0], BANDS[-1][1]))
        kind = self.draw(st.sampled_from(["edge 0", "edge 1"] + ["band"] * 6))
        if kind == "band":
            return round(1.0 - 10.0 ** -self.draw(st.floats(lo, hi)), 8)
        return 0.0 if kind == "edge 0" else 1.0

    def real(self, lo: float, hi: float) -> float:
        return float(self.draw(st.floats(lo, hi)))

    def integer(self, lo: int, hi: int) -> int:
        return int(self.draw(st.integers(lo, hi)))

    def flag(self) -> bool:
        return bool(self.draw(st.booleans()))

    def pick(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(options))  # type: ignore[no-any-return]


def _run(
    d: Draw, args: dict[str, Any], extra: dict[str, Any] | None = None, peer_step: bool = True
) -> Setting:
    """A ``Setting``: the trajectory and how ema-core counts steps are drawn too."""
    return Setting(args, extra or {}, peer_step, d.flag(), d.integer(0, 2**16), d.integer(150, 180))


def _floor(d: Draw, decay: float) -> float:
    """A floor (``min_decay``, ``min_value``): 0, anything in [0, 1], or above the decay (the
    peers accept it: the floor wins, or for ema-pytorch the decay)."""
    kind = d.pick(["zero", "any", "above the decay"])
    u = d.real(0.0, 1.0)
    return 0.0 if kind == "zero" else u if kind == "any" else decay + (1.0 - decay) * u


def _timm(d: Draw) -> Setting:
    decay = d.decay()
    args = {
        "decay": decay,
        "min_decay": _floor(d, decay),
        "update_after_step": d.integer(0, 40),
        "use_warmup": d.flag(),
        "warmup_gamma": d.real(0.5, 4.0),
        "warmup_power": d.real(0.4, 1.0),
        "exclude_buffers": d.flag(),
        "dtype": d.pick([None, "float32", "float64"]),
    }
    return _run(d, args, {"foreach": d.flag()}, peer_step=d.flag())


def _ema_pytorch(d: Draw) -> Setting:
    beta = d.decay()
    args = {
        "beta": beta,
        "update_after_step": d.integer(0, 40),
        "update_every": d.integer(1, 12),
        "inv_gamma": d.real(0.5, 4.0),
        "power": d.real(0.4, 1.0),
        "min_value": _floor(d, beta),
    }
    return _run(d, args, {"use_foreach": d.flag(), "include_online_model": False})


def _karras(d: Draw) -> Setting:
    width = d.pick(["sigma_rel", "gamma"])
    value = d.real(0.03, 0.28) if width == "sigma_rel" else d.real(0.5, 40.0)
    return _run(d, {width: value, "update_every": d.integer(1, 12)})


def _diffusers(d: Draw) -> Setting:
    decay = d.decay()
    args = {
        "decay": decay,
        "min_decay": _floor(d, decay),
        "update_after_step": d.integer(0, 40),
        "use_ema_warmup": d.flag(),
        "inv_gamma": d.real(0.5, 4.0),
        "power": d.real(0.4, 1.0),
    }
    return _run(d, args, {"foreach": d.flag()})


def _mmengine(d: Draw) -> Setting:
    momentum = min(max(1.0 - d.decay(), 1e-5), 0.5)  # mmengine takes momentum in (0, 1)
    gamma = d.pick([None, d.real(1.0, 200.0)])
    args = {
        "momentum": momentum,
        "interval": d.integer(1, 5),
        "update_buffers": d.flag(),
        "gamma": gamma,
    }
    return _run(d, args)


#: Per peer, its settings: its own arguments, drawn.
SPACES: dict[str, Callable[[Draw], Setting]] = {
    "timm": _timm,
    "torch_ema": lambda d: _run(d, {"decay": d.decay(), "use_num_updates": d.flag()}),
    "ema_pytorch": _ema_pytorch,
    "ema_pytorch_karras": _karras,
    "diffusers": _diffusers,
    "swa_utils": lambda d: _run(d, {"decay": d.decay(), "use_buffers": d.flag()}),
    "mmengine": _mmengine,
    "optax": lambda d: _run(
        d,
        {
            "decay": d.decay(),
            "debias": d.flag(),
            "accumulator_dtype": d.pick([None, "float32", "bfloat16", "float16"]),
        },
    ),
    "keras": lambda d: _run(d, {"ema_momentum": d.decay()}),
}


@st.composite
def settings_of(draw: Callable[[Any], Any], peer: str) -> Setting:
    return SPACES[peer](HypothesisDraw(draw))


def parity(test: Callable[..., None]) -> Callable[..., None]:
    """A few settings per run, the same ones every run (``derandomize``: a fresh clone has no
    example database, and a random draw near a bound made CI flip); the long profile draws anew
    each time, its count of settings; the blob on failure."""
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large]
    count = (
        {}
        if settings.get_current_profile_name() == LONG_PROFILE
        else {"max_examples": EXAMPLES, "derandomize": True}
    )
    return settings(deadline=None, print_blob=True, suppress_health_check=checks, **count)(test)


@pytest.mark.parametrize("peer", list(DRIVERS))
@parity
@given(data=st.data())
def test_torch_peer(peer: str, data: st.DataObject) -> None:
    run_torch(peer, data.draw(settings_of(peer), label=peer))


#: Bounds of a free optax run with a half accumulator, in its ulps: optax forms ``decay * ema``
#: in the accumulator dtype (a Python float times a bfloat16 array stays bfloat16 in JAX),
#: ema-core and the oracle blend in float32 and round once: the states part by up to ~40 of its
#: ulps over 150-180 steps. From one state (``run_optax``'s second judge) ema-core's read is held
#: to float32 rounding of the oracle's, and optax's to 2 ulps of the accumulator.
HALF_ULPS = Bound(64, 4)


def optax_bounds(s: Setting) -> tuple[Bound, Bound]:
    """The bounds of a free optax run, and of the reads from ema-core's own state."""
    tight = bound_for("optax", s.args["decay"])
    acc = s.args["accumulator_dtype"]
    if acc not in ("bfloat16", "float16"):
        return tight, tight
    ulp = 2.0 ** (-7 if acc == "bfloat16" else -10) / EPS32
    free = Bound(
        tight.ours_peer + HALF_ULPS.ours_peer * ulp, tight.ours_oracle + HALF_ULPS.ours_oracle * ulp
    )
    return free, Bound(tight.ours_peer + 2 * ulp, tight.ours_oracle)


def run_optax(s: Setting, bounds: tuple[Bound, Bound] | None = None) -> list[Judge]:
    """optax.ema and ema-core over a seeded float32 random walk of two leaves, beside the
    oracle; then, at each step, optax's update from ema-core's previous state, and ema-core's
    read against the exact read of its own new state."""
    optax, jnp = require("optax"), require("jax.numpy")
    walk = np.cumsum(np.random.default_rng(s.seed).standard_normal((s.steps + 1, 2, 6)), axis=0)
    walk = walk.astype(np.float32)

    def params(t: int) -> dict[str, Any]:
        return {"a": jnp.asarray(walk[t, 0]), "b": jnp.asarray(walk[t, 1, :4])}

    acc = s.args["accumulator_dtype"]
    tx = optax.ema(s.args["decay"], s.args["debias"], acc and getattr(jnp, acc))
    config = presets.optax(**s.args)
    peer, state = tx.init(params(0)), ema_core.init(params(0), config)
    oracle = peer_oracles.OptaxOracle({"a": np.zeros(6), "b": np.zeros(4)}, **s.args)
    judges = [
        Judge(b, f"optax {s}", {"a": "param", "b": "param"}, oracle.deviating())
        for b in bounds or optax_bounds(s)
    ]
    for t in range(1, s.steps + 1):
        before = peer_oracles.OptaxOracle(state.shadow, **s.args, t=t - 1)
        prior = optax.EmaState(jnp.asarray(t - 1, jnp.int32), state.shadow)
        from_ours, _ = tx.update(params(t), prior)
        out, peer = tx.update(params(t), peer)
        state = ema_core.update(state, params(t), config)
        mine = ema_core.average(state, config)
        oracle.call({k: np.asarray(v) for k, v in params(t).items()})
        before.call({k: np.asarray(v) for k, v in params(t).items()})
        judges[0].check(t, "init/update/average", mine, out, oracle.peer_view(), oracle.ours_view())
        judges[1].check(
            t,
            "from ema-core's state",
            mine,
            from_ours,
            before.peer_view(),
            before.read_of(state.shadow),
        )
    return judges


def run_keras(worker: KerasWorker, s: Setting, bound: Bound | None = None) -> Judge:
    """Keras' averages (from the worker) against ema-core's and the oracle's over the same
    variables, after every step."""
    data = worker.run(s.args, s.seed, s.steps)
    config = presets.keras(**s.args)
    live = {f"v{i}": data[f"init{i}"] for i in range(2)}
    state = ema_core.init(live, config)
    oracle = peer_oracles.Oracle(live, dict.fromkeys(live, "param"), peer_oracles.keras(**s.args))
    judge = Judge(
        bound or bound_for("keras", s.args["ema_momentum"]),
        f"keras {s}",
        dict.fromkeys(live, "param"),
    )
    for t in range(s.steps):
        live = {f"v{i}": data[f"var{i}_{t}"] for i in range(2)}
        state = ema_core.update(state, live, config)
        oracle.call(live)
        theirs = {f"v{i}": data[f"ema{i}_{t}"] for i in range(2)}
        judge.check(
            t + 1,
            "init/update/average",
            ema_core.average(state, config),
            theirs,
            oracle.peer_view(),
            oracle.ours_view(),
        )
    return judge


@parity
@given(setting=settings_of("optax"))
@example(setting=Setting({"decay": 0.95, "debias": True, "accumulator_dtype": None}))
@example(setting=Setting({"decay": 0.95, "debias": False, "accumulator_dtype": None}))
@example(setting=Setting({"decay": 0.99984, "debias": True, "accumulator_dtype": "bfloat16"}))
@example(setting=Setting({"decay": 0.9, "debias": False, "accumulator_dtype": "float16"}))
@example(setting=Setting({"decay": 1.0, "debias": True, "accumulator_dtype": None}))
def test_optax(setting: Setting) -> None:
    run_optax(setting)


@pytest.fixture(scope="module")
def keras_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, KerasWorker]]:
    """One Keras process per installed backend, started together (each import takes seconds)."""
    require_installed("keras")
    tmp = Path(tmp_path_factory.mktemp("keras"))
    found = [b for b in ("jax", "torch") if importlib.util.find_spec(b) is not None]
    workers = {backend: KerasWorker(backend, tmp) for backend in found}
    yield workers
    for worker in workers.values():  # end of input: the processes exit together (seconds each)
        assert worker.proc.stdin is not None
        worker.proc.stdin.close()
    for worker in workers.values():
        worker.close()


@pytest.mark.parametrize("backend", ["jax", "torch"])
@parity
@given(setting=settings_of("keras"))
@example(setting=Setting({"ema_momentum": 0.9}))
def test_keras(keras_workers: dict[str, KerasWorker], backend: str, setting: Setting) -> None:
    if backend not in keras_workers:
        pytest.skip(f"Keras backend {backend} is not installed")
    run_keras(keras_workers[backend], setting)

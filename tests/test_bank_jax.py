"""make_bank_update: K EMAs in one jitted call, bit for bit K separate make_update runs."""

from __future__ import annotations

import importlib
import io

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core import schedules  # noqa: E402
from ema_core.jax import load_state_dict, make_bank_update, make_update, state_dict  # noqa: E402

MIXED = (
    ema.Config(schedule=schedules.power_function(sigma_rel=0.05), init="copy"),
    ema.Config(schedule=schedules.power_function(sigma_rel=0.10), init="copy", interval=3),
    ema.Config(schedule=schedules.warmup(0.999), init="zeros", interval=2, compensate=False),
    ema.Config(schedule=0.9, dtype="same", non_float="freeze"),
)


def _params(k: float = 0.0, leaves: int = 2) -> dict[str, jax.Array]:
    """fp32 and bf16 arrays (fp32 shadows) and an int32 counter, moved by ``k``."""
    rng = np.random.default_rng(int(k))
    tree = {
        f"w{i}": jnp.asarray(rng.standard_normal((6, 5)) + k, jnp.float32) for i in range(leaves)
    }
    tree["b"] = jnp.asarray(rng.standard_normal(7) - k, jnp.bfloat16)
    tree["n"] = jnp.asarray(int(k), jnp.int32)
    return tree


def _separate(configs, steps, start=0, leaves=2):
    updates = [make_update(c) for c in configs]
    states = [ema.init(_params(leaves=leaves), c) for c in configs]
    for t in range(start + 1, start + steps + 1):
        states = [u(s, _params(t, leaves)) for u, s in zip(updates, states, strict=True)]
    return states


def _assert_same_bits(got, want) -> None:
    got, want = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    assert len(got) == len(want)
    for x, y in zip(got, want, strict=True):
        a, b = np.asarray(x), np.asarray(y)
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        assert a.tobytes() == b.tobytes(), (a, b)


@pytest.mark.parametrize("donate", [True, False])
def test_mixed_configs_equal_separate_updates_bit_for_bit(donate):
    bank = make_bank_update(MIXED, donate=donate)
    states = bank.init(_params())
    for t in range(1, 25):
        before = jax.tree_util.tree_leaves(states)
        states = bank(states, _params(t))
        assert all(x.is_deleted() == donate for x in before)
    assert [int(s.step) for s in states] == [24] * 4
    _assert_same_bits(states, _separate(MIXED, 24))


def test_sigma_rels_build_edm2_configs_with_interval():
    bank = make_bank_update(sigma_rels=(0.05, 0.10), interval=4)
    assert bank.configs == tuple(
        ema.Config(schedule=schedules.power_function(sigma_rel=s), init="copy", interval=4)
        for s in (0.05, 0.10)
    )
    states = bank.init(_params())
    for t in range(1, 31):
        states = bank(states, _params(t))
    _assert_same_bits(states, _separate(bank.configs, 30))


def test_inside_an_outer_jit_with_traced_steps():
    bank = make_bank_update(MIXED)

    @jax.jit
    def train_step(states, t):
        params = jax.tree_util.tree_map(lambda x: x, _params())  # constants of the trace
        params = {**params, "w0": params["w0"] + t.astype(jnp.float32)}
        return bank(states, params)

    states = bank.init(_params())
    updates = [make_update(c) for c in MIXED]
    separate = [ema.init(_params(), c) for c in MIXED]
    for t in range(1, 12):
        states = train_step(states, jnp.asarray(t))
        params = {**_params(), "w0": _params()["w0"] + jnp.float32(t)}
        separate = [u(s, params) for u, s in zip(updates, separate, strict=True)]
    _assert_same_bits(states, separate)


def test_resume_through_state_dict_continues_bit_for_bit():
    bank = make_bank_update(MIXED)
    states = bank.init(_params())
    for t in range(1, 11):
        states = bank(states, _params(t))
    files = []
    for state in states:
        buf = io.BytesIO()
        np.savez(buf, **state_dict(state))
        files.append(buf.getvalue())
    fresh = make_bank_update(MIXED)  # a new process: a new bank, states built from the files
    like = fresh.init(_params())
    states = tuple(
        load_state_dict(np.load(io.BytesIO(f)), s) for f, s in zip(files, like, strict=True)
    )
    for t in range(11, 21):
        states = fresh(states, _params(t))
    _assert_same_bits(states, _separate(MIXED, 20))


@pytest.mark.parametrize("donate", [True, False])
def test_chunked_path_equals_separate_updates(monkeypatch, donate):
    from ema_core.jax import _chunked

    monkeypatch.setattr(_chunked, "CHUNK", 3)  # 5 leaves: chunks of 3 and 2
    bank = make_bank_update(MIXED, donate=donate)
    states = bank.init(_params(leaves=3))
    for t in range(1, 13):
        states = bank(states, _params(t, leaves=3))
    _assert_same_bits(states, _separate(MIXED, 12, leaves=3))


@pytest.mark.parametrize("chunk", [1024, 3])
def test_a_bad_call_raises_before_anything_is_donated(monkeypatch, chunk):
    from ema_core.jax import _chunked

    monkeypatch.setattr(_chunked, "CHUNK", chunk)
    bank = make_bank_update(MIXED)
    states = bank(bank.init(_params(leaves=3)), _params(1, leaves=3))
    bad = {**_params(2, leaves=3), "w1": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"params\['w1'\] has shape \(3,\)"):
        bank(states, bad)
    with pytest.raises(ValueError, match="states must hold one EMAState per config \\(4\\), got 3"):
        bank(states[:3], _params(2, leaves=3))
    with pytest.raises(TypeError, match=r"states\[1\] must be an EMAState, got dict"):
        bank((states[0], {}, *states[2:]), _params(2, leaves=3))
    negative = (states[0]._replace(step=jnp.asarray(-1)), *states[1:])
    with pytest.raises(ValueError, match="-1"):
        bank(negative, _params(2, leaves=3))
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(states))
    states = bank(states, _params(2, leaves=3))
    assert [int(s.step) for s in states] == [2] * 4


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((), {}, TypeError, "exactly one of configs or sigma_rels"),
        ((MIXED,), {"sigma_rels": (0.1,)}, TypeError, "exactly one of configs or sigma_rels"),
        (((),), {}, ValueError, r"configs is empty: a bank needs at least one EMA \(K >= 1\)"),
        ((), {"sigma_rels": ()}, ValueError, "sigma_rels is empty"),
        (
            (),
            {"sigma_rels": (0.05, 0.3)},
            ValueError,
            r"sigma_rels\[1\] must be in \(0, 12\*\*-0.5 = 0.288675\), got 0.3",
        ),
        ((), {"sigma_rels": (0.0,)}, ValueError, r"sigma_rels\[0\] must be in"),
        (
            (),
            {"sigma_rels": (0.1, "0.2")},
            TypeError,
            r"sigma_rels\[1\] must be a real number, got str",
        ),
        (
            (),
            {"sigma_rels": (0.1, 0.1)},
            ValueError,
            r"sigma_rels\[1\]=0.1 repeats sigma_rels\[0\]",
        ),
        ((), {"sigma_rels": (0.1,), "interval": 0}, ValueError, "interval must be an int > 0"),
        ((), {"sigma_rels": 0.1}, TypeError, r"sigma_rels must be a sequence \(list or tuple\)"),
        (((0.9,),), {}, TypeError, r"configs\[0\] must be an ema_core.Config, got float"),
        ((MIXED,), {"interval": 2}, TypeError, "interval=2 goes with sigma_rels"),
        ((MIXED,), {"donate": 1}, TypeError, "donate must be True or False, got 1"),
        ((MIXED,), {"snapshot_every": 0, "snapshot_dir": "x"}, ValueError, "snapshot_every"),
        ((), {"sigma_rels": (0.1,), "snapshot_every": 10}, ValueError, "needs snapshot_dir"),
        ((MIXED,), {"snapshot_every": 10, "snapshot_dir": "x"}, ValueError, r"configs\[2\] has no"),
        ((), {"sigma_rels": (0.1,), "snapshot_dir": "x"}, ValueError, "needs snapshot_every"),
        (
            (MIXED[:2],),
            {"snapshot_every": 6, "snapshot_dir": "x"},
            ValueError,
            r"must share one interval; got intervals \[1, 3\]",
        ),
        (
            (),
            {"sigma_rels": (0.1,), "interval": 4, "snapshot_every": 6, "snapshot_dir": "x"},
            ValueError,
            "snapshot_every=6 must be a multiple of the EMAs' interval",
        ),
    ],
)
def test_bad_arguments_are_refused(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        make_bank_update(*args, **kwargs)


def test_one_compiled_call_holds_every_ema():
    """The K updates are one XLA computation: K blend fusions per array, one dispatch."""
    bank = make_bank_update(sigma_rels=(0.05, 0.10, 0.15))
    states = bank.init(_params())
    text = bank.lower(states, _params(1)).compile().as_text()
    entry = text[text.index("ENTRY") :]
    outputs = entry.splitlines()[0].split("->")[1]
    assert outputs.count("f32[6,5]") == 2 * 3 and outputs.count("f32[7]") == 3


def _save_snapshot():
    try:
        return importlib.import_module("ema_core.posthoc").save_snapshot
    except (ImportError, AttributeError):
        pytest.skip("posthoc not built yet")


def test_snapshot_every_writes_each_ema_at_its_steps(tmp_path):
    _save_snapshot()
    posthoc = importlib.import_module("ema_core.posthoc")
    bank = make_bank_update(
        sigma_rels=(0.05, 0.10), interval=2, snapshot_every=4, snapshot_dir=tmp_path
    )
    states = bank.init(_params())
    for t in range(1, 11):
        states = bank(states, _params(t))
    infos = posthoc.list_snapshots(tmp_path)
    assert sorted((i.step, round(i.sigma_rel, 6)) for i in infos) == [
        (s, r) for s in (4, 8) for r in (0.05, 0.1)
    ]

"""README claims of "torch models", "JAX in depth" and "NumPy and CuPy backends" that no other
test asserted. Each test names its claim; the comment gives the README line."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

import ema_core
from ema_core import _settings
from ema_core.backends import host
from ema_core.backends import numpy as fast

torch = pytest.importorskip("torch")

from ema_core.torch import EMA  # noqa: E402


def _net() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 2)
    )


def _forward(model: Any) -> None:
    model.train()
    model(torch.randn(8, 3))  # moves the BatchNorm statistics


@pytest.mark.parametrize("buffers", ["copy", "average"])
@pytest.mark.parametrize(
    ("name", "new"),
    [
        ("running_mean", lambda: torch.zeros(6, dtype=torch.int64)),
        ("num_batches_tracked", lambda: torch.tensor(3.0)),
    ],
    ids=["float-to-int", "int-to-float"],
)
def test_a_tensor_switched_between_float_and_integer_is_refused_before_any_write(
    buffers: str, name: str, new: Any
) -> None:
    # README 221-222: "switched between float and integer raises ValueError before anything
    # is written" (copied buffers, the default, were followed into the new dtype)
    model = _net()
    ema = EMA(model, decay=0.5, buffers=buffers)
    _forward(model)
    before = {n: t.clone() for n, t in ema.average.items()}
    setattr(model[1], name, new())
    role = r"an? (averaged|copied) torch.\w+ (parameter|buffer)"
    with pytest.raises(ValueError, match=rf"'1.{name}' is {role} now and was {role}"):
        ema.update()
    after = ema.average
    for n, t in before.items():
        assert after[n].dtype == t.dtype and torch.equal(after[n], t), n
    assert ema.step == 0


def test_buffers_copy_is_the_default_and_follows_the_model_when_decay_one_skips() -> None:
    # README 211-213: buffers="copy" (the default) follows the model on every update() call,
    # also the calls decay=1.0 skips
    model = _net()
    ema = EMA(model, decay=1.0)
    weight = ema.average["0.weight"].clone()
    for _ in range(3):
        _forward(model)
        with torch.no_grad():
            model[0].weight.add_(1.0)
        ema.update()
        bn, avg = model[1], ema.average
        assert torch.equal(avg["1.running_mean"], bn.running_mean)
        assert torch.equal(avg["1.running_var"], bn.running_var)
        assert torch.equal(avg["1.num_batches_tracked"], bn.num_batches_tracked)
        assert torch.equal(avg["0.weight"], weight)  # the skipped call leaves the params


def test_a_config_carries_its_buffer_policy() -> None:
    # README 210-211: config= (a preset's Config) carries its buffer policy, over the default
    model = _net()
    ema = EMA(model, config=ema_core.Config(schedule=0.5, buffers="average"))
    start = model[1].running_mean.clone()
    _forward(model)
    ema.update()
    live = model[1].running_mean
    assert not torch.equal(live, start)
    torch.testing.assert_close(ema.average["1.running_mean"], (start + live) / 2)


def test_update_counts_steps_internally_and_state_dict_holds_step_and_config() -> None:
    # README 183: state_dict() holds the shadows, the step counter and the config
    model = _net()
    ema = EMA(model, decay=0.5)
    for _ in range(3):
        ema.update()
    state = ema.state_dict()
    assert int(state["step"]) == 3 == ema.step
    assert set(state["shadow"]) == set(ema.names)
    assert state["config"] == repr(ema.config)


jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


@pytest.mark.parametrize(("leaves", "chunked"), [(1024, False), (1025, True)])
def test_more_than_1024_tensors_are_updated_in_chunks(
    monkeypatch: pytest.MonkeyPatch, leaves: int, chunked: bool
) -> None:
    # README 233-234: models of more than 1,024 tensors are updated in compiled chunks
    from ema_core.jax import _chunked, make_update

    runs: list[int] = []
    real = _chunked.Chunked.run

    def run(self: Any, arrays: list[Any], params: list[Any], kinds: Any) -> list[Any]:
        runs.append(len(params))
        return real(self, arrays, params, kinds)

    monkeypatch.setattr(_chunked.Chunked, "run", run)
    tree = {f"l{i}": jnp.asarray(float(i)) for i in range(leaves)}
    step = make_update(ema_core.Config(schedule=0.5), donate=False)
    state = step(ema_core.init(tree), {k: v + 2 for k, v in tree.items()})
    assert runs == ([leaves] if chunked else [])
    assert float(state.shadow[f"l{leaves - 1}"]) == leaves - 1 + 1.0


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(_settings, "_kept", [])  # read again at the next use
    return monkeypatch


def test_numpy_threads_default_to_the_usable_cpus_at_most_4(fresh_settings: Any) -> None:
    # README 304: EMA_CORE_NUMPY_THREADS defaults to the usable CPUs, at most 4
    fresh_settings.delenv("EMA_CORE_NUMPY_THREADS", raising=False)
    assert fast.workers() == max(1, min(4, len(os.sched_getaffinity(0))))


def test_numpy_threads_1_keeps_everything_on_the_calling_thread(fresh_settings: Any) -> None:
    # README 304-305: `1` keeps everything on the calling thread
    fresh_settings.setenv("EMA_CORE_NUMPY_THREADS", "1")
    assert fast.workers() == 1
    big = np.zeros(4 * host.LEAST, np.float32)
    assert len(host.plan([big], [big.copy()], workers=fast.workers()).shares) == 1


@pytest.mark.parametrize(("elements", "shares"), [(2 * host.LEAST - 1, 1), (2 * host.LEAST, 2)])
def test_updates_under_2m_elements_stay_on_the_calling_thread(elements: int, shares: int) -> None:
    # README 305: updates under 2M elements stay on the calling thread
    assert 2 * host.LEAST == 2**21
    shadow = np.zeros(elements, np.float32)
    assert len(host.plan([shadow], [shadow.copy()], workers=4).shares) == shares


def test_leaves_of_up_to_4096_elements_with_the_same_dtypes_are_gathered() -> None:
    # README 302-303: leaves of up to 4,096 elements with the same dtypes share one block
    sizes = [4096, 4097, 10, 10]
    dtypes = [("f4", "f4"), ("f4", "f4"), ("f4", "f4"), ("f4", "f2")]
    shadows = [np.zeros(n, s) for n, (s, _) in zip(sizes, dtypes, strict=True)]
    params = [np.ones(n, p) for n, (_, p) in zip(sizes, dtypes, strict=True)]
    (items,) = host.plan(shadows, params).shares
    batched = [
        [leaf.shadow.size for leaf in it.leaves] for it in items if isinstance(it, host.Batch)
    ]
    assert sorted(map(sorted, batched)) == [[10], [10, 4096]]  # one block per dtype pair
    whole = [it.shadow.size for it in items if isinstance(it, host.Leaf)]
    assert whole == [4097]


def test_a_state_dict_kept_in_memory_moves_with_the_ema_and_a_deep_copy_does_not() -> None:
    # README "torch models": "like module.state_dict() it holds the live shadow tensors (the
    # step is a copy) ... torch.save it, or copy.deepcopy it, to keep a snapshot"
    import copy

    model = _net()
    ema = EMA(model, decay=0.5)
    kept = ema.state_dict()
    snapshot = copy.deepcopy(kept)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update()
    now = ema.state_dict()
    assert torch.equal(kept["shadow"]["0.weight"], now["shadow"]["0.weight"])
    assert int(kept["step"]) == 0 and int(now["step"]) == 1
    assert not torch.equal(snapshot["shadow"]["0.weight"], now["shadow"]["0.weight"])

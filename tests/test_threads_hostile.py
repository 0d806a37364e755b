"""ema-core used from several Python threads at once, as trainers do: a training thread beside
an evaluation or checkpoint thread, several models (or several EMAs of one model) updated in a
thread pool. Each thread owns its shadows; params may be shared. Every result is compared bit
for bit with the same updates run one after the other on one thread: the host engine's
kernels are elementwise, so the threads may change the speed, never a bit.

The updates are large enough for the host engine to deal them over its own worker threads
(``2 * host.LEAST`` elements or more; ``EMA_CORE_NUMPY_THREADS=3`` forces three workers for
numpy on any machine) and mix in small batched leaves, half params and strided leaves, with
and without numba (``host_kernels``).

The last tests pin three bugs of the engine's threads (``_threads``) found and fixed on
2026-12-03, made certain by forcing the thread switch where it hurts: the pool registry
(``_pool``) was walked and filled without a lock (a RuntimeError, a second pool leaked), and
``run_shares`` returned while pool threads still wrote when the caller's share raised.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import _settings, _stateless
from ema_core.backends import host
from ema_core.backends import numpy as numpy_backend
from ema_core.backends.host import _threads

#: Elements of the large leaf: above the size the engine deals over its workers.
BIG = 2 * host.LEAST + 4099
#: Decays of the successive updates: both ends (copy, keep) and both sides of 0.5.
DECAYS = (0.9, 0.3, 0.0, 0.999, 1.0, 0.5)


@pytest.fixture
def three_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Numpy updates dealt over three engine threads, whatever the machine's CPU count."""
    monkeypatch.setenv("EMA_CORE_NUMPY_THREADS", "3")
    monkeypatch.setattr(_settings, "_kept", [])  # read again; the old ones come back after


def _numpy_job(seed: int, shared: list[dict[str, Any]] | None) -> tuple[Any, list[Any]]:
    """A shadow nest (large, small, strided and float64 leaves) and two params nests, taken in
    turn (float16 params for one leaf); ``shared`` params are used as they are."""
    rng = np.random.default_rng(seed)
    shadow = {
        "big": rng.standard_normal(BIG, np.float32),
        "small": [rng.standard_normal(n).astype(np.float32) for n in (1, 7, 300, 4096, 9)],
        "half": rng.standard_normal((64, 65)).astype(np.float32),
        "strided": rng.standard_normal((80, 60)).astype(np.float32)[:, ::2],
        "wide": rng.standard_normal(777),
    }
    if shared is not None:
        return shadow, shared
    params = [  # two params nests, taken in turn
        {
            "big": rng.standard_normal(BIG, np.float32),
            "small": [rng.standard_normal(s.size).astype(np.float32) for s in shadow["small"]],
            "half": rng.standard_normal((64, 65)).astype(np.float16),
            "strided": rng.standard_normal((80, 30)).astype(np.float32),
            "wide": rng.standard_normal(777),
        }
        for _ in range(2)
    ]
    return shadow, params


def _leaves(tree: Any) -> Iterator[Any]:
    """A nest's arrays in a fixed order."""
    if isinstance(tree, dict):
        for key in sorted(tree):
            yield from _leaves(tree[key])
    elif isinstance(tree, list):
        for item in tree:
            yield from _leaves(item)
    else:
        yield tree


def _copy(tree: Any) -> Any:
    """A deep copy of a nest of numpy arrays or torch tensors (same layouts)."""
    if isinstance(tree, dict):
        return {key: _copy(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_copy(item) for item in tree]
    return tree.clone() if hasattr(tree, "clone") else tree.copy()


def _drive(shadow: Any, params: list[Any]) -> Any:
    """``ema_update`` once per decay, with the params nests in turn (the shadow rebound each
    time); the last shadow."""
    for step, decay in enumerate(DECAYS, start=1):
        shadow = ema.ema_update(shadow, params[step % len(params)], step, decay=decay)
    return shadow


def _bits(leaf: Any) -> bytes:
    """A leaf's bytes (a torch tensor through numpy: the same memory)."""
    return (leaf.numpy() if hasattr(leaf, "numpy") else np.ascontiguousarray(leaf)).tobytes()


def _concurrently(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run the jobs on as many threads, started together; their results (errors re-raised)."""
    barrier = threading.Barrier(len(jobs))

    def start(job: Callable[[], Any]) -> Any:
        barrier.wait(timeout=30)
        return job()

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(start, job) for job in jobs]
        return [f.result(timeout=60) for f in futures]


def _assert_same_bits(got: list[Any], want: list[Any]) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        pairs = list(zip(_leaves(a), _leaves(b), strict=True))
        assert [_bits(x) == _bits(y) for x, y in pairs] == [True] * len(pairs), f"job {i}"


@pytest.mark.usefixtures("host_kernels", "three_workers")
def test_numpy_updates_from_four_threads_equal_serial() -> None:
    """Four threads update their own nests at once (two of them over the same params objects,
    as two EMAs of one model): every leaf is bit-equal to the same updates run serially, the
    large leaf dealt over the engine's three workers in both runs."""
    assert numpy_backend.workers() == 3
    assert len(host.plan([np.zeros(BIG, np.float32)], [np.zeros(BIG)], workers=3).shares) > 1
    jobs = [_numpy_job(seed, None) for seed in range(3)]
    jobs.append(_numpy_job(3, jobs[0][1]))  # the params of job 0, shared
    want = [_drive(_copy(shadow), params) for shadow, params in jobs]
    work = [(_copy(shadow), params) for shadow, params in jobs]
    got = _concurrently([lambda s=s, p=p: _drive(s, p) for s, p in work])
    _assert_same_bits(got, want)
    for g, (s, _) in zip(got, work, strict=True):  # written in place, as serially
        assert all(a is b for a, b in zip(_leaves(g), _leaves(s), strict=True))


def _torch_job(seed: int) -> tuple[Any, list[Any]]:
    """CPU tensors: float32 shadows over bfloat16 params (the host engine, one of them large),
    over float16 params (small, batched) and over float32 params (torch's ``lerp_``)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)

    def randn(*shape: int) -> Any:
        return torch.from_numpy(rng.standard_normal(shape, np.float32))

    shadow = {
        "big": randn(BIG),
        "bf16": randn(300, 170),
        "fp16": [randn(n) for n in (5, 900, 4096)],
        "same": randn(20_000),
    }
    params = [
        {
            "big": randn(BIG).bfloat16(),
            "bf16": randn(300, 170).bfloat16(),
            "fp16": [randn(s.numel()).half() for s in shadow["fp16"]],
            "same": randn(20_000),
        }
        for _ in range(2)  # two params nests, taken in turn
    ]
    return shadow, params


@pytest.mark.usefixtures("host_kernels")
def test_torch_cpu_updates_from_three_threads_equal_serial() -> None:
    """Three threads update their own nests of CPU tensors at once (host engine, batched half
    leaves, torch's own lerp), the large leaves dealt over three engine threads (torch's
    thread count): every tensor is bit-equal to the same updates run serially."""
    torch = pytest.importorskip("torch")
    jobs = [_torch_job(seed) for seed in range(3)]
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        want = [_drive(_copy(shadow), params) for shadow, params in jobs]
        work = [(_copy(shadow), params) for shadow, params in jobs]
        got = _concurrently([lambda s=s, p=p: _drive(s, p) for s, p in work])
    finally:
        torch.set_num_threads(threads)
    _assert_same_bits(got, want)


def _model(seed: int, dtype: Any) -> Any:
    """A model of a few MB, with a BatchNorm (float statistics, an integer counter)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(256, 512), torch.nn.BatchNorm1d(512), torch.nn.Linear(512, 900)]
    return torch.nn.Sequential(*layers).to(dtype)


def _train(model: Any, averager: Any, seed: int, steps: int = 5) -> list[dict[str, Any]]:
    """Change the weights and buffers, ``update()``, ``steps`` times; the state dicts after."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked.add_(1)
        averager.update()
    emas = [averager] if isinstance(averager, ema.torch.EMA) else list(averager)
    return [e.state_dict() for e in emas]


def _same_state(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    torch = pytest.importorskip("torch")
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], dict):
                _same_state([x[key]], [y[key]])
            elif isinstance(x[key], torch.Tensor):
                assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


@pytest.mark.usefixtures("host_kernels")
def test_ema_and_bank_objects_from_threads_equal_serial() -> None:
    """An ``EMA`` of a bfloat16 model (float32 shadows: the host engine), an ``EMA`` of a
    float32 model and an ``EMABank`` of a float16 model, each updated by its own thread at
    once: every state dict equals the one of the same updates run serially."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA, EMABank

    def setups() -> list[tuple[Any, Any]]:
        m1, m2, m3 = _model(1, torch.bfloat16), _model(2, torch.float32), _model(3, torch.half)
        return [
            (m1, EMA(m1, decay=0.7)),
            (m2, EMA(m2, decay=0.3)),
            (m3, EMABank(m3, sigma_rels=(0.05, 0.1))),
        ]

    want = [_train(m, a, seed) for seed, (m, a) in enumerate(setups())]
    jobs = setups()
    got = _concurrently([lambda m=m, a=a, s=s: _train(m, a, s) for s, (m, a) in enumerate(jobs)])
    for g, w in zip(got, want, strict=True):
        _same_state(g, w)


@pytest.mark.usefixtures("host_kernels")
def test_reads_and_swaps_of_one_ema_while_another_updates() -> None:
    """A checkpoint/eval thread reads ``average``, ``state_dict()`` and runs ``swap()`` on one
    EMA while a training thread updates another: the reader always sees its own EMA's averages
    (and its model's live weights after each swap), and the trainer's EMA ends as serially."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    read_model = _model(9, torch.bfloat16)
    read_ema = EMA(read_model, decay=0.5)
    _train(read_model, read_ema, 9, steps=1)
    averages = {k: v.clone() for k, v in read_ema.average.items()}
    live = {k: v.clone() for k, v in read_model.state_dict().items()}
    serial_model = _model(1, torch.bfloat16)
    want = _train(serial_model, EMA(serial_model, decay=0.7), 1)
    train_model = _model(1, torch.bfloat16)
    train_ema = EMA(train_model, decay=0.7)
    done = threading.Event()

    def read() -> int:
        seen = 0
        while not done.is_set() or seen < 3:
            got = read_ema.average
            assert all(torch.equal(got[k], averages[k]) for k in averages)
            state = read_ema.state_dict()
            assert int(state["step"]) == 1
            assert all(torch.equal(state["shadow"][k], averages[k]) for k in averages)
            with read_ema.swap():
                inside = read_model.state_dict()  # the averages in the model's dtypes
                assert all(torch.equal(inside[k], averages[k].to(inside[k].dtype)) for k in live)
            after = read_model.state_dict()
            assert all(torch.equal(after[k], live[k]) for k in live)
            seen += 1
        return seen

    def train() -> list[dict[str, Any]]:
        try:
            return _train(train_model, train_ema, 1)
        finally:
            done.set()

    seen, got = _concurrently([read, train])
    assert seen >= 3
    _same_state(got, want)


@pytest.mark.usefixtures("host_kernels")
def test_cached_updates_beside_cache_churn_and_collections() -> None:
    """Two threads repeat cached updates of their own nests (numpy with float16 params, CPU
    torch with bfloat16 params) while a third keeps making, caching and dropping nests (weak
    reference callbacks, evictions from the ``SIZE`` entries) and the main thread collects
    garbage: each nest ends bit-equal to the same updates run serially."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    sizes = [int(n) for n in rng.integers(1, 5000, 8)]
    nests: list[tuple[Any, list[Any]]] = []
    shadow = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    nests.append((shadow, [[np.full(n, k, np.float16) for n in sizes] for k in range(3)]))
    tensors = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)) for n in sizes]
    params = [[torch.full((n,), k, dtype=torch.bfloat16) for n in sizes] for k in range(3)]
    nests.append((tensors, params))
    steps = 80

    def repeat(shadow: Any, params: list[Any]) -> Any:
        for t in range(1, steps + 1):
            ema.ema_update(shadow, params[t % 3], t, decay=0.9 if t % 4 else 0.2)
        return shadow

    want = [repeat(_copy(s), p) for s, p in nests]
    stop = threading.Event()

    def churn() -> int:
        made = 0
        while not stop.is_set() or made < 5:
            a = [np.zeros(10, np.float32), torch.zeros(10)]
            for _ in range(2):  # twice in a row: kept in the cache, dropped with the arrays
                ema.ema_update(a[0], np.ones(10, np.float32), 1, decay=0.5)
                ema.ema_update(a[1], torch.ones(10), 1, decay=0.5)
            del a
            made += 1
        return made

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads take turns inside each other's calls
    try:
        with ThreadPoolExecutor(3) as pool:
            background = pool.submit(churn)
            futures = [pool.submit(repeat, _copy(s), p) for s, p in nests]
            while not all(f.done() for f in futures):
                gc.collect(0)
            got = [f.result() for f in futures]
            stop.set()
            assert background.result(timeout=30) >= 5
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        _stateless.clear()
    _assert_same_bits(got, want)


class _WalkedDict(dict):  # type: ignore[type-arg]
    """The pool registry, with a pause in each walk over its keys in which ``during`` (another
    thread's call) runs: a thread switch at that point, made certain."""

    def __init__(self, during: Callable[[], None]) -> None:
        super().__init__()
        self.during: Callable[[], None] | None = during

    def __iter__(self) -> Iterator[Any]:
        keys = super().__iter__()
        during, self.during = self.during, None
        if during is not None:
            during()
        yield from keys


def _in_other_thread(
    call: Callable[[], Any], started: list[threading.Thread]
) -> Callable[[], None]:
    """``call`` on a new thread (added to ``started``), waited for at most 0.25 s (a
    registry with a lock would make it wait: the caller then goes on, and joins it after)."""

    def run() -> None:
        thread = threading.Thread(target=call, daemon=True)
        started.append(thread)
        thread.start()
        thread.join(0.25)

    return run


def test_a_pool_made_by_another_thread_during_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads ask for engine pools of different sizes for the first time, one of them
    while the other walks the registry: both get their pool and no call raises."""
    made: list[Any] = []
    started: list[threading.Thread] = []
    registry = _WalkedDict(_in_other_thread(lambda: made.append(_threads._pool(3)), started))
    monkeypatch.setattr(_threads, "_POOL", registry)
    try:
        mine = _threads._pool(4)
        started[0].join(10)
        assert made and made[0] is _threads._pool(3) and mine is _threads._pool(4)
    finally:
        for pool in list(registry.values()):
            pool.shutdown()


def test_one_pool_per_size_when_two_threads_first_ask_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two threads ask for the pool of one size for the first time, the second while the
    first is making it: both get the same pool, and only one is made."""
    made: list[Any] = []
    got: list[Any] = []
    started: list[threading.Thread] = []
    other = _in_other_thread(lambda: got.append(_threads._pool(3)), started)

    class Counted(ThreadPoolExecutor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if not made:
                made.append(None)
                other()  # the other thread's first call, while this one makes the pool
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(_threads, "_POOL", {})
    monkeypatch.setattr(_threads, "ThreadPoolExecutor", Counted)
    try:
        mine = _threads._pool(3)
        started[0].join(10)
        assert got and got[0] is mine
        assert len(made) == 2  # the marker and one pool
    finally:
        for pool in made[1:]:
            pool.shutdown()


class _Stop(Exception):
    """What a caller's share raises in the test below (Ctrl-C in practice)."""


def test_no_share_still_runs_when_the_callers_share_raises() -> None:
    """The calling thread's share raises while a pool thread's share is running: by the time
    the exception leaves ``run_shares``, no pool thread writes any more (seen through the
    public call: after a Ctrl-C in a 40M-element ``ema_update`` on the main thread, the
    shadow kept changing for a while after the ``KeyboardInterrupt``)."""
    running = threading.Event()
    finished: list[str] = []

    def do(item: Any) -> None:
        if item == "pool":
            running.set()
            threading.Event().wait(0.3)  # a long blend
            finished.append(item)
            return
        running.wait(10)
        raise _Stop

    with pytest.raises(_Stop):
        _threads.run_shares([["caller"], ["pool"]], do)
    assert finished == ["pool"]

"""Tests that kill mutants of the 2026-12-03 changes (the stateless cache's lock, the engine's
pool registry after a fork, the copies of the torch objects) which the day's own tests let
live. Each one was checked to fail with its mutant applied and to pass on the code as it is."""

from __future__ import annotations

import copy
import gc
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
from ema_core import _stateless

ROOT = Path(__file__).resolve().parents[1]


def test_an_entry_whose_leaf_dies_under_the_lock_is_freed_then_dropped_by_the_next_call() -> None:
    """A leaf dies while a call holds the cache's lock: its entry is marked dead and its plan
    freed at once (the dict is not touched under the walk), and the next call drops it."""
    shadow, params = np.zeros(3, np.float32), np.ones(3, np.float32)
    _stateless.clear()
    try:
        for t in (1, 2):  # the second call in a row keeps the entry
            ema.ema_update(shadow, params, t, decay=0.5)
        ((serial, entry),) = _stateless._ENTRIES.items()
        assert entry.memo and not entry.dead
        gc.collect()  # the calls' own garbage (flatten's closures) no longer holds the leaves
        with _stateless._LOCK:  # as a walk on this thread or another one holds it
            del shadow  # the weak reference's callback runs now
            assert serial in _stateless._ENTRIES  # left to the lock's holder
            assert entry.dead and entry.memo == {}
        ema.ema_update(np.zeros(2, np.float32), np.ones(2, np.float32), 1, decay=0.5)
        assert serial not in _stateless._ENTRIES
    finally:
        _stateless.clear()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX")
def test_a_forked_child_makes_a_pool_while_the_parent_held_the_registry_lock() -> None:
    """A fork while the pool registry's lock is held in the parent (another thread was making
    a pool; here the forking thread holds it, which the child inherits alike): the child still
    gets a working pool, on a lock of its own, instead of waiting forever."""
    code = textwrap.dedent(
        """
        import os, time
        from ema_core.backends.host import _threads
        with _threads._POOL_LOCK[0]:  # held in the parent at the fork
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = _threads._pool(2).submit(int, "0").result()
                finally:
                    os._exit(code)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print("exit", os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("hung")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.stdout.strip() == "exit 0", (out.stdout, out.stderr)


def test_a_deep_copy_of_named_tensors_and_their_ema_tracks_the_copied_tensors() -> None:
    """``copy.deepcopy((tensors, ema))`` of an EMA made from named tensors (no module): the
    copy averages the copied tensors, the original's tensors are left to the original."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    tensors = {"w": torch.zeros(3), "b": torch.zeros(2)}
    averager = EMA(tensors, decay=0.5)
    tensors2, averager2 = copy.deepcopy((tensors, averager))
    tensors2["w"].fill_(4.0)
    averager2.update()
    assert torch.equal(averager2.average["w"], torch.full((3,), 2.0))
    with averager2.swap():
        assert torch.equal(tensors2["w"], torch.full((3,), 2.0))
        assert torch.equal(tensors["w"], torch.zeros(3))


def test_a_deep_copy_of_an_ema_with_include_averages_the_same_names() -> None:
    """An EMA made with ``include`` copies (deep or shallow) into one of the same names: the
    copy neither adds the tensors the filter left out nor drops any."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    averager = EMA(model, decay=0.5, include=lambda name: name.startswith("0."))
    averager.update()
    for twin in (copy.deepcopy(averager), copy.copy(averager)):
        assert twin.names == averager.names == ("0.weight", "0.bias")
        assert twin.average.keys() == averager.average.keys()


def test_an_ema_pickled_inside_swap_is_usable_after_unpickling() -> None:
    """``pickle`` of ``(model, ema)`` taken inside ``swap()`` (``torch.save`` of a checkpoint
    during evaluation): the loaded EMA is not inside a swap, so it updates and swaps."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Linear(3, 2)
    averager = EMA(model, decay=0.5)
    averager.update()
    with averager.swap():
        blob = pickle.dumps((model, averager))
    model2, averager2 = pickle.loads(blob)
    averager2.update()
    with averager2.swap():
        assert torch.equal(model2.weight, averager2.average["weight"])


def test_a_gated_count_on_a_device_without_int64_stays_in_its_int32() -> None:
    """The gated schedules widen a device count to int64 only where its device has int64:
    array-api-strict's ``Device("no_x64")`` keeps the int32 count (``astype`` to int64 there
    raises). Called directly: through the public calls array-api-strict counts are read on the
    host and take the exact Python-int path before this helper."""
    aas = pytest.importorskip("array_api_strict")
    from ema_core.schedules import _gated

    for device, want in ((aas.Device("no_x64"), aas.int32), (aas.Device("CPU_DEVICE"), aas.int64)):
        count = aas.asarray(3, dtype=aas.int32, device=device)
        widened = _gated._widest_int(aas, count)
        assert widened.dtype == want and widened.device == device and int(widened) == 3

"""``benchmarks.harness.queued_ms``, the GPU rows' queued measurement: updates queued back to back
with one sync after them (the first H200 run timed each update with its own sync, so the host's
per-tensor work added to the device's). What it calls is checked here; its times are the GPU
benchmark's."""

from __future__ import annotations

import time

from benchmarks import harness


def test_queued_updates_take_new_steps_and_sync_once_per_round():
    calls: list[tuple[str, object]] = []

    def step(t: int) -> int:
        calls.append(("step", t))
        return t

    def sync(result: object) -> None:
        calls.append(("sync", result))

    ms = harness.queued_ms(step, sync, 100)
    assert ms >= 0.0
    steps = [t for kind, t in calls if kind == "step"]
    assert steps == sorted(set(steps))  # every update a new, later step
    assert len(steps) == 3 * (harness.QUEUED + 1)
    syncs = [i for i, (kind, _) in enumerate(calls) if kind == "sync"]
    assert len(syncs) == 6  # one after the round's first update, one after its queue
    for first, last in zip(syncs[::2], syncs[1::2], strict=True):
        assert last - first == harness.QUEUED + 1  # nothing synced inside the queue
        assert calls[last] == ("sync", calls[last - 1][1])  # the queue's last result


class _Plain:
    """A backend over plain Python calls: a ceiling, a fast contender and a slow one."""

    NAME = "plain"

    @staticmethod
    def cases(workload: object, dtype: str, device: str) -> dict[str, object]:
        def slow(t: int) -> int:
            time.sleep(0.004)
            return t

        return {"ceiling": lambda t: t, "fast": lambda t: t, "slow": slow}

    @staticmethod
    def sync(result: object) -> None:
        pass


def test_a_contender_slower_than_the_cap_is_not_queued(monkeypatch):
    from benchmarks.workloads import Workload

    monkeypatch.setattr(harness, "QUEUED_MAX_MS", 2.0)  # between the two contenders
    rows = harness.measure(_Plain, Workload("tiny", ((3,),)), "fp32", "cuda", 3)
    got = {r.contender: (r.queued_ms, r.queued_of_ceiling) for r in rows}
    assert got["slow"] == (None, None)
    assert got["fast"][0] is not None and got["ceiling"][0] is not None
    rows = harness.measure(_Plain, Workload("tiny", ((3,),)), "fp32", "cpu", 3)
    assert all(r.queued_ms is None for r in rows)  # the CPU never queues

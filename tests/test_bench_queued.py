"""``benchmarks.harness.queued_ms``, the GPU rows' queued measurement: updates queued back to back
with one sync after them (the first H200 run timed each update with its own sync, so the host's
per-tensor work added to the device's). What it calls is checked here; its times are the GPU
benchmark's."""

from __future__ import annotations

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

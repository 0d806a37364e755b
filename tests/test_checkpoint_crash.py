"""A save killed at any moment leaves the old file or the new one, never a torn one.

A child process saves a 24 MB EMA state to one path in a loop, each save holding a new step
whose value fills every shadow; the parent kills it (SIGKILL) at random moments, 24 times, and
after each kill loads the path: the step must be the last one the child reported saved or the
one after it (renamed just before the kill), and every shadow must hold that step.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
import ema_core.checkpoint._save as save_module
from ema_core.checkpoint import load, save

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")

KILLS = 24
SHAPES = ((1000, 1000), (2000, 1000), (3, 1000, 1000), (17,))  # 6_000_017 float32: 24 MB

CHILD = """
import sys, numpy as np, ema_core as ema
from ema_core.checkpoint import save
path, step = sys.argv[1], int(sys.argv[2])
shapes = {shapes!r}
while True:
    shadow = {{f"s{{i}}": np.full(s, step, np.float32) for i, s in enumerate(shapes)}}
    save(path, ema.EMAState(np.asarray(step), shadow, np.asarray(1.0)))
    print(step, flush=True)
    step += 1
"""


def like():
    shadow = {f"s{i}": np.zeros(s, np.float32) for i, s in enumerate(SHAPES)}
    return ema.EMAState(np.asarray(0), shadow, np.asarray(0.0))


def start(path: Path, step: int) -> subprocess.Popen[str]:
    code = CHILD.format(shapes=SHAPES)
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(step)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_killed_saves_leave_the_old_or_the_new_file(tmp_path):
    path = tmp_path / "ema.safetensors"
    rng = random.Random(0)
    step, outcomes = 1, set()
    begin = time.monotonic()
    for _ in range(KILLS):
        with start(path, step) as child:
            first = child.stdout.readline()  # one save done: the file exists from now on
            assert first.strip() == str(step), first
            time.sleep(rng.uniform(0.0, 0.25))
            child.send_signal(signal.SIGKILL)
            rest = child.stdout.read()
        done = int([first, *rest.split()][-1])  # the last save the child saw finish
        state = load(path, like())
        got = int(state.step)
        assert got in (done, done + 1), (got, done)
        outcomes.add(got - done)
        for name, shadow in state.shadow.items():
            assert np.all(shadow == got), name  # one save's content, whole
        step = got + 1
    assert time.monotonic() - begin < 60
    print(
        f"{KILLS} kills: {sorted(outcomes)}; {len(os.listdir(tmp_path)) - 1} temporary files left"
    )


def test_a_clean_save_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "ema.safetensors"
    save(path, like())
    save(path, like())
    assert os.listdir(tmp_path) == ["ema.safetensors"]


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ema.safetensors"
    old = ema.EMAState(np.asarray(7), {"a": np.ones(3), "b": np.ones(2)}, np.asarray(1.0))
    save(path, old)
    before = path.read_bytes()
    real, calls = save_module.host_bytes, []

    def fail_second(leaf, framework):
        calls.append(leaf)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(leaf, framework)

    monkeypatch.setattr(save_module, "host_bytes", fail_second)
    new = ema.EMAState(np.asarray(8), {"a": np.zeros(3), "b": np.zeros(2)}, np.asarray(1.0))
    with pytest.raises(OSError, match="disk full"):
        save(path, new)
    assert len(calls) == 2  # it failed mid-write, after the header and the first tensor
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ema.safetensors"]
    assert int(load(path, new).step) == 7

"""A save killed at any moment leaves the old file or the new one, never a torn one.

A child process saves a 24 MB EMA state to one path in a loop, each save holding a new step
whose value fills every shadow; the parent kills it (SIGKILL) at random moments, 24 times, and
after each kill loads the path: the step must be the last one the child reported saved or the
one after it (renamed just before the kill), and every shadow must hold that step. The children
are forked by one server process that imported numpy and ema-core once (a fresh interpreter
per child spent most of each round importing); each reports its saves through its own FIFO.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
import ema_core.checkpoint._save as save_module
from ema_core.checkpoint import load, save

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")

KILLS = 24
SHAPES = ((1000, 1000), (2000, 1000), (3, 1000, 1000), (17,))  # 6_000_017 float32: 24 MB

# One line "<first step> <fifo>" per child on stdin; the server answers the child's pid.
SERVER = """
import os, signal, sys, numpy as np, ema_core as ema
from ema_core.checkpoint import save
path, shapes = sys.argv[1], {shapes!r}
for line in sys.stdin:
    first, fifo = line.split()
    try:  # reap the children the parent is done with (until then a dead one stays a zombie,
        while os.waitpid(-1, os.WNOHANG)[0]:  # so its pid is never another process's)
            pass
    except ChildProcessError:
        pass
    pid = os.fork()
    if pid == 0:
        try:
            with open(fifo, "w") as progress:
                step = int(first)
                while True:
                    shadow = {{
                        f"s{{i}}": np.full(s, step, np.float32) for i, s in enumerate(shapes)
                    }}
                    save(path, ema.EMAState(np.asarray(step), shadow, np.asarray(1.0)))
                    print(step, file=progress, flush=True)
                    step += 1
        finally:
            os._exit(1)  # never back into the server's loop
    print(pid, flush=True)
"""


def like():
    shadow = {f"s{i}": np.zeros(s, np.float32) for i, s in enumerate(SHAPES)}
    return ema.EMAState(np.asarray(0), shadow, np.asarray(0.0))


@contextmanager
def server(path: Path) -> Iterator[subprocess.Popen[str]]:
    """The process that forks the saving children; it exits when its stdin closes."""
    root = Path(__file__).resolve().parents[1]
    code = SERVER.format(shapes=SHAPES)
    with subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as forks:
        try:
            yield forks
        finally:
            forks.stdin.close()  # type: ignore[union-attr]
            forks.wait(timeout=30)


def kill_one_save(forks: subprocess.Popen[str], step: int, fifo: Path, pause: float) -> int:
    """A child saving from ``step`` on, SIGKILLed ``pause`` s after its first save: the
    last save it saw finish."""
    os.mkfifo(fifo)
    forks.stdin.write(f"{step} {fifo}\n")  # type: ignore[union-attr]
    forks.stdin.flush()  # type: ignore[union-attr]
    pid = int(forks.stdout.readline())  # type: ignore[union-attr]
    try:
        with open(fifo) as progress:
            first = progress.readline()  # one save done: the file exists from now on
            assert first.strip() == str(step), first
            time.sleep(pause)
            os.kill(pid, signal.SIGKILL)
            rest = progress.read()  # to the end: the child is dead
    finally:
        os.kill(pid, signal.SIGKILL)  # if an assert came first; else a zombie's pid: no harm
    return int([first, *rest.split()][-1])


def test_killed_saves_leave_the_old_or_the_new_file(tmp_path):
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "ema.safetensors"
    rng = random.Random(0)
    step, outcomes = 1, set()
    begin = time.monotonic()
    with server(path) as forks:
        for kill in range(KILLS):
            done = kill_one_save(forks, step, tmp_path / f"progress{kill}", rng.uniform(0.0, 0.25))
            state = load(path, like())
            got = int(state.step)
            assert got in (done, done + 1), (got, done)
            outcomes.add(got - done)
            for name, shadow in state.shadow.items():
                assert np.all(shadow == got), name  # one save's content, whole
            step = got + 1
    assert time.monotonic() - begin < 60
    left = len(os.listdir(path.parent)) - 1
    print(f"{KILLS} kills: {sorted(outcomes)}; {left} temporary files left")


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

"""``python -m benchmarks`` cut by a time limit (``benchmarks/gpu.sh`` sends SIGINT): the rows
measured before the interrupt are written, and a run with no rows still writes its table and
says why. The H200 run of 2026-12-04 lost a finished case to an interrupt that landed while the
run described the machine after its cases, and a cut run of no rows crashed drawing its chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import benchmarks.__main__ as bench_main
from benchmarks import chart, harness


def _row(contender: str) -> harness.Row:
    return harness.Row("resnet50", "fp32", "numpy", contender, 1.0, 0.1, 10.0, 1.0, 1.0)


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, measured: list[Any]) -> int:
    """main() over two numpy cases whose measurements are ``measured`` (rows, or an exception
    to raise); the machine's description refuses to be read once a case has run."""
    calls = iter(measured)
    ran: list[str] = []

    def measure(*args: Any, **kwargs: Any) -> list[harness.Row]:
        ran.append("case")
        got = next(calls)
        if isinstance(got, BaseException):
            raise got
        return list(got)

    real_describe = bench_main.describe

    def describe(device: str) -> dict[str, Any]:
        if ran:  # what cost the jax-20k rows: the interrupt arrived in here, after the cases
            raise KeyboardInterrupt
        return real_describe(device)

    monkeypatch.setattr(bench_main.harness, "measure", measure)
    monkeypatch.setattr(bench_main, "describe", describe)
    monkeypatch.setattr(bench_main.tree, "main", lambda: "")
    argv = ["--backend", "numpy", "--workload", "resnet50", "--dtype", "fp32", "--dtype", "bf16"]
    try:
        return bench_main.main([*argv, "--no-peers", "--out", str(tmp_path), "--tag", "cut"])
    except KeyboardInterrupt:  # not left to end the test session
        pytest.fail("the run read the machine's description after its cases")


def test_rows_measured_before_an_interrupt_are_written(tmp_path, monkeypatch):
    rc = _run(tmp_path, monkeypatch, [[_row("ceiling"), _row("ema_core")], KeyboardInterrupt()])
    assert rc == 130  # an interrupt exits 130 (SIGINT)
    (written,) = tmp_path.glob("cpu-*-cut.json")
    rows = json.loads(written.read_text())["rows"]
    assert [r["contender"] for r in rows] == ["ceiling", "ema_core"]
    md = written.with_suffix(".md").read_text()
    assert "numpy resnet50 bf16: cut by an interrupt" in md
    assert "| ema_core |" in md


def test_a_run_cut_before_any_row_writes_its_files_without_a_chart(tmp_path, monkeypatch):
    rc = _run(tmp_path, monkeypatch, [KeyboardInterrupt()])
    assert rc == 130
    (written,) = tmp_path.glob("cpu-*-cut.json")
    assert json.loads(written.read_text())["rows"] == []
    assert "numpy resnet50 fp32: cut by an interrupt" in written.with_suffix(".md").read_text()
    assert not written.with_suffix(".png").exists()


def test_chart_of_no_rows_is_not_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    assert chart.draw([], tmp_path / "none.png", "nothing") is False
    assert not (tmp_path / "none.png").exists()
    assert chart.draw([_row("ceiling"), _row("ema_core")], tmp_path / "two.png", "two") is True
    assert (tmp_path / "two.png").stat().st_size > 0


class _Backend:
    """A backend module's interface (``NAME``, ``cases``, ``sync``) over plain Python calls,
    one contender of which raises."""

    NAME = "plain"

    @staticmethod
    def cases(workload: Any, dtype: str, device: str) -> dict[str, Any]:
        def bad(t: int) -> None:
            raise RuntimeError("a new contender's bug")

        return {"ceiling": lambda t: t, "first": lambda t: t, "bad": bad, "last": lambda t: t}

    @staticmethod
    def sync(result: Any) -> None:
        pass


def test_a_failing_contender_costs_its_own_row_only():
    from benchmarks.workloads import Workload

    tiny = Workload("tiny", ((3,),))
    failed: list[str] = []
    rows = harness.measure(_Backend, tiny, "fp32", "cpu", 3, None, failed)
    assert [r.contender for r in rows] == ["ceiling", "first", "last"]
    assert failed == ["plain tiny fp32 bad: RuntimeError: a new contender's bug"]
    with pytest.raises(RuntimeError, match="bug"):  # no list given: raised as before
        harness.measure(_Backend, tiny, "fp32", "cpu", 3)


def test_the_cuda_only_torch_contenders_stay_off_the_cpu():
    pytest.importorskip("torch")
    from benchmarks.backends import torch as bench_torch
    from benchmarks.workloads import Workload

    for dtype in ("fp32", "bf16"):
        found = bench_torch.cases(Workload("tiny", ((3,), (2, 2))), dtype, "cpu")
        assert set(found) == {"ceiling", "ema_core", "EMA class", "ema_update dict"}


def test_routes_times_each_state_of_a_triton_group(monkeypatch, capsys):
    """``--routes``: per size, the four cases it documents, and a launch the ``kept`` case
    reuses (it must not prepare one: that would time ``prepared`` twice)."""
    pytest.importorskip("torch")
    from benchmarks import routes
    from ema_core.backends.torch import _launch

    monkeypatch.setattr(routes, "SIZES", (3, 5))
    made = []
    real = _launch.prepare
    monkeypatch.setattr(_launch, "prepare", lambda s, p: made.append(len(s)) or real(s, p))
    got = routes.rows(repeats=2)
    assert [(case, n) for case, n, _ in got] == [
        (case, n)
        for n in (3, 5)
        for case in ("prepared", "key", "kept", "watch", "watch fp32", "watch fp32 kernel")
    ]
    assert all(sec >= 0 for _, _, sec in got)
    assert made == [3] * 3 + [5] * 3  # the prepared case's warm-up and repeats only
    assert bench_main.main(["--routes"]) == 0
    out = capsys.readouterr().out
    assert "python -m benchmarks --routes" in out and "us/leaf" in out


def test_jax_host_prints_the_three_updates_and_a_profile():
    pytest.importorskip("jax")
    from benchmarks import jax_host

    out = jax_host.main(["--workload", "resnet50", "--calls", "2"])
    lines = out.splitlines()
    assert lines[0].startswith("resnet50 on ") and lines[0].endswith(": 161 arrays")
    labels = ("make_update, synced", "packed, synced", "tree_map, synced", "make_update call")
    for label in (*labels, "packed call", "tree_map call"):
        line = next(x for x in lines if x.startswith(label))
        assert float(line[len(label) :].split()[0]) > 0, line
    assert "cProfile of 2 make_update calls" in out and "_compiled.py" in out

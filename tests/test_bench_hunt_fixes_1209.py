"""The benchmark tools as a bug hunt (2026-12-05) found them: a planned case a backend does not
time (array-api-strict in bf16, JAX with no device of the kind asked for) was listed nowhere
and a run asking only for it exited 0; the ``.json`` held bare ``NaN`` (not JSON); ``--repeats``
was cut short by the time budget with no record of it; a ``--tag`` too long for a file name
failed after the whole run; "1 min 60 s"; and two scripts ended bad arguments in tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import benchmarks.__main__ as bench_main
from benchmarks import harness, report
from benchmarks.backends import numpy as numpy_backend
from benchmarks.workloads import Workload

ROOT = Path(__file__).resolve().parents[1]


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_backend_asked_only_for_cases_it_does_not_time_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("array_api_strict")
    argv = ["--backend", "array_api_strict", "--workload", "resnet50", "--dtype", "bf16"]
    with pytest.raises(SystemExit) as exit_info:
        bench_main.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--backend array_api_strict times none of the cases asked for" in err
    assert "run in fp32 only" in err
    assert not (tmp_path / "out").exists()


def test_a_case_a_backend_does_not_time_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("array_api_strict")
    row = harness.Row("resnet50", "bf16", "numpy", "ceiling", 1.0, 0.1, 10.0, 1.0, 1.0)
    monkeypatch.setattr(harness, "measure", lambda *a, **k: [row])
    for name in ("tree", "stateless", "bank"):
        monkeypatch.setattr(getattr(bench_main, name), "main", lambda: "")
    argv = ["--workload", "resnet50", "--dtype", "bf16", "--no-peers", "--out", str(tmp_path)]
    assert bench_main.main(argv) == 0  # the default plan of backends: a skip is no failure
    (md,) = tmp_path.glob("*.md")
    assert (
        "- array_api_strict: skipped, array_api_strict is a portability check, run in fp32 only "
        "(resnet50 bf16)" in md.read_text()
    )


def test_jax_without_the_device_asked_for_says_so() -> None:
    pytest.importorskip("jax")
    from benchmarks.backends import jax as jax_backend

    load = Workload("tiny", ((4,),))
    assert jax_backend.no_case(load, "fp32", "cpu") is None
    assert jax_backend.no_case(load, "fp32", "cuda") == (
        "jax has no cuda device here (a CPU-only jaxlib?)"
    )


def test_results_json_is_strict_json_and_counts_timed_calls(tmp_path: Path) -> None:
    tiny = Workload("tiny", ((8, 8), (8,)))
    rows = harness.measure(numpy_backend, tiny, "fp32", "cpu", 5)
    assert [r.contender for r in rows][:2] == ["ceiling", "ema_core"]
    assert all(r.vs_class != r.vs_class for r in rows)  # NaN: no EMA class timed beside
    run = report.Run({"machine": "m", "cpus": 2, "device": "cpu", "date": "d", "command": "c"})
    run.rows = rows
    written = report.write(run, tmp_path, "tiny", 1.0)
    data = _strict_json(written[0].read_text())
    assert [r["vs_class"] for r in data["rows"]] == [None] * len(rows)
    assert data["rows"][1]["timed"] == 5
    assert data["rows"][0]["timed"] >= 5  # the ceiling: its own calls and those beside each


def test_time_case_records_a_budget_cut() -> None:
    times, _ = harness.time_case(
        lambda t: time.sleep(0.02), lambda r: None, repeats=60, budget_s=0.1
    )
    assert 3 <= len(times) < 60
    row = harness._row(Workload("tiny", ((4,),)), "fp32", "numpy", "x", times, 48, None, None)
    assert row.timed == len(times)


def test_a_tag_too_long_for_a_file_name_exits_2_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_main.main(["--quick", "--tag", "t" * 250, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--tag is 250 bytes: at most 200 fit in a file name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("took", "said"), [(119.7, "2 min 0 s"), (59.6, "1 min 0 s"), (61.2, "1 min 1 s")]
)
def test_the_run_time_rounds_once(took: float, said: str) -> None:
    run = report.Run({"machine": "m", "cpus": 2, "device": "cpu", "date": "d", "command": "c"})
    assert f"The whole run took {said}." in report.summary(run, took)


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("parity_bounds.py", ["--seed", "-1"], "--seed must be at least 0"),
        ("bank_jax.py", ["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    ],
)
def test_scripts_refuse_bad_numbers_by_name(script: str, args: list[str], message: str) -> None:
    got = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert got.returncode == 2, got.stderr[-800:]
    assert message in got.stderr
    assert "Traceback" not in got.stderr

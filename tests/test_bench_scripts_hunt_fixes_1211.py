"""Command-line fixes of the hunt of 2026-12-05 (second part): ``python -m benchmarks --tag``
with a byte that is not UTF-8 (a raw ``UnicodeEncodeError`` after the cases had run, exit 1),
and ``--help`` of two scripts that ignored it (one started a 25M-element timing run; the lock
script would have written a file named ``--help``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks.__main__ as bench_main

ROOT = Path(__file__).resolve().parents[1]


def test_a_tag_that_is_not_utf8_exits_2_before_any_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = os.fsdecode(b"r\xe9sum\xe9")  # what Python makes of a Latin-1 argument
    with pytest.raises(SystemExit) as exit_info:
        bench_main.main(["--quick", "--tag", tag, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--tag b'r\\xe9sum\\xe9' is not UTF-8 text" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["lock.py", "threads_vs_prange.py"])
def test_scripts_print_their_usage_for_help_and_run_nothing(script: str, tmp_path: Path) -> None:
    if script == "threads_vs_prange.py":
        pytest.importorskip("numba")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script}")
    assert not list(tmp_path.iterdir()) and not (ROOT / "--help").exists()

"""What a newcomer runs, as a hunt of 2026-12-05 found it: the benchmark CLI's arguments checked
before any case runs (``--repeats``, ``--out``, ``--tag``, ``--device``), a ``--tag`` with a dot
kept whole in the file names, ``benchmarks.compare``'s revisions and rounds checked before any
worktree is made, the demo's ``--out`` checked before training, and the dev scripts' arguments."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import benchmarks.__main__ as bench_main
from benchmarks import compare, harness

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--repeats", "0"], "--repeats: must be at least 3, got 0"),
        (["--repeats", "2"], "--repeats: must be at least 3, got 2"),
        (["--tag", "a/b"], "--tag 'a/b' cannot be part of a file name"),
        (["--out", "FILE"], "is (or lies under) a file, not a directory"),
        (["--out", "FILE/below"], "is (or lies under) a file, not a directory"),
    ],
)
def test_bad_arguments_exit_2_before_any_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    """They were found after the whole run (``FileExistsError``, ``StatisticsError``), every
    measurement lost to a traceback."""
    (tmp_path / "FILE").write_text("in the way")
    argv = [a.replace("FILE", str(tmp_path / "FILE")) for a in extra]
    with pytest.raises(SystemExit) as exit_info:
        bench_main.parse(["--backend", "numpy", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or __import__("torch").cuda.is_available(),
    reason="needs torch without a CUDA device (this checks the CPU machine's refusal)",
)
def test_device_cuda_without_cuda_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_main.parse(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err


def test_a_tag_with_a_dot_names_the_files_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stem.with_suffix(".json")`` cut ``run1.5`` to ``run1``: the files it named did not
    exist, and ``--tag run1.6`` overwrote them."""
    row = harness.Row("resnet50", "fp32", "numpy", "ceiling", 1.0, 0.1, 10.0, 1.0, 1.0)

    def measure(*args: Any, **kwargs: Any) -> list[harness.Row]:
        return [row]

    monkeypatch.setattr(bench_main.harness, "measure", measure)
    monkeypatch.setattr(bench_main.tree, "main", lambda: "")
    argv = ["--backend", "numpy", "--workload", "resnet50", "--dtype", "fp32", "--no-peers"]
    for tag in ("run1.5", "run1.6"):
        assert bench_main.main([*argv, "--out", str(tmp_path), "--tag", tag]) == 0
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".json", ".md"))
    assert [n.split("-", 4)[-1] for n in names] == [
        "run1.5.json",
        "run1.5.md",
        "run1.6.json",
        "run1.6.md",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["HEAD", "--rounds", "0"], "--rounds: must be at least 1, got 0"),
        (["HEAD", "no-such-revision-xyz"], "'no-such-revision-xyz' is not a revision"),
        (["HEAD", "HEAD"], "give each revision once"),
    ],
)
def test_compare_checks_its_arguments_before_any_worktree(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A bad revision left a registered worktree behind and a raw ``CalledProcessError``;
    ``--rounds 0`` did nothing and exited 0."""
    before = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    with pytest.raises(SystemExit) as exit_info:
        compare.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    after = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert after == before


@pytest.mark.parametrize("out", ["nodir/x.png", "x.txt", "."])
def test_the_demo_checks_out_before_training(tmp_path: Path, out: str) -> None:
    """A bad ``--out`` failed after 20 s of training with exit 1, which reads as a failed
    agreement; it is exit 2 now, at once, with nothing trained."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--out", str(tmp_path / out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "--out" in done.stderr and "step" not in done.stdout


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("parity_bounds.py", ["--peers", "nosuch"], "--peers: unknown ['nosuch']"),
        ("parity_bounds.py", ["--settings", "0"], "--settings must be at least 1"),
        ("first_decays.py", ["0"], "calls must be at least 1"),
        ("first_decays.py", ["--help"], "calls shown per row"),
    ],
)
def test_the_dev_scripts_check_their_arguments(script: str, argv: list[str], message: str) -> None:
    """``--peers nosuch`` printed an empty table and exited 0; ``first_decays.py --help``
    raised ``ValueError``."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert message in done.stderr + done.stdout
    assert done.returncode == (0 if "--help" in argv else 2)

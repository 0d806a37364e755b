"""The benchmark tools' command lines, as a bug hunt (2026-12-07) found them: a second run of
the same day overwrote the first's files; Ctrl-C in the tables that end ``make bench`` lost
every row; the other CLIs ended bad arguments in tracebacks after their setup; a backend asked
for by name but not installed gave an empty table and exit 0; conflicting flags were dropped
silently; and ``gpu.sh --big`` overran the device tool's 600 s while ignoring any other
argument. The cases are measured by stand-ins here (no timing runs)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import benchmarks.__main__ as bench_main
from benchmarks import chart, harness

ROOT = Path(__file__).resolve().parents[1]
ONE_CASE = ["--workload", "resnet50", "--dtype", "fp32", "--no-peers"]


def _row(contender: str, backend: str = "numpy") -> harness.Row:
    return harness.Row("resnet50", "fp32", backend, contender, 1.0, 0.1, 10.0, 1.0, 1.0)


def _stand_ins(monkeypatch: pytest.MonkeyPatch, rows: list[harness.Row], **tables: Any) -> None:
    """Each case measures ``rows``; the host tables print ``tables[name]`` (a string, or an
    exception to raise), "" where not given."""

    def table(name: str) -> Any:
        def run() -> str:
            got = tables.get(name, "")
            if isinstance(got, BaseException):
                raise got
            return str(got)

        return run

    monkeypatch.setattr(harness, "measure", lambda *a, **k: list(rows))
    for name in ("tree", "stateless", "bank"):
        monkeypatch.setattr(getattr(bench_main, name), "main", table(name))


def _main(argv: list[str]) -> int:
    try:
        return bench_main.main(argv)
    except KeyboardInterrupt:  # not left to end the test session
        pytest.fail("the interrupt escaped the run, and with it every row measured")


# -- 1. a second run never overwrites the first ---------------------------------------------


def test_a_second_run_the_same_day_writes_beside_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    drawn = importlib.util.find_spec("matplotlib") is not None
    _stand_ins(monkeypatch, [_row("ceiling"), _row("ema_core")])
    argv = ["--backend", "numpy", *ONE_CASE, "--out", str(tmp_path)]
    assert _main(argv) == 0
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (json_1,) = (name for name in first if name.endswith(".json"))
    stem = json_1[: -len(".json")]
    assert set(first) == {f"{stem}.json", f"{stem}.md"} | ({f"{stem}.png"} if drawn else set())
    capsys.readouterr()
    _stand_ins(monkeypatch, [])  # no rows: no chart, which must not leave run 1's beside it
    assert _main(argv) == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in first} == first
    assert {p.name for p in tmp_path.iterdir()} - set(first) == {f"{stem}-2.json", f"{stem}-2.md"}
    err = capsys.readouterr().err
    assert f"{stem}-2.json" in err and f"{stem}-2.md" in err and f"{stem} was taken" in err
    assert json.loads((tmp_path / f"{stem}-2.json").read_text())["rows"] == []
    _stand_ins(monkeypatch, [_row("ceiling")])
    (tmp_path / f"{stem}-3.png").write_bytes(b"someone else's")  # any of the three files
    assert _main(argv) == 0
    assert (tmp_path / f"{stem}-4.json").is_file()
    assert (tmp_path / f"{stem}-3.png").read_bytes() == b"someone else's"


# -- 2. an interrupt anywhere keeps what was measured -----------------------------------------


@pytest.mark.parametrize("cut", ["tree", "stateless", "bank"])
def test_an_interrupt_in_the_closing_tables_writes_the_rows_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    before = {"tree": [], "stateless": ["tree"], "bank": ["tree", "stateless"]}[cut]
    tables: dict[str, Any] = {name: f"the {name} table's text" for name in before}
    _stand_ins(monkeypatch, [_row("ceiling", "torch")], **tables, **{cut: KeyboardInterrupt()})
    argv = ["--backend", "torch", *ONE_CASE, "--out", str(tmp_path), "--tag", "cut"]
    assert _main(argv) == 130
    (written,) = tmp_path.glob("*-cut.json")
    data = json.loads(written.read_text())
    assert [r["contender"] for r in data["rows"]] == ["ceiling"]
    assert data["meta"]["interrupted"] is True
    md = (tmp_path / f"{written.name[: -len('.json')]}.md").read_text()
    assert f"the {cut} table: cut by an interrupt" in md
    for name in before:  # the tables that ran before the interrupt are kept too
        assert f"the {name} table's text" in md


def test_an_interrupt_in_a_case_exits_130_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stand_ins(monkeypatch, [])

    def measure(*args: Any, **kwargs: Any) -> list[harness.Row]:
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "measure", measure)
    argv = ["--backend", "numpy", *ONE_CASE, "--out", str(tmp_path)]
    assert _main(argv) == 130
    (written,) = tmp_path.glob("*.json")
    assert "numpy resnet50 fp32: cut by an interrupt" in written.with_suffix(".md").read_text()


def test_an_interrupt_while_the_files_are_written_is_held_until_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stand_ins(monkeypatch, [_row("ceiling")])

    def draw(rows: list[harness.Row], path: Path, title: str) -> bool:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C (or gpu.sh's limit) mid-write
        path.write_bytes(b"png")
        return True

    monkeypatch.setattr(chart, "draw", draw)
    handler = signal.getsignal(signal.SIGINT)
    argv = ["--backend", "numpy", *ONE_CASE, "--out", str(tmp_path)]
    assert _main(argv) == 130
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md", ".png"]
    assert signal.getsignal(signal.SIGINT) is handler  # given back


# -- 3. the other CLIs: argparse errors before any work ----------------------------------------


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", *argv],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _jax_cuda() -> bool:
    if importlib.util.find_spec("jax") is None:
        return True
    import jax

    try:
        return bool(jax.devices("cuda"))
    except RuntimeError:
        return False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["benchmarks.bank", "--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
        (["benchmarks.jax_host", "--workload", "gpt2-small"], "invalid choice: 'gpt2-small'"),
        (
            ["benchmarks.jax_host", "--workload", "resnet50", "--calls", "0"],
            "--calls: must be at least 1",
        ),
        (["benchmarks.tree", "--repeats", "3"], "unrecognized arguments: --repeats 3"),
        (["benchmarks.routes", "extra"], "unrecognized arguments: extra"),
    ],
)
def test_the_other_clis_refuse_bad_arguments_with_exit_2(argv: list[str], message: str) -> None:
    got = _cli(*argv)
    assert got.returncode == 2, got.stderr[-600:]
    assert message in got.stderr and "Traceback" not in got.stderr


@pytest.mark.skipif(_jax_cuda(), reason="needs jax without a CUDA device")
def test_jax_host_on_a_missing_device_is_an_argparse_error() -> None:
    got = _cli("benchmarks.jax_host", "--device", "cuda", "--workload", "resnet50")
    assert got.returncode == 2, got.stderr[-600:]
    assert "--device cuda, but JAX has no such device" in got.stderr
    assert "Traceback" not in got.stderr


# -- 4. a backend named but not installed is an error ------------------------------------------


def _missing_but(monkeypatch: pytest.MonkeyPatch, *present: str) -> None:
    """Every backend but ``present`` reports itself not installed."""
    from benchmarks.backends import MODULES

    for name in MODULES:
        module = importlib.import_module(f"benchmarks.backends.{name}")
        reason = None if name in present else f"{name} is not installed (stand-in)"
        monkeypatch.setattr(module, "missing", lambda reason=reason: reason)


def test_a_backend_named_but_not_installed_exits_2_before_any_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stand_ins(monkeypatch, [_row("ceiling")])
    _missing_but(monkeypatch, "numpy")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        bench_main.main(["--backend", "numpy", "--backend", "cupy", *ONE_CASE, "--out", str(out)])
    assert exit_info.value.code == 2
    assert (
        "--backend cupy cannot run here: cupy is not installed (stand-in)"
        in capsys.readouterr().err
    )
    assert not out.exists()


def test_the_default_plan_skips_what_is_missing_and_lists_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stand_ins(monkeypatch, [_row("ceiling")])
    _missing_but(monkeypatch, "numpy")
    assert _main([*ONE_CASE, "--out", str(tmp_path)]) == 0  # a skip is no failure
    (md,) = tmp_path.glob("*.md")
    text = md.read_text()
    assert "Cases and contenders without rows" in text
    assert "- cupy: skipped, cupy is not installed (stand-in) (resnet50 fp32)" in text


# -- 5. conflicting flags are refused ----------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tree", "--bank"], "argument --bank: not allowed with argument --tree"),
        (["--routes", "--tree"], "argument --tree: not allowed with argument --routes"),
        (["--quick", "--repeats", "50"], "--quick times 3 repeats: give --repeats 50 without"),
        (["--quick", "--repeats", "3"], "--quick times 3 repeats"),
        (["--eager", "--backend", "numpy"], "--eager prints its own table only: --backend"),
        (["--tree", "--out", "x", "--tag", "t"], "--tree prints its own table only: --out, --tag"),
        (["--big", "--quick"], "--big adds llama_1b to the default workloads: not with --quick"),
        (["--big", "--workload", "resnet50"], "not with --workload"),
    ],
)
def test_conflicting_flags_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_main.parse(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_repeats_default_and_quick() -> None:
    assert bench_main.parse(["--backend", "numpy"]).repeats == 8
    assert bench_main.parse(["--backend", "numpy", "--quick"]).repeats == 3
    assert bench_main.parse(["--backend", "numpy", "--repeats", "5"]).repeats == 5
    assert bench_main.parse(["--tree"]).tree


# -- 6. gpu.sh: its arguments, and its parts inside one command's 600 s ------------------------


def _gpu_sh(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``gpu.sh`` with python3, timeout and nvidia-smi stubbed out (they fail at once): a run
    that got past its argument checks would stop at its first step, never reach a GPU part."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name in ("python3", "timeout", "nvidia-smi", "pip"):
        (stubs / name).write_text("#!/bin/sh\nexit 1\n")
        (stubs / name).chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPU_")}
    environ |= {"PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    script = str(ROOT / "benchmarks" / "gpu.sh")
    return subprocess.run(
        ["bash", script, *argv],
        check=False,
        env=environ | env,
        capture_output=True,
        text=True,
        timeout=30,
    )


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


@needs_bash
@pytest.mark.parametrize("argv", [["--bogus"], ["--big", "--bigg"], ["big"]])
def test_gpu_sh_refuses_an_unknown_argument(tmp_path: Path, argv: list[str]) -> None:
    got = _gpu_sh(tmp_path, *argv)
    assert got.returncode == 2
    assert f"gpu.sh: unknown argument '{argv[-1]}'" in got.stderr
    assert "bash benchmarks/gpu.sh --big" in got.stderr  # the usage
    assert not (tmp_path / "out").exists()


@needs_bash
@pytest.mark.parametrize("argv", [[], ["--big"]])
def test_gpu_sh_each_command_fits_the_device_tools_600_s(tmp_path: Path, argv: list[str]) -> None:
    got = _gpu_sh(tmp_path, "--dry-run", *argv)
    assert got.returncode == 0, got.stderr
    parts = re.findall(r"^\s*(\d+) s \+\s*(\d+) s  (.+)$", got.stdout, re.MULTILINE)
    found = re.search(r"^total (\d+) s \(setup (\d+) s", got.stdout, re.MULTILINE)
    assert found, got.stdout
    total, setup = map(int, found.groups())
    assert len(parts) == 5
    assert setup + sum(int(s) + int(k) for s, k, _ in parts) == total <= 600
    names = " ".join(what for *_, what in parts)
    assert ("llama_1b" in names) == bool(argv) and ("tests marked gpu" in names) != bool(argv)
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


@needs_bash
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GPU_TEST_SECONDS": "400"}, "add up to 790 s"),
        ({"GPU_TEST_SECONDS": "9O"}, "GPU_TEST_SECONDS must be a whole number of seconds"),
        ({"GPU_PARTS": "torch cupyy"}, "unknown part 'cupyy'"),
    ],
)
def test_gpu_sh_refuses_settings_that_would_overrun_or_run_nothing(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    got = _gpu_sh(tmp_path, "--dry-run", **env)
    assert got.returncode == 2
    assert message in got.stderr

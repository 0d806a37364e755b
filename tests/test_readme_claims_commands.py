"""README claims of "The two commands" (`make demo`, `make test` and the targets beside them)
that no other test asserted. Each test names its claim; the comment quotes it. `make` runs only
as ``make -n`` (it prints the commands, runs none); the demo runs with its trainings replaced."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib

import ema_core as ema

ROOT = Path(__file__).resolve().parents[1]


def _make_dry_run(*args: str) -> str:
    """The commands ``make`` would run (``-n``: nothing is run)."""
    out = subprocess.run(
        ["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout


def _collect(*args: str) -> str:
    """What ``pytest --collect-only -q *args`` prints (the tests it would run, none run)."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    out = subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout


def test_make_targets_run_what_the_readme_says() -> None:
    # make demo/test/test-fast/bench/lint/test-gpu/lock; "one pytest worker per CPU"
    assert ".venv/bin/python examples/demo.py" in _make_dry_run("demo")
    assert re.search(r'pytest .*-m "not gpu" .*-n auto', _make_dry_run("test"))
    assert re.search(r'pytest .*-m "not gpu and not slow" .*-n auto', _make_dry_run("test-fast"))
    assert re.search(r"pytest .*-m gpu\b", _make_dry_run("test-gpu"))
    assert ".venv/bin/python -m benchmarks" in _make_dry_run("bench")
    lint = _make_dry_run("lint")
    assert "-m ruff check" in lint and "-m mypy ema_core" in lint
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["strict"] is True
    assert "scripts/lock.py requirements-dev.lock" in _make_dry_run("lock")


def test_targets_bootstrap_their_venv_from_the_hashed_lock() -> None:
    # "Both bootstrap their own .venv ... from the committed lock requirements-dev.lock (every
    # package at one version with its hash; torch 2.13.0+cpu ...)"
    for target in ("demo", "test"):
        commands = _make_dry_run("-B", target)  # as on a fresh machine
        assert "-m venv .venv" in commands, target
        assert "--require-hashes --no-deps -r requirements-dev.lock" in commands, target
    entries = re.split(r"\n(?=\S)", (ROOT / "requirements-dev.lock").read_text())
    packages = [e for e in entries if e.strip() and not e.startswith("#")]
    assert len(packages) > 20
    for entry in packages:
        assert re.match(r"^[A-Za-z0-9_.\-\[\],]+==\S+ \\\n", entry), entry.splitlines()[0]
        assert "--hash=sha256:" in entry, entry.splitlines()[0]
    assert any(e.startswith("torch==2.13.0+cpu ") for e in packages)


def test_not_slow_leaves_out_the_multi_process_peer_and_demo_tests(
    request: pytest.FixtureRequest,
) -> None:
    # "`make test-fast` (or `pytest -m "not slow"`) leaves out the multi-process, peer-library
    # and demo tests"
    files = ["tests/test_demo.py", "tests/test_dist_torch.py", "tests/test_presets_peers.py"]
    items = [i for i in request.session.items if i.nodeid.split("::")[0] in files]
    if {i.nodeid.split("::")[0] for i in items} == set(files):  # this run collected them all
        assert all(i.get_closest_marker("slow") is not None for i in items)  # what -m reads
        return
    out = _collect("-m", "not slow", *files)  # run on its own: a collection of its own
    assert re.search(r"no tests collected \(\d+ deselected\)", out), out[-2000:]


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """examples/demo.py with the trainings replaced: no CNN is trained, no framework imported."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    pytest.importorskip("sklearn")
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import demo as module  # examples/demo.py

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(module.agreement, "frameworks", lambda: {"numpy": 0, "torch": 0})
    return module


def _agreement(relative: float) -> Any:
    """A stand-in for ``agreement.measure``: torch's EMA trajectory off numpy's by ``relative``."""

    def measure(found: Any, tick: Any) -> dict[str, dict[str, Any]]:
        ref = np.linspace(1.0, 2.0, 8)
        one = {"steps/s": 1.0, "raw": 0.5, "ema": 0.4}
        return {
            "numpy": {**one, "trajectory": ref},
            "torch": {**one, "trajectory": ref + relative * 2.0},  # max |ref| is 2
        }

    return measure


@pytest.mark.parametrize(("relative", "status"), [(0.5e-5, 0), (2e-5, 1)])
def test_demo_exits_1_when_the_agreement_is_off_by_more_than_1e_5(
    demo: Any, monkeypatch: pytest.MonkeyPatch, relative: float, status: int
) -> None:
    # "the check allows 1e-5"; "the exit status is 1 if the agreement fails"
    monkeypatch.setattr(demo, "train_all", lambda digits: {})
    monkeypatch.setattr(demo.agreement, "measure", _agreement(relative))
    assert demo.main([]) == status


def test_demo_skips_a_missing_framework_with_a_line_and_writes_demo_curves_png(
    demo: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any
) -> None:
    # "A framework that is not installed is skipped with a line saying so"; "writes
    # demo_curves.png to the current directory (or --out) and prints its path"
    runs = {
        "torch": (("no_such_framework_here",), "_demo_torch", "Lightning + EMACallback"),
        "JAX": (("numpy",), "fake_jax_run", "optax + with_ema"),
    }
    fake = type(sys)("fake_jax_run")
    fake.train = lambda digits, tick: {"step": [1, 2], "raw": [0.6, 0.7], "ema": [0.8, 0.9]}
    monkeypatch.setitem(sys.modules, "fake_jax_run", fake)
    monkeypatch.setattr(demo, "RUNS", runs)
    monkeypatch.setattr(demo.agreement, "measure", _agreement(0.0))
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    assert "torch: skipped, needs no_such_framework_here" in out
    png = tmp_path / "demo_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png.resolve()) in out


def test_demo_trains_with_the_settings_the_readme_gives(demo: Any) -> None:
    # "lr 0.25, batches of 4, 1,200 steps, the same batches in both frameworks";
    # "ema.Config(schedule=ema.schedules.warmup(0.995))"
    data = demo.data
    assert (data.LR, data.BATCH, data.STEPS) == (0.25, 4, 1200)
    assert ema.Config(schedule=ema.schedules.warmup(0.995)) == data.CONFIG
    batches = data.load().batches()
    assert batches.shape == (1200, 4)
    np.testing.assert_array_equal(batches, data.load().batches())  # one fixed order


def test_make_test_runs_the_doctests_and_the_readme_snippets_too() -> None:
    # "runs the whole test suite (doctests and README snippets too)"
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    options = options["ini_options"]
    assert "ema_core" in options["testpaths"] and "--doctest-modules" in options["addopts"]
    out = _collect("tests/test_readme.py", "ema_core/_api.py")
    assert "test_readme_snippet_runs[" in out and "ema_core/_api.py::" in out

"""`make demo` runs examples/demo.py: a CNN on the digits in torch (Lightning + EMACallback) and
JAX (optax + with_ema), raw vs EMA test accuracy, the cross-framework agreement table, a PNG."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the demo, in a subprocess: `pytest -m "not slow"` leaves it out

ROOT = Path(__file__).resolve().parents[1]
PCT = r"(\d+\.\d) %"
SPAN = r"(\d+\.\d)-(\d+\.\d) %"
# "torch     Lightning + EMACallback     92.5 %    97.5 %      90.8-96.9 %      97.2-97.5 %"
ACCURACY_ROW = re.compile(rf"^(torch|JAX) .+?\s{PCT}\s+{PCT}\s+{SPAN}\s+{SPAN}$", re.MULTILINE)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    png = tmp_path_factory.mktemp("demo") / "curves.png"
    out = subprocess.run(
        [sys.executable, "examples/demo.py", "--out", str(png)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out, png


def test_demo_ema_beats_the_noisy_raw_weights_in_torch_and_jax(demo) -> None:
    out, _ = demo
    rows = {m[0]: [float(x) for x in m[1:]] for m in ACCURACY_ROW.findall(out.stdout)}
    assert set(rows) == {"torch", "JAX"}, out.stdout
    for name, (_raw, _avg, raw_lo, _raw_hi, avg_lo, _avg_hi) in rows.items():
        # the averaged CNN learns the digits: > 90 % at each of the last evaluations
        assert avg_lo > 90.0, (name, out.stdout)
        # and averaging smooths the noisy SGD: the EMA's worst recent score beats the raw's (a
        # callback that did not swap the EMA in for validation would show the raw curve twice)
        assert avg_lo > raw_lo, (name, out.stdout)


def test_demo_prints_agreement_table(demo) -> None:
    out, _ = demo
    rows = [line for line in out.stdout.splitlines() if line.endswith("agrees")]
    assert {row.split()[0] for row in rows} >= {"numpy", "torch", "jax", "array-api-strict"}
    assert "DISAGREES" not in out.stdout
    assert "EMA trajectories agree to 1e-05 relative: yes" in out.stdout


def test_demo_writes_a_png_of_the_curves(demo) -> None:
    out, png = demo
    assert f"raw vs EMA: {png.resolve()}" in out.stdout
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", head
    width, height = struct.unpack(">II", head[16:24])
    assert width > height > 200  # two panels side by side


def test_demo_output_has_no_warnings(demo) -> None:
    out, _ = demo
    assert "warning" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr

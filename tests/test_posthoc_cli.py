"""The command line ``python -m ema_core.posthoc`` and its plot."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from ema_core._safetensors import Reader
from ema_core.posthoc import reconstruct, save_snapshot
from ema_core.posthoc.__main__ import main


def _snapshots(directory):
    rng = np.random.default_rng(2)
    for step in (100, 200, 300):
        for s in (0.05, 0.1):
            save_snapshot(
                directory, {"w": rng.normal(size=5), "n": np.array(step)}, step=step, sigma_rel=s
            )
    return directory


def test_several_sigma_rels_write_one_file_each(tmp_path, capsys):
    _snapshots(tmp_path / "snaps")
    out = tmp_path / "out" / "ema.safetensors"
    assert (
        main(
            [
                str(tmp_path / "snaps"),
                "--sigma-rel",
                "0.07",
                "0.08",
                "--at",
                "200",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "\rsnapshot 4/4 (step 200, sigma_rel 0.1)\n" in captured.err
    assert "\rsnapshot 1/4 (step 100, sigma_rel 0.05)" in captured.err
    for s in (0.07, 0.08):
        path = tmp_path / "out" / f"ema-{s}.safetensors"
        with Reader(path) as reader:
            assert reader.metadata["step"] == "200" and float(reader.metadata["sigma_rel"]) == s
            np.testing.assert_array_equal(
                reader.read("w"), reconstruct(tmp_path / "snaps", s, at=200)["w"]
            )
            assert reader.read("n") == 200
    assert not out.exists()


def test_one_sigma_rel_writes_out_itself(tmp_path):
    _snapshots(tmp_path)
    out = tmp_path / "ema.safetensors"
    assert (
        main([str(tmp_path), "--sigma-rel", "0.07", "--out", str(out), "--dtype", "float64"]) == 0
    )
    with Reader(out) as reader:
        np.testing.assert_array_equal(
            reader.read("w"), reconstruct(tmp_path, 0.07, dtype="float64")["w"]
        )
        assert reader.metadata["step"] == "300"


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    _snapshots(tmp_path)
    png = tmp_path / "profiles.png"
    assert (
        main(
            [
                str(tmp_path),
                "--sigma-rel",
                "0.07",
                "0.15",
                "--out",
                str(tmp_path / "e.st"),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plot_without_matplotlib_writes_nothing(tmp_path, monkeypatch, capsys):
    _snapshots(tmp_path / "s")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                str(tmp_path / "s"),
                "--sigma-rel",
                "0.07",
                "--out",
                str(tmp_path / "e"),
                "--plot",
                str(tmp_path / "p.png"),
            ]
        )
    assert exit_info.value.code == 1
    assert "needs matplotlib: pip install ema-core[plot]" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["s"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--sigma-rel", "0.07", "--at", "250"], r"nearest snapshot steps are \[200, 300\]"),
        (["--sigma-rel", "0.5"], "sigma_rel must be in"),
    ],
)
def test_errors_exit_2_and_write_nothing(tmp_path, capsys, args, match):
    _snapshots(tmp_path / "s")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "s"), *args, "--out", str(tmp_path / "e")])
    assert exit_info.value.code == 2
    assert re.search(match, capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_runs_as_a_module(tmp_path):
    _snapshots(tmp_path / "s")
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ema_core.posthoc",
            str(tmp_path / "s"),
            "--sigma-rel",
            "0.07",
            "--out",
            str(tmp_path / "e.safetensors"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and (tmp_path / "e.safetensors").exists()

"""Post-hoc EMA under hostile but realistic input: each case broke once (see the test names)."""

from __future__ import annotations

import fractions
import os

import numpy as np
import pytest

from ema_core.posthoc import (
    PostHocWarning,
    coefficients,
    list_snapshots,
    reconstruct,
    save_snapshot,
    sigma_rel_to_gamma,
)
from ema_core.posthoc.__main__ import main


def _snapshots(directory, steps=(100, 200, 300), sigmas=(0.05, 0.1), seed=0):
    rng = np.random.default_rng(seed)
    saved = {}
    for step in steps:
        for s in sigmas:
            saved[step, s] = rng.normal(size=64).astype(np.float32)
            save_snapshot(
                directory, {"w": saved[step, s], "n": np.array(step)}, step=step, sigma_rel=s
            )
    return saved


@pytest.mark.parametrize("tiny", [5e-324, 1e-310])
def test_a_sigma_rel_whose_gamma_overflows_is_a_value_error(tiny):
    with pytest.raises(ValueError, match=r"sigma_rel must be > 1/1.798e\+308, got " + repr(tiny)):
        sigma_rel_to_gamma(tiny)


@pytest.mark.parametrize("tiny", [5e-324, 1e-310, 1e-200])
def test_a_sigma_rel_too_small_for_the_solve_is_a_value_error(tiny):
    with pytest.raises(ValueError, match=r"target_sigma_rel must be >= 1e-150"):
        coefficients([100, 100, 200, 200], [0.05, 0.1, 0.05, 0.1], 200, tiny)
    with pytest.raises(ValueError, match=r"sigma_rels\[0\] must be >= 1e-150"):
        coefficients([100, 100, 200, 200], [tiny, 0.1, 0.05, 0.1], 200, 0.07)


def test_a_narrow_snapshot_is_not_called_a_duplicate_profile():
    """sigma_rel 1e-20 next to 0.1: A is singular by its scale, not by two equal profiles."""
    with pytest.raises(ValueError, match=r"sigma_rel 1e-20.*narrower") as err:
        coefficients([100, 100, 200, 200], [1e-20, 0.1, 1e-20, 0.1], 200, 0.07)
    assert "same profile" not in str(err.value)


def test_a_small_but_valid_sigma_rel_still_works():
    """Computed, and (0.05 and 0.10 at two times cannot express it) warned about by its fit."""
    with pytest.warns(PostHocWarning, match=r"sigma_rel 1e-06 .* misses its profile by 100"):
        x = coefficients([100, 100, 200, 200], [0.05, 0.1, 0.05, 0.1], 200, 1e-6)
    assert np.isfinite(x).all() and abs(x.sum() - 1.0) < 1e-12


@pytest.mark.parametrize("value", [np.array(0.07), "0.07", b"0.07", None])
def test_reconstruct_refuses_a_non_number_sigma_rel_by_name(tmp_path, value):
    _snapshots(tmp_path)
    with pytest.raises(TypeError, match="sigma_rel must be a real number.*" + type(value).__name__):
        reconstruct(tmp_path, value)


def test_reconstruct_takes_any_real_number_as_one_sigma_rel(tmp_path):
    _snapshots(tmp_path)
    want = reconstruct(tmp_path, 0.07)["w"]
    got = reconstruct(tmp_path, fractions.Fraction(7, 100))["w"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("at", [np.int64(200), np.uint32(200), np.array(200)])
def test_at_takes_numpy_integers(tmp_path, at):
    _snapshots(tmp_path)
    want = reconstruct(tmp_path, 0.07, at=200)["w"]
    np.testing.assert_array_equal(reconstruct(tmp_path, 0.07, at=at)["w"], want)


@pytest.mark.parametrize("at", [200.0, np.float64(200.0), np.bool_(True), "200"])
def test_at_refuses_non_integers_by_name(tmp_path, at):
    _snapshots(tmp_path)
    with pytest.raises(TypeError, match=r"at must be an int step or None"):
        reconstruct(tmp_path, 0.07, at=at)


@pytest.mark.parametrize("directory", [None, 3, b"."])
def test_list_snapshots_refuses_a_directory_that_is_not_a_path(directory, tmp_path, monkeypatch):
    _snapshots(tmp_path)
    monkeypatch.chdir(tmp_path)  # None once listed the working directory's snapshots
    with pytest.raises(TypeError, match=r"directory must be a str or os.PathLike"):
        list_snapshots(directory)
    with pytest.raises(TypeError, match=r"directory must be a str or os.PathLike"):
        reconstruct(directory, 0.07)


@pytest.mark.parametrize("late", [np.ones(64, np.int32), np.ones(64, bool)])
def test_an_array_float_in_one_file_and_not_in_another_is_refused(tmp_path, late):
    """It was averaged over the float files only, silently dropping the others' weight."""
    _snapshots(tmp_path)
    save_snapshot(tmp_path, {"w": late, "n": np.array(400)}, step=400, sigma_rel=0.05)
    with pytest.raises(ValueError, match=r"'w' is float in .*0000000100-0.05.* not in .*400"):
        list_snapshots(tmp_path)
    with pytest.raises(ValueError, match=r"'w' is float in"):
        reconstruct(tmp_path, 0.07)


def test_a_counter_that_turns_float_is_refused(tmp_path):
    _snapshots(tmp_path)
    save_snapshot(tmp_path, {"w": np.ones(64), "n": np.array(1.5)}, step=400, sigma_rel=0.05)
    with pytest.raises(ValueError, match=r"'n' is float in .*400.* not in "):
        reconstruct(tmp_path, 0.07)


def test_floats_of_different_widths_still_mix(tmp_path):
    _snapshots(tmp_path)
    save_snapshot(tmp_path, {"w": np.ones(64), "n": np.array(4)}, step=400, sigma_rel=0.05)
    assert reconstruct(tmp_path, 0.05)["w"].tolist() == [1.0] * 64


def test_a_torch_meta_tensor_is_refused_before_anything_is_written(tmp_path):
    torch = pytest.importorskip("torch")
    old = save_snapshot(tmp_path, {"a": np.ones(3), "b": np.ones(2)}, step=100, sigma_rel=0.05)
    before = old.read_bytes()
    meta = torch.ones(2, device="meta")
    with pytest.raises(ValueError, match=r"averages\['b'\] is a torch tensor on the meta device"):
        save_snapshot(tmp_path, {"a": np.zeros(3), "b": meta}, step=100, sigma_rel=0.05)
    assert old.read_bytes() == before and os.listdir(tmp_path) == [old.name]
    with pytest.raises(ValueError, match=r"meta device"):
        save_snapshot(tmp_path / "new" / "deeper", {"b": meta}, step=100, sigma_rel=0.05)
    assert not (tmp_path / "new").exists()


def test_a_failed_write_leaves_no_directory_it_created(tmp_path, monkeypatch):
    from ema_core.posthoc import _snapshots as module

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(module, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        save_snapshot(tmp_path / "a" / "b", {"w": np.ones(2)}, step=100, sigma_rel=0.05)
    assert os.listdir(tmp_path) == []


def test_a_step_float64_cannot_hold_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"step must be <= 2\*\*53 .*got 1180591620717411303424"):
        save_snapshot(tmp_path, {"w": np.ones(2)}, step=2**70, sigma_rel=0.05)
    assert os.listdir(tmp_path) == []


def test_a_tracked_target_gives_that_snapshot_exactly_in_float64(tmp_path):
    saved = _snapshots(tmp_path, steps=tuple(range(100, 1100, 100)), sigmas=(0.05, 0.1, 0.15))
    for at in (100, 500, 1000):
        for s in (0.05, 0.1, 0.15):
            got = reconstruct(tmp_path, s, at=at, dtype="float64")["w"]
            np.testing.assert_array_equal(got, saved[at, s].astype(np.float64))
    x = coefficients([100, 100, 200, 200], [0.05, 0.1, 0.05, 0.1], 200, 0.05)
    assert x.tolist() == [0.0, 0.0, 1.0, 0.0]


# --- the command line: messages and exit codes, never a traceback -----------------------------


def _cli(tmp_path, capsys, *args):
    _snapshots(tmp_path / "snaps")
    code = 0
    try:
        code = main([str(tmp_path / "snaps"), *args])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def test_cli_out_is_a_directory(tmp_path, capsys):
    (tmp_path / "outdir").mkdir()
    code, err = _cli(tmp_path, capsys, "--sigma-rel", "0.07", "--out", str(tmp_path / "outdir"))
    assert code == 2 and "--out" in err and "is a directory" in err and "snapshot 1/" not in err


def test_cli_plot_is_a_directory(tmp_path, capsys):
    out = tmp_path / "ema.safetensors"
    args = ("--sigma-rel", "0.07", "--out", str(out), "--plot", str(tmp_path / "snaps"))
    code, err = _cli(tmp_path, capsys, *args)
    assert code == 2 and "--plot" in err and "is a directory" in err and not out.exists()


def test_cli_plot_into_a_missing_directory_creates_it(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "figs" / "p.png"
    args = ("--sigma-rel", "0.07", "--out", str(tmp_path / "e.safetensors"), "--plot", str(png))
    code, _ = _cli(tmp_path, capsys, *args)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"


def test_cli_unwritable_out_is_a_message(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    out = blocker / "ema.safetensors"  # a path under a regular file
    code, err = _cli(tmp_path, capsys, "--sigma-rel", "0.07", "--out", str(out))
    assert code == 1 and "cannot write" in err and str(out) in err and "Traceback" not in err
    assert blocker.read_bytes() == b"x"


def test_cli_tiny_sigma_rel_is_a_message(tmp_path, capsys):
    code, err = _cli(tmp_path, capsys, "--sigma-rel", "1e-320", "--out", str(tmp_path / "e"))
    assert code == 2 and "sigma_rel must be >= 1e-150" in err

"""Tests that the post-hoc reconstruction mutation audit found missing: the solve's lower bound
on sigma_rel, the domain of ``inner_products``, the message for a Gram matrix made singular by
several near-alike profiles, snapshots with weight 0, the listing's order and checks, and how
``reconstruct(like=...)`` matches names, dtypes and tied tensors. Each kills a small plausible
bug that the rest of the suite let through."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from ema_core.posthoc import (
    coefficients,
    inner_products,
    list_snapshots,
    reconstruct,
    save_snapshot,
)
from ema_core.posthoc._math import SIGMA_REL_MIN, check_posthoc_sigma_rel
from ema_core.posthoc._snapshots import save_snapshot_set


def _four(folder: Path, w: dict[tuple[int, float], np.ndarray] | None = None) -> None:
    """Snapshots of ``{"w": ...}`` at steps 100 and 200, sigma_rels 0.05 and 0.1."""
    for step in (100, 200):
        for sigma in (0.05, 0.1):
            value = (w or {}).get((step, sigma), np.full(2, step * sigma, np.float32))
            save_snapshot(folder, {"w": value}, step=step, sigma_rel=sigma)


def test_the_smallest_posthoc_sigma_rel_is_itself_accepted() -> None:
    """``SIGMA_REL_MIN`` is the smallest sigma_rel post-hoc EMA takes (">= SIGMA_REL_MIN"):
    it passes the check, and the float64 just below it is refused."""
    assert check_posthoc_sigma_rel(SIGMA_REL_MIN) == SIGMA_REL_MIN
    with pytest.raises(ValueError, match=r"must be >= 1e-150 for post-hoc EMA"):
        check_posthoc_sigma_rel(math.nextafter(SIGMA_REL_MIN, 0.0))


@pytest.mark.parametrize(
    ("args", "name"), [((0.0, 1.0, 1.0, 1.0), "t_a"), ((1.0, 1.0, 1.0, 0.0), "gamma_b")]
)
def test_inner_products_refuse_a_zero_time_or_exponent(
    args: tuple[float, float, float, float], name: str
) -> None:
    """Times and exponents must be > 0, not >= 0: a time 0 divides by zero in the profile."""
    with pytest.raises(ValueError, match=rf"{name} must be finite and > 0"):
        inner_products(*args)


def test_three_nearly_alike_profiles_are_named_as_alike() -> None:
    """Three sigma_rels 1e-4 apart at one time make the Gram matrix singular though no pair is
    alike to float64 precision (their cosines are about 1 - 1e-9): the message names two of
    them as having the same profile, not a spread of scales."""
    sigmas = [0.05, 0.05 * (1 + 1e-4), 0.05 * (1 + 2e-4), 0.1]
    with pytest.raises(ValueError, match=r"\) have the same profile; drop one") as caught:
        coefficients([100, 100, 100, 200], sigmas, 200, 0.07)
    assert "orders of magnitude" not in str(caught.value)


def test_a_tracked_target_is_untouched_by_a_snapshot_it_gives_weight_0(tmp_path: Path) -> None:
    """A tracked sigma_rel comes back as its snapshot alone: a snapshot that another target of
    the same pass averages but this one weighs 0 adds nothing, not even ``0 * nan``."""
    broken = np.array([np.nan, 1.0], np.float32)
    _four(tmp_path, {(100, 0.05): broken})
    both = reconstruct(tmp_path, [0.1, 0.07], at=200)
    assert np.isnan(both[0.07]["w"][0])
    np.testing.assert_array_equal(both[0.1]["w"], np.full(2, 20.0, np.float32))


def test_list_snapshots_orders_sigma_rels_by_value_not_by_file_name(tmp_path: Path) -> None:
    """The listing is sorted by (step, sigma_rel): 1e-05 comes before 0.05 though its file
    name ``phema-...-1e-05`` sorts after ``phema-...-0.05``."""
    for sigma in (0.05, 1e-05):
        save_snapshot(tmp_path, {"w": np.ones(1)}, step=100, sigma_rel=sigma)
    assert [info.sigma_rel for info in list_snapshots(tmp_path)] == [1e-05, 0.05]


def test_a_backup_copy_of_a_snapshot_is_skipped(tmp_path: Path) -> None:
    """Only whole names ``phema-<step>-<sigma_rel>.safetensors`` are snapshots: a copy named
    ``....safetensors.bak`` is skipped, not read as a second snapshot of that pair."""
    path = save_snapshot(tmp_path, {"w": np.ones(1)}, step=100, sigma_rel=0.05)
    shutil.copy(path, tmp_path / f"{path.name}.bak")
    assert [info.path for info in list_snapshots(tmp_path)] == [path]


def test_a_step_that_is_not_a_multiple_of_its_interval_is_refused(tmp_path: Path) -> None:
    """A snapshot is written at a multiple of its interval; a header saying step 102 with
    interval 4 (edited here in place, same length) is refused, naming both."""
    path = save_snapshot(tmp_path, {"w": np.ones(2)}, step=100, sigma_rel=0.05, interval=4)
    data = path.read_bytes()
    assert data.count(b'"step":"100"') == 1
    path.write_bytes(data.replace(b'"step":"100"', b'"step":"102"'))
    with pytest.raises(ValueError, match="step 102 and interval 4 are not valid"):
        list_snapshots(tmp_path)


def test_two_snapshots_that_disagree_on_the_copied_arrays_are_refused(tmp_path: Path) -> None:
    """With only two snapshots, one copying ``b`` and one averaging it, the directory is
    refused: the first recorded snapshot is compared with the second too."""
    averages = {"w": np.ones(2, np.float32), "b": np.zeros(2, np.float32)}
    for step, policy in ((10, "copy"), (20, "average")):
        save_snapshot_set(
            tmp_path,
            [averages],
            steps=[step],
            sigma_rels=[0.05],
            intervals=[1],
            policies=[{"w": "average", "b": policy}],
        )
    with pytest.raises(ValueError, match=r"disagree on which arrays the EMA copied.*\['b'\]"):
        list_snapshots(tmp_path)


def test_views_at_two_offsets_of_one_storage_are_not_tied(tmp_path: Path) -> None:
    """Two halves of one torch storage are two tensors, not one tied tensor: a ``like`` whose
    ``b`` the snapshots do not hold is refused, not filled from ``a``."""
    torch = pytest.importorskip("torch")
    save_snapshot(tmp_path, {"a": np.ones(2, np.float32)}, step=100, sigma_rel=0.05)
    base = torch.zeros(4)
    with pytest.raises(ValueError, match=r"like has \['b'\] that the snapshots do not"):
        reconstruct(tmp_path, 0.05, like={"a": base[:2], "b": base[2:]})


def test_like_numpy_arrays_set_the_results_dtype(tmp_path: Path) -> None:
    """With a numpy ``like``, each result has that leaf's dtype (float16 here), not the
    accumulators' float32."""
    _four(tmp_path)
    out = reconstruct(tmp_path, 0.07, like={"w": np.zeros(2, np.float16)})
    assert out["w"].dtype == np.float16


def test_the_include_hint_is_left_out_when_the_snapshots_hold_names_like_lacks(
    tmp_path: Path,
) -> None:
    """The hint about include= / exclude= fits only a ``like`` with more names than the
    snapshots; when the snapshots also hold names ``like`` lacks, the names differ and the
    message says just that."""
    save_snapshot(tmp_path, {"w": np.ones(2, np.float32)}, step=100, sigma_rel=0.05)
    with pytest.raises(ValueError, match=r"like has \['v'\] .* the snapshots have \['w'\]") as e:
        reconstruct(tmp_path, 0.05, like={"v": np.zeros(2, np.float32)})
    assert "include=" not in str(e.value)

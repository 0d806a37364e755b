"""Post-hoc EMA end to end from a real torch training run (README "Post-hoc EMA", its command
line and "Tracking several EMAs at once: the bank"): a small model with BatchNorm, tied
weights and a non-persistent buffer trained by SGD, snapshots of two power-function EMAs
written by an ``EMABank`` and by ``save_snapshot``, then ``reconstruct`` and
``python -m ema_core.posthoc`` on that folder, with resumed runs, truncated files and bad
arguments."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from ema_core import Config  # noqa: E402
from ema_core.posthoc import list_snapshots, reconstruct, save_snapshot  # noqa: E402
from ema_core.posthoc.__main__ import main  # noqa: E402
from ema_core.schedules import power_function  # noqa: E402
from ema_core.torch import EMA, EMABank  # noqa: E402

STEPS = 200
EVERY = 20
SIGMAS = (0.05, 0.10)
TARGET = 0.07


class Net(torch.nn.Module):
    """An embedding tied to the output layer, a BatchNorm (statistics and an int64 counter),
    and on request a non-persistent buffer (rotary ``inv_freq``) or one more layer."""

    def __init__(self, tied: bool = True, extra: bool = False, rotary: bool = False) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.hidden = torch.nn.Linear(8, 8)
        self.norm = torch.nn.BatchNorm1d(8)
        self.out = torch.nn.Linear(8, 10, bias=False)
        if tied:
            self.out.weight = self.emb.weight
        if extra:
            self.extra = torch.nn.Linear(8, 8)
        if rotary:
            self.register_buffer("inv_freq", torch.arange(4.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.hidden(self.emb(x))))
        return self.out(h)  # type: ignore[no-any-return]


def _train(
    model: torch.nn.Module,
    steps: range,
    on_step: Any,
    seed: int = 0,
) -> None:
    """Plain SGD on random tokens (by hand: ``torch.optim`` imports dynamo, seconds);
    ``on_step(step)`` after each step."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only add overhead
    try:
        for step in steps:
            x = torch.randint(0, 10, (16,), generator=gen)
            y = (x + 1) % 10
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.sub_(0.05 * p.grad)
            on_step(step)
    finally:
        torch.set_num_threads(threads)


class Run:
    """One training run: a bank of 0.05 and 0.10 writing snapshots every 20 steps, and an
    ``EMA`` of 0.07 tracked directly to compare with."""

    def __init__(self, folder: Path) -> None:
        torch.manual_seed(0)
        self.folder = folder
        self.model = Net()
        self.bank = EMABank(
            self.model, sigma_rels=SIGMAS, snapshot_every=EVERY, snapshot_dir=folder
        )
        self.tracked = EMA(self.model, config=Config(schedule=power_function(sigma_rel=TARGET)))

        self.at_160: dict[str, Any] = {}

        def on_step(step: int) -> None:
            self.bank.update(step)
            self.tracked.update(step)
            if step == 160:  # a checkpoint to resume from
                self.at_160 = copy.deepcopy(
                    {"model": self.model.state_dict(), "bank": self.bank.state_dict()}
                )

        _train(self.model, range(1, STEPS + 1), on_step)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMA_CORE_NUMBA", "0")  # numba's first compile would take seconds
        yield Run(tmp_path_factory.mktemp("run"))


@pytest.fixture
def snaps(run: Run, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the run's snapshots, for tests that change the folder."""
    folder = tmp_path / "snaps"
    shutil.copytree(run.folder, folder)
    yield folder


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_bank_wrote_one_snapshot_per_sigma_rel_every_20_steps(run: Run) -> None:
    """README: the bank writes one snapshot per EMA after the update of every n-th step."""
    found = list_snapshots(run.folder)
    want = [(t, s) for t in range(EVERY, STEPS + 1, EVERY) for s in SIGMAS]
    assert [(i.step, i.sigma_rel) for i in found] == want


def test_a_sigma_rel_tracked_directly_is_close_to_its_reconstruction(run: Run) -> None:
    """README: the reconstructed 0.07 is close to the 0.07 EMA tracked directly (relative to
    ``|ema - params|``; the README's example needs <= 2e-3, this run has 10 snapshots of each
    sigma_rel, so the bound is 1e-2)."""
    rebuilt = reconstruct(run.folder, TARGET)
    direct = run.tracked.average
    live = dict(run.model.named_parameters())
    names = sorted(live)  # hidden.bias barely moves (the BatchNorm after it removes its
    # gradient): the error is measured over all parameters together
    got = np.concatenate([rebuilt[n].ravel() for n in names])
    want = np.concatenate([direct[n].numpy().ravel() for n in names])
    params = np.concatenate([live[n].detach().numpy().ravel() for n in names])
    error = np.linalg.norm(got - want) / np.linalg.norm(want - params)
    assert error <= 1e-2, error


def test_a_tracked_sigma_rel_at_a_snapshot_step_comes_back_bit_for_bit(run: Run) -> None:
    """README: a target equal to a snapshot's sigma_rel at ``at`` gets that snapshot alone;
    float32 snapshots of a float32 EMA hold its bits."""
    rebuilt = reconstruct(run.folder, 0.05)
    for name, want in run.bank[0].average.items():
        assert np.array_equal(rebuilt[name], want.numpy()), name


def test_like_a_state_dict_loads_strictly_into_the_model(run: Run) -> None:
    """README: ``model.load_state_dict(reconstruct(dir, 0.07, like=model.state_dict()))``
    works for a model with BatchNorm (its counter and statistics) and tied weights."""
    model = Net()
    weights = reconstruct(run.folder, TARGET, like=model.state_dict())
    assert list(weights) == list(model.state_dict())
    model.load_state_dict(weights)  # strict
    assert model.out.weight is model.emb.weight


def test_like_a_state_dict_of_a_model_with_a_non_persistent_buffer_is_taken(
    tmp_path: Path,
) -> None:
    """README ("Choices where the contract is silent"): non-persistent buffers are left out
    where ``module.state_dict()`` leaves them out (``export``), and the Post-hoc section
    promises ``reconstruct(dir, s, like=model.state_dict())`` for loading into the model."""
    model = Net(rotary=True)
    bank = EMABank(model, sigma_rels=SIGMAS, snapshot_every=2, snapshot_dir=tmp_path)
    _train(model, range(1, 5), bank.update)
    weights = reconstruct(tmp_path, TARGET, like=model.state_dict())
    model.load_state_dict(weights)
    assert "inv_freq" not in weights


def test_counters_and_copied_statistics_come_from_the_snapshot_at_at(run: Run) -> None:
    """README: integer arrays (``num_batches_tracked``) and copied BatchNorm statistics are not
    averaged; they come from a snapshot at ``at``."""
    at = 100
    weights = reconstruct(run.folder, TARGET, at=at, like=Net().state_dict())
    counter = weights["norm.num_batches_tracked"]
    assert counter.dtype == torch.int64
    assert int(counter) == at  # one BatchNorm forward per training step
    assert weights["norm.running_mean"].dtype == torch.float32


def test_like_in_bfloat16_gives_bfloat16_tensors_the_counter_unchanged(run: Run) -> None:
    """README: ``like=`` returns each array in its leaf's dtype: a bf16 model gets bf16
    weights and its int64 counter."""
    model = Net().to(torch.bfloat16)
    like = model.state_dict()
    weights = reconstruct(run.folder, TARGET, like=like)
    floats = reconstruct(run.folder, TARGET)
    for name, tensor in weights.items():
        assert tensor.dtype == like[name].dtype, name
        if tensor.is_floating_point():  # out.weight is tied to emb.weight
            want = torch.from_numpy(floats[name.replace("out.", "emb.")]).to(torch.bfloat16)
            assert torch.equal(tensor, want), name
    model.load_state_dict(weights)


def test_the_cli_at_a_snapshot_step_writes_into_a_new_folder(run: Run, tmp_path: Path) -> None:
    """README: ``--at`` a snapshot step, ``--out`` in a folder that does not exist (created);
    the output reads back with ``safetensors.numpy`` and equals ``reconstruct``, with the
    tied ``out.weight`` beside ``emb.weight`` (so the file loads strictly into the model)."""
    out = tmp_path / "new" / "deeper" / "ema.safetensors"
    argv = [str(run.folder), "--sigma-rel", "0.07", "0.09", "--at", "120", "--out", str(out)]
    assert main(argv) == 0
    want = reconstruct(run.folder, [0.07, 0.09], at=120)
    for sigma in (0.07, 0.09):
        got = safetensors_numpy.load_file(str(out.with_name(f"ema-{sigma!r}.safetensors")))
        assert "out.weight" not in want[sigma]
        assert sorted(got) == sorted([*want[sigma], "out.weight"])
        for name, array in want[sigma].items():
            assert np.array_equal(got[name], array), name
        assert np.array_equal(got["out.weight"], want[sigma]["emb.weight"])
    assert _files(out.parent) == ["ema-0.07.safetensors", "ema-0.09.safetensors"]


def test_the_cli_at_a_step_between_snapshots_names_the_nearest_and_writes_nothing(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: ``at`` must be a snapshot step; others are refused (exit 2) naming the nearest
    snapshot steps, and nothing is written (not even the new folder)."""
    out = tmp_path / "new" / "ema.safetensors"
    argv = [str(run.folder), "--sigma-rel", "0.07", "--at", "130", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "at=130" in err and "[120, 140]" in err
    assert "Traceback" not in err
    assert not (tmp_path / "new").exists()


def test_the_cli_as_a_module_prints_progress_on_stderr(run: Run, tmp_path: Path) -> None:
    """README: ``python -m ema_core.posthoc`` writes ``--out`` for one sigma_rel with a
    progress line on stderr; stdout says what was written."""
    out = tmp_path / "ema.safetensors"
    argv = [sys.executable, "-m", "ema_core.posthoc", str(run.folder), "--sigma-rel", "0.07"]
    done = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "snapshot " in done.stderr and f"(step {STEPS}," in done.stderr
    assert str(out) in done.stdout
    got = safetensors_numpy.load_file(str(out))
    want = reconstruct(run.folder, TARGET)
    assert all(np.array_equal(got[n], want[n]) for n in want)


def test_the_cli_output_is_not_taken_for_a_snapshot(run: Run, snaps: Path) -> None:
    """README: the CLI's files are not snapshots; written beside the snapshots under another
    name, the folder still lists only the snapshots and reconstructs the same."""
    before = reconstruct(snaps, TARGET)
    assert main([str(snaps), "--sigma-rel", "0.07", "--out", str(snaps / "ema.safetensors")]) == 0
    assert len(list_snapshots(snaps)) == 2 * STEPS // EVERY
    after = reconstruct(snaps, TARGET)
    assert all(np.array_equal(before[n], after[n]) for n in before)


def test_a_resumed_run_rewriting_the_last_steps_replaces_its_files(run: Run, snaps: Path) -> None:
    """A run resumed from step 160 that writes steps 180 and 200 again replaces those files
    (one file per step and sigma_rel): no duplicate, and the listing keeps one per pair."""
    model = Net()
    model.load_state_dict(run.at_160["model"])
    bank = EMABank(model, sigma_rels=SIGMAS, snapshot_every=EVERY, snapshot_dir=snaps)
    bank.load_state_dict(run.at_160["bank"])
    old = (snaps / "phema-0000000200-0.1.safetensors").read_bytes()
    _train(model, range(161, STEPS + 1), bank.update, seed=1)
    found = list_snapshots(snaps)
    assert [(i.step, i.sigma_rel) for i in found] == [
        (t, s) for t in range(EVERY, STEPS + 1, EVERY) for s in SIGMAS
    ]
    assert (snaps / "phema-0000000200-0.1.safetensors").read_bytes() != old
    rebuilt = reconstruct(snaps, 0.10)
    for name, want in bank[1].average.items():
        assert np.array_equal(rebuilt[name], want.numpy()), name


def test_a_truncated_snapshot_is_named_and_nothing_is_written(
    snaps: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A snapshot file cut short (a copy of a prefix of a real one, as a crash outside the
    atomic writer leaves) is a ValueError naming it, and the CLI exits 2 writing nothing."""
    victim = sorted(snaps.iterdir())[-1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=re.escape(victim.name)):
        reconstruct(snaps, TARGET)
    out = tmp_path / "out" / "ema.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main([str(snaps), "--sigma-rel", "0.07", "--out", str(out)])
    assert exit_info.value.code == 2
    assert victim.name in capsys.readouterr().err
    assert not out.parent.exists()


def test_a_truncated_snapshot_after_at_is_still_refused(snaps: Path) -> None:
    """Choice pinned: ``list_snapshots`` reads every header, so a cut snapshot after ``at`` is
    refused too (its header is cut), rather than skipped."""
    victim = sorted(snaps.iterdir())[-1]
    victim.write_bytes(victim.read_bytes()[:6])
    with pytest.raises(ValueError, match=re.escape(victim.name)):
        reconstruct(snaps, TARGET, at=100)


def test_a_snapshot_whose_tensor_data_is_cut_is_refused_before_any_output(
    snaps: Path, tmp_path: Path
) -> None:
    """A snapshot whose header is whole but whose data is cut (a copy stopped short) is a
    ValueError naming the file, from ``reconstruct`` (not a numpy error, not zeros)."""
    victim = sorted(snaps.iterdir())[-1]
    data = victim.read_bytes()
    victim.write_bytes(data[:-16])
    with pytest.raises(ValueError, match=re.escape(victim.name)):
        reconstruct(snaps, TARGET)


def test_snapshots_of_a_different_param_set_are_refused_by_name(run: Run, snaps: Path) -> None:
    """README: snapshots of one directory must agree on the array names and shapes; a model
    with one more layer snapshotting into the same folder is a ValueError naming both."""
    model = Net(extra=True)
    with torch.no_grad():
        save_snapshot(snaps, dict(model.named_parameters()), step=220, sigma_rel=0.05)
    with pytest.raises(ValueError, match="hold different arrays"):
        reconstruct(snaps, TARGET)
    with pytest.raises(ValueError, match=r"extra\.weight"):
        list_snapshots(snaps)


def test_save_snapshot_of_torch_tensors_reconstructs_like_the_bank(
    run: Run, tmp_path: Path
) -> None:
    """README: ``save_snapshot`` takes torch tensors; snapshots of the bank's averages written
    by hand reconstruct to the same parameters and counter as the bank's own files (a plain
    dict records no ``"copy"`` policy, so its BatchNorm statistics are averaged instead)."""
    hand = tmp_path / "hand"
    for info in list_snapshots(run.folder):
        arrays = {
            n: torch.from_numpy(a) for n, a in safetensors_numpy.load_file(str(info.path)).items()
        }
        save_snapshot(hand, arrays, step=info.step, sigma_rel=info.sigma_rel)
    want = reconstruct(run.folder, TARGET)
    got = reconstruct(hand, TARGET)
    assert sorted(got) == sorted(want)
    for name in want:
        if "running" not in name:
            assert np.array_equal(got[name], want[name]), name


@pytest.mark.parametrize("bad", [0.0, -0.05, 12**-0.5, 0.3, float("nan"), float("inf")])
def test_a_bad_sigma_rel_is_a_value_error_naming_it_and_nothing_is_written(
    run: Run, tmp_path: Path, bad: float, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: a sigma_rel must be in (0, 12**-0.5): 0, negative, above the maximum and NaN
    are a ValueError naming ``sigma_rel``; the CLI exits 2 and writes nothing."""
    with pytest.raises(ValueError, match="sigma_rel"):
        reconstruct(run.folder, bad)
    with pytest.raises(ValueError, match=r"sigma_rel\[1\]"):
        reconstruct(run.folder, [0.07, bad])
    out = tmp_path / "out" / "ema.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main([str(run.folder), "--sigma-rel", "0.07", repr(bad), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "sigma_rel" in capsys.readouterr().err
    assert not out.parent.exists()
    before = _files(run.folder)
    with pytest.raises(ValueError, match="sigma_rel"):
        save_snapshot(run.folder, {"w": torch.ones(2)}, step=220, sigma_rel=bad)
    assert _files(run.folder) == before


def test_progress_is_called_once_per_snapshot_read_up_to_at(run: Run) -> None:
    """README: snapshots after ``at`` are not opened; ``progress`` gets ``(done, total, info)``
    after each snapshot read, ``done`` counting up to ``total``."""
    calls: list[tuple[int, int, int]] = []
    reconstruct(run.folder, TARGET, at=100, progress=lambda d, t, i: calls.append((d, t, i.step)))
    assert [d for d, _, _ in calls] == list(range(1, len(calls) + 1))
    assert {t for _, t, _ in calls} == {len(calls)}
    assert 0 < len(calls) <= 2 * 100 // EVERY
    assert max(step for _, _, step in calls) == 100


def test_the_cli_float64_gives_float64_averages_and_keeps_the_counter(
    run: Run, tmp_path: Path
) -> None:
    """README: ``--dtype float64`` accumulates in float64; integer arrays are kept as they are
    (``num_batches_tracked`` stays int64) and equal ``reconstruct(..., dtype="float64")``."""
    out = tmp_path / "ema.safetensors"
    assert (
        main([str(run.folder), "--sigma-rel", "0.07", "--dtype", "float64", "--out", str(out)]) == 0
    )
    got = safetensors_numpy.load_file(str(out))
    want = reconstruct(run.folder, TARGET, dtype="float64")
    assert got["norm.num_batches_tracked"].dtype == np.int64
    assert got["emb.weight"].dtype == np.float64
    assert all(np.array_equal(got[n], want[n]) for n in want)


@pytest.mark.parametrize("at", [0, -20, STEPS + EVERY])
def test_at_outside_the_snapshots_is_refused_naming_the_nearest(run: Run, at: int) -> None:
    """README: ``at`` must be a snapshot step; before the first or after the last is refused
    naming the nearest snapshot step."""
    nearest = EVERY if at < EVERY else STEPS
    with pytest.raises(ValueError, match=rf"at={at} is not a snapshot step.*\[{nearest}\]"):
        reconstruct(run.folder, TARGET, at=at)


def test_a_second_copy_of_a_snapshot_under_an_unpadded_name_is_a_duplicate(snaps: Path) -> None:
    """README: one file per (step, sigma_rel); a copy of one under another name that still
    reads as a snapshot (step not zero-padded) is refused naming both files."""
    first = snaps / "phema-0000000200-0.05.safetensors"
    shutil.copyfile(first, snaps / "phema-200-0.05.safetensors")
    with pytest.raises(ValueError, match=r"both step 200, sigma_rel 0\.05"):
        reconstruct(snaps, TARGET)


def test_a_resumed_run_with_another_interval_is_refused_naming_both(run: Run, snaps: Path) -> None:
    """README: snapshots of one directory must share ``interval``; a run resumed with
    ``interval=4`` writing into the same folder makes ``reconstruct`` name both files."""
    model = Net()
    bank = EMABank(model, sigma_rels=SIGMAS, interval=4, snapshot_every=40, snapshot_dir=snaps)
    _train(model, range(1, 81), bank.update)
    with pytest.raises(ValueError, match=r"interval 1\b.*has 4\b"):
        reconstruct(snaps, TARGET)

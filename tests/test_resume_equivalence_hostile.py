"""Resume equivalence: interrupted after N steps, saved, reloaded, continued for M steps.

Every route a user takes (the torch ``EMA`` and ``EMABank`` state dicts through ``torch.save``,
``ema_core.checkpoint`` files of an ``EMA`` and of an ``EMAState``, ``ema_core.jax.state_dict``
through ``np.savez``) must give, bit for bit, the uninterrupted N + M run: the shadows, the
counter, the bias-correction weight and the average read from them. The resumed EMA is always a
new object over a new model, as after a restart.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import Config, presets, schedules
from ema_core.checkpoint import load, save

torch = pytest.importorskip("torch")

from ema_core.torch import EMA, EMABank  # noqa: E402

TOTAL = 12  # N + M optimizer steps

# every preset, with the peer's defaults or typical arguments that reach their boundaries
# (warm-up starts, update_after_step, intervals) within TOTAL steps
PRESETS: dict[str, Callable[[], Config]] = {
    "timm_default": presets.timm,
    "timm_warmup_after": lambda: presets.timm(0.9, update_after_step=4, use_warmup=True),
    "torch_ema": lambda: presets.torch_ema(0.9),
    "torch_ema_no_count": lambda: presets.torch_ema(0.9, use_num_updates=False),
    "ema_pytorch": lambda: presets.ema_pytorch(0.9, update_after_step=4, update_every=3),
    "diffusers": lambda: presets.diffusers(0.9, update_after_step=4, use_ema_warmup=True),
    "swa_utils": lambda: presets.swa_utils(0.9, use_buffers=True),
    "optax_debias": lambda: presets.optax(0.9),
    "keras": presets.keras,
    "ema_pytorch_karras": lambda: presets.ema_pytorch_karras(sigma_rel=0.05, update_every=3),
    "edm2": lambda: presets.edm2(0.05),
    "edm2_traditional": lambda: presets.edm2(halflife_Mimg=1e-5, batch_size=2),
    "torchtitan": lambda: presets.torchtitan(start_step=4, update_every_n_steps=3),
    "tensorflow_debias": lambda: presets.tensorflow(0.9, num_updates=0, zero_debias=True),
    "allennlp": lambda: presets.allennlp(0.9, num_updates=0),
    "paddle": lambda: presets.paddle(0.9, thres_steps=0),
    "mmedit": lambda: presets.mmedit(0.1, interval=3, update_buffers=True),
}

# interruptions: before the first update, after it, on both sides of the 4-step boundaries
# above, and at steps that are not a multiple of the 3-step intervals
INTERRUPTS = (0, 1, 4, 5)


def _model(seed: int, dtype: torch.dtype | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    return model if dtype is None else model.to(dtype)


def _optimizer_step(model: torch.nn.Module, step: int) -> None:
    """A stand-in for optimizer step ``step`` that depends only on the step: params and the
    BatchNorm statistics move, ``num_batches_tracked`` counts."""
    gen = torch.Generator().manual_seed(1000 + step)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=gen).to(tensor.dtype))
            else:
                tensor.add_(1)


def _assert_same_ema(resumed: EMA, straight: EMA) -> None:
    """Shadows, counter, weight and averages equal bit for bit (dtypes included)."""
    got, want = resumed.state_dict(), straight.state_dict()
    assert int(got["step"]) == int(want["step"])
    assert got["step"].dtype == want["step"].dtype
    assert float(got["weight"]) == float(want["weight"])
    assert got["config"] == want["config"]
    assert list(got["shadow"]) == list(want["shadow"])
    for name, shadow in want["shadow"].items():
        assert got["shadow"][name].dtype == shadow.dtype, name
        assert torch.equal(got["shadow"][name], shadow), name
    if int(want["step"]) > 0 or straight.config.init != "zeros":
        for name, average in straight.average.items():
            assert torch.equal(resumed.average[name], average), name


def _through_torch_save(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _torch_run(
    config: Config,
    interrupt: int,
    route: Callable[[EMA, Callable[[], EMA]], EMA],
    *,
    steps: Callable[[int], int | None] = lambda t: None,
    model_dtype: torch.dtype | None = None,
    total: int = TOTAL,
    **options: Any,
) -> tuple[EMA, EMA]:
    """The straight run and the resumed one, both after ``total`` steps; ``route`` saves the first
    EMA at ``interrupt`` and returns the fresh EMA (built by the callable it is given) loaded."""
    model = _model(0, model_dtype)
    straight = EMA(model, config=config, **options)
    for t in range(1, interrupt + 1):
        _optimizer_step(model, t)
        straight.update(steps(t))
    weights = _through_torch_save(model.state_dict())
    fresh_model = _model(1, model_dtype)  # other random weights until the checkpoint is loaded

    def fresh() -> EMA:
        return EMA(fresh_model, config=config, **options)

    resumed = route(straight, fresh)
    fresh_model.load_state_dict(weights)  # after the EMA: it must not be re-initialised
    for t in range(interrupt + 1, total + 1):
        _optimizer_step(model, t)
        _optimizer_step(fresh_model, t)
        straight.update(steps(t))
        resumed.update(steps(t))
    return resumed, straight


def _by_state_dict(old: EMA, fresh: Callable[[], EMA]) -> EMA:
    new = fresh()
    new.load_state_dict(_through_torch_save(old.state_dict()))
    return new


@pytest.mark.parametrize("interrupt", INTERRUPTS)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_resumes_bit_for_bit_through_torch_save(preset: str, interrupt: int) -> None:
    """An ``EMA`` under any preset, saved with ``state_dict()`` + ``torch.save`` at any step
    (0, 1, either side of a warm-up start, inside an interval) and loaded into a new ``EMA``
    over a new model continues exactly as the uninterrupted run."""
    resumed, straight = _torch_run(PRESETS[preset](), interrupt, _by_state_dict)
    _assert_same_ema(resumed, straight)


@pytest.mark.parametrize("interrupt", INTERRUPTS)
@pytest.mark.parametrize("preset", ["ema_pytorch", "optax_debias", "mmedit", "torchtitan"])
def test_presets_resume_through_a_checkpoint_file(
    tmp_path: Path, preset: str, interrupt: int
) -> None:
    """``checkpoint.save(path, ema)`` then ``checkpoint.load(path, new_ema)`` resumes an
    ``EMA`` exactly, zero-started and interval presets included."""

    def by_file(old: EMA, fresh: Callable[[], EMA]) -> EMA:
        path = save(tmp_path / "ema.safetensors", old)
        return load(path, fresh())

    resumed, straight = _torch_run(PRESETS[preset](), interrupt, by_file)
    _assert_same_ema(resumed, straight)


CONFIGS: dict[str, Callable[[], Config]] = {
    "warmup_zeros": lambda: Config(schedules.warmup(0.99), init="zeros"),
    "interval3_copy": lambda: Config(schedules.constant(0.8), init="copy", interval=3),
    "interval3_uncompensated": lambda: Config(0.8, interval=3, compensate=False),
    "every3": lambda: Config(schedules.every(schedules.num_updates(0.9), 3)),
    "power_zeros_power": lambda: Config(
        schedules.power_function(sigma_rel=0.1), init="zeros", correction="power"
    ),
    "half_life_freeze": lambda: Config(schedules.half_life(2), non_float="freeze"),
}


@pytest.mark.parametrize("interrupt", (0, 1, 2, 4, 5))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_configs_resume_with_explicit_steps(name: str, interrupt: int) -> None:
    """With the trainer's step passed to ``update(step)`` (every other optimizer step, so the
    EMA's count and the step differ), a resumed ``EMA`` continues exactly."""
    resumed, straight = _torch_run(
        CONFIGS[name](), interrupt, _by_state_dict, steps=lambda t: 2 * t, buffers="average"
    )
    _assert_same_ema(resumed, straight)


@pytest.mark.parametrize("interrupt", (0, 1, 4))
@pytest.mark.parametrize("dtype_option", [None, "same"])
def test_bf16_model_resumes_bit_for_bit(interrupt: int, dtype_option: str | None) -> None:
    """A bfloat16 model (float32 shadows by default, bf16 ones with ``dtype="same"``) resumes
    exactly, under a warm-up with a zero start whose average is read in float32."""
    config = Config(schedules.warmup(0.99), init="zeros")
    options = {} if dtype_option is None else {"dtype": dtype_option}
    resumed, straight = _torch_run(
        config, interrupt, _by_state_dict, model_dtype=torch.bfloat16, **options
    )
    _assert_same_ema(resumed, straight)
    want = torch.float32 if dtype_option is None else torch.bfloat16
    assert resumed.state_dict()["shadow"]["0.weight"].dtype == want


@pytest.mark.parametrize("interrupt", (0, 3))
def test_include_filter_resumes(interrupt: int) -> None:
    """An ``EMA`` of a subset of tensors (``include=``, buffers averaged) resumes exactly."""
    config = Config(schedules.warmup(0.9), buffers="average")
    resumed, straight = _torch_run(
        config, interrupt, _by_state_dict, include=["0.*", "1.running_*"]
    )
    assert straight.names == ("0.weight", "0.bias", "1.running_mean", "1.running_var")
    _assert_same_ema(resumed, straight)


@pytest.mark.parametrize("interrupt", (1, 5))
def test_load_into_an_ema_that_already_updated_overwrites_everything(interrupt: int) -> None:
    """``load_state_dict`` into an ``EMA`` that has taken more (and other) updates replaces
    its shadows, counter and weight entirely: the continuation is the saved run's."""
    config = Config(schedules.warmup(0.95), init="zeros", interval=2)

    def into_used(old: EMA, fresh: Callable[[], EMA]) -> EMA:
        new = fresh()
        for _ in range(1, 10):  # a different history: its own params, more steps
            new.update()
        assert new.step == 9
        new.load_state_dict(_through_torch_save(old.state_dict()))
        assert new.step == old.step
        return new

    resumed, straight = _torch_run(config, interrupt, into_used)
    _assert_same_ema(resumed, straight)


def test_load_into_the_same_ema_rewinds_it() -> None:
    """Saving at step 4, updating on, then loading the saved state into the same object
    rewinds it: the next updates repeat the run from step 4 exactly."""
    model = _model(0)
    averager = EMA(model, config=Config(schedules.warmup(0.9), init="zeros"))
    for t in range(1, 5):
        _optimizer_step(model, t)
        averager.update()
    saved = _through_torch_save(averager.state_dict())
    weights = _through_torch_save(model.state_dict())
    for t in range(5, 9):
        _optimizer_step(model, t)
        averager.update()
    first = _through_torch_save(averager.state_dict())
    model.load_state_dict(weights)
    averager.load_state_dict(saved)
    for t in range(5, 9):
        _optimizer_step(model, t)
        averager.update()
    again = averager.state_dict()
    assert int(again["step"]) == int(first["step"]) == 8
    assert float(again["weight"]) == float(first["weight"])
    for name, shadow in first["shadow"].items():
        assert torch.equal(again["shadow"][name], shadow), name


def test_resume_onto_moved_params_keeps_the_saved_average() -> None:
    """An EMA loaded over a model whose params the optimizer has moved since the save keeps
    the saved averages (no re-initialisation from the params), also under ``init="copy"``
    past its first update and ``init="zeros"``."""
    for config in (Config(0.9), Config(0.9, init="copy"), Config(0.9, init="zeros")):
        model = _model(0)
        averager = EMA(model, config=config)
        for t in range(1, 4):
            _optimizer_step(model, t)
            averager.update()
        saved = _through_torch_save(averager.state_dict())
        want = {n: a.clone() for n, a in averager.average.items()}
        moved = _model(0)
        moved.load_state_dict(model.state_dict())
        _optimizer_step(moved, 4)  # the optimizer stepped after the EMA was saved
        new = EMA(moved, config=config)
        new.load_state_dict(saved)
        for name, average in want.items():
            assert torch.equal(new.average[name], average), name
        new.update()
        averager_next = averager
        _optimizer_step(model, 4)
        averager_next.update()
        for name, average in averager_next.average.items():
            assert torch.equal(new.average[name], average), name


@pytest.mark.parametrize("interrupt", (0, 1, 4))
def test_bank_resumes_bit_for_bit(interrupt: int) -> None:
    """An ``EMABank`` (power-function EMAs, an interval of 3) saved with ``state_dict()`` and
    ``torch.save`` and loaded into another bank over a new model, one that has already taken
    updates of its own, continues exactly, every EMA."""
    model = _model(0)
    straight = EMABank(model, sigma_rels=(0.05, 0.2), interval=3)
    for t in range(1, interrupt + 1):
        _optimizer_step(model, t)
        straight.update()
    fresh_model = _model(1)
    resumed = EMABank(fresh_model, sigma_rels=(0.05, 0.2), interval=3)
    for _ in range(4):  # a bank that has updated (and built its fused plan) before the load
        resumed.update()
    resumed.load_state_dict(_through_torch_save(straight.state_dict()))
    fresh_model.load_state_dict(model.state_dict())
    for t in range(interrupt + 1, TOTAL + 1):
        _optimizer_step(model, t)
        _optimizer_step(fresh_model, t)
        straight.update()
        resumed.update()
    for got, want in zip(resumed, straight, strict=True):
        _assert_same_ema(got, want)


def _params_np(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {
        "w": rng.standard_normal((3, 4)),
        "h": rng.standard_normal(5).astype(np.float16),
        "count": np.asarray([step], dtype=np.int64),
    }


def _assert_same_state(got: ema.EMAState, want: ema.EMAState, config: Config) -> None:
    assert int(got.step) == int(want.step)
    assert np.asarray(got.step).dtype == np.asarray(want.step).dtype
    assert float(got.weight) == float(want.weight)
    for name in want.shadow:
        a, b = np.asarray(got.shadow[name]), np.asarray(want.shadow[name])
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    if int(want.step) > 0 or config.init != "zeros":
        got_avg, want_avg = ema.average(got, config), ema.average(want, config)
        for name in want_avg:
            assert np.array_equal(np.asarray(got_avg[name]), np.asarray(want_avg[name])), name


STATE_CONFIGS = {
    **CONFIGS,
    "optax": lambda: presets.optax(0.9),
    "ema_pytorch": lambda: presets.ema_pytorch(0.9, update_after_step=4, update_every=3),
    "torchtitan": lambda: presets.torchtitan(start_step=4, update_every_n_steps=3),
    "tensorflow": lambda: presets.tensorflow(0.9, num_updates=0, zero_debias=True),
}


@pytest.mark.parametrize("interrupt", (0, 1, 4, 5))
@pytest.mark.parametrize("name", sorted(STATE_CONFIGS))
def test_numpy_state_resumes_through_a_checkpoint_file(
    tmp_path: Path, name: str, interrupt: int
) -> None:
    """The functional API on numpy (float64, float16 and int64 leaves): an ``EMAState`` saved
    with ``checkpoint.save`` and loaded with ``like=init(other params)`` continues exactly."""
    config = STATE_CONFIGS[name]()
    straight = ema.init(_params_np(0), config)
    for t in range(1, interrupt + 1):
        straight = ema.update(straight, _params_np(t), config)
    path = save(tmp_path / "state.safetensors", straight, config)
    resumed = load(path, ema.init(_params_np(99), config), config=config)
    for t in range(interrupt + 1, TOTAL + 1):
        straight = ema.update(straight, _params_np(t), config)
        resumed = ema.update(resumed, _params_np(t), config)
    _assert_same_state(resumed, straight, config)


@pytest.mark.parametrize("interrupt", (0, 2, 5))
def test_torch_state_of_bf16_params_resumes_through_a_checkpoint_file(
    tmp_path: Path, interrupt: int
) -> None:
    """The functional API on bfloat16 torch params (float32 shadows, zero start): a saved and
    loaded ``EMAState`` continues exactly."""
    config = Config(schedules.warmup(0.99), init="zeros", interval=2)

    def params(step: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(step)
        return {"w": torch.randn(4, 3, generator=gen).to(torch.bfloat16)}

    straight = ema.init(params(0), config)
    for t in range(1, interrupt + 1):
        straight = ema.update(straight, params(t), config)
    path = save(tmp_path / "state.safetensors", straight, config)
    resumed = load(path, ema.init(params(99), config), config=config)
    for t in range(interrupt + 1, TOTAL + 1):
        straight = ema.update(straight, params(t), config)
        resumed = ema.update(resumed, params(t), config)
    assert resumed.shadow["w"].dtype == torch.float32
    assert int(resumed.step) == int(straight.step)
    assert float(resumed.weight) == float(straight.weight)
    assert torch.equal(resumed.shadow["w"], straight.shadow["w"])
    assert torch.equal(ema.average(resumed, config)["w"], ema.average(straight, config)["w"])


def test_stateless_ema_update_resumes_from_saved_shadows(tmp_path: Path) -> None:
    """``ema_update`` keeps no state: shadows saved with ``np.savez`` and the step taken up
    again give the uninterrupted run, also past an interval's skipped steps."""
    config = Config(schedules.warmup(0.9), interval=3)
    straight = {k: v.copy() for k, v in _params_np(0).items()}
    for t in range(1, 6):
        straight = ema.ema_update(straight, _params_np(t), t, config=config)
    np.savez(tmp_path / "shadow.npz", **straight)
    with np.load(tmp_path / "shadow.npz") as arrays:
        resumed = {k: arrays[k].copy() for k in arrays.files}
    for t in range(6, TOTAL + 1):
        straight = ema.ema_update(straight, _params_np(t), t, config=config)
        resumed = ema.ema_update(resumed, _params_np(t), t, config=config)
    for name, shadow in straight.items():
        assert np.array_equal(resumed[name], shadow), name


_JAX_UPDATES: dict[str, Any] = {}
JAX_CONFIGS = {
    "warmup_zeros": CONFIGS["warmup_zeros"],
    "interval3_copy": CONFIGS["interval3_copy"],
    "every3": CONFIGS["every3"],
    "ema_pytorch": STATE_CONFIGS["ema_pytorch"],
    "optax": STATE_CONFIGS["optax"],
}


@pytest.mark.parametrize("interrupt", (0, 4))
@pytest.mark.parametrize("name", sorted(JAX_CONFIGS))
def test_jax_make_update_resumes_through_npz(tmp_path: Path, name: str, interrupt: int) -> None:
    """JAX: ``make_update`` states saved with ``state_dict`` + ``np.savez`` and restored with
    ``load_state_dict(arrays, init(other params))`` continue exactly under the compiled update."""
    jnp = pytest.importorskip("jax.numpy")
    from ema_core.jax import load_state_dict, make_update, state_dict

    config = JAX_CONFIGS[name]()
    if name not in _JAX_UPDATES:  # one compile per config for all its interruptions
        _JAX_UPDATES[name] = make_update(config)
    step_fn = _JAX_UPDATES[name]

    def params(step: int) -> dict[str, Any]:
        rng = np.random.default_rng(step)
        return {
            "w": jnp.asarray(rng.standard_normal((3, 4)), dtype=jnp.float32),
            "b": jnp.asarray(rng.standard_normal(2), dtype=jnp.bfloat16),
        }

    straight = ema.init(params(0), config)
    for t in range(1, interrupt + 1):
        straight = step_fn(straight, params(t))
    np.savez(tmp_path / "ema.npz", **state_dict(straight))
    with np.load(tmp_path / "ema.npz") as arrays:
        resumed = load_state_dict(dict(arrays), ema.init(params(99), config))
    for t in range(interrupt + 1, TOTAL + 1):
        straight = step_fn(straight, params(t))
        resumed = step_fn(resumed, params(t))
    _assert_same_state(resumed, straight, config)


@pytest.mark.parametrize("interrupt", (0, 2, 4))
@pytest.mark.parametrize("counter", [torch.int64, torch.int32])
def test_cpu_tensor_steps_resume(interrupt: int, counter: torch.dtype) -> None:
    """A trainer that passes its step as a 0-d CPU tensor (int64 or int32, as a compiled
    training loop keeps it) resumes exactly; the saved counter keeps its dtype."""
    config = Config(schedules.warmup(0.9), init="zeros", interval=3)
    resumed, straight = _torch_run(
        config, interrupt, _by_state_dict, steps=lambda t: torch.tensor(t, dtype=counter)
    )
    _assert_same_ema(resumed, straight)


@pytest.mark.parametrize("copy", [True, False])
def test_state_dict_taken_inside_swap_resumes(copy: bool) -> None:
    """A checkpoint written while the averages are swapped in for evaluation (a trainer that
    saves at the end of validation) holds the same EMA as one written outside the block."""
    config = Config(schedules.warmup(0.9))

    def inside_swap(old: EMA, fresh: Callable[[], EMA]) -> EMA:
        outside = _through_torch_save(old.state_dict())
        with old.swap(copy=copy):
            inside = _through_torch_save(old.state_dict())
        for name, shadow in outside["shadow"].items():
            assert torch.equal(inside["shadow"][name], shadow), name
        new = fresh()
        new.load_state_dict(inside)
        return new

    resumed, straight = _torch_run(config, 5, inside_swap)
    _assert_same_ema(resumed, straight)


def test_in_memory_hand_off_shares_no_shadow() -> None:
    """``new.load_state_dict(old.state_dict())`` without ``torch.save`` copies: both EMAs then
    update their own shadows and stay equal, and neither shadow is the other's memory."""
    config = Config(schedules.warmup(0.9), init="zeros")

    def in_memory(old: EMA, fresh: Callable[[], EMA]) -> EMA:
        new = fresh()
        new.load_state_dict(old.state_dict())
        for a, b in zip(
            new.state_dict()["shadow"].values(), old.state_dict()["shadow"].values(), strict=True
        ):
            assert a.data_ptr() != b.data_ptr()
        return new

    resumed, straight = _torch_run(config, 4, in_memory)
    _assert_same_ema(resumed, straight)


def test_loading_its_own_state_dict_changes_nothing() -> None:
    """``ema.load_state_dict(ema.state_dict())`` (the shadows are the EMA's own tensors) is a
    no-op: the run continues as if it had not been called."""
    config = Config(schedules.warmup(0.9), init="zeros")

    def into_itself(old: EMA, fresh: Callable[[], EMA]) -> EMA:
        twin = fresh()
        twin.load_state_dict(_through_torch_save(old.state_dict()))
        twin.load_state_dict(twin.state_dict())
        return twin

    resumed, straight = _torch_run(config, 4, into_itself)
    _assert_same_ema(resumed, straight)


@pytest.mark.parametrize("interrupt", (0, 3))
def test_bf16_shadows_resume_through_a_checkpoint_file(tmp_path: Path, interrupt: int) -> None:
    """A bf16 model with bf16 shadows (``dtype="same"``) and one with float32 shadows resume
    exactly through ``checkpoint.save`` / ``load`` (the file keeps each dtype)."""
    for options in ({}, {"dtype": "same"}):

        def by_file(old: EMA, fresh: Callable[[], EMA]) -> EMA:
            return load(save(tmp_path / "ema.safetensors", old), fresh())

        config = Config(schedules.warmup(0.95), interval=2)
        resumed, straight = _torch_run(
            config, interrupt, by_file, model_dtype=torch.bfloat16, **options
        )
        _assert_same_ema(resumed, straight)


def test_bank_snapshots_after_a_resume_are_the_straight_runs(tmp_path: Path) -> None:
    """An ``EMABank`` with ``snapshot_every`` resumed mid-way (not on a snapshot step) writes
    the same snapshot files, with the same contents, at the same steps as the straight run."""
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    options: dict[str, Any] = {"sigma_rels": (0.05, 0.2), "snapshot_every": 4}
    model = _model(0)
    straight = EMABank(model, snapshot_dir=straight_dir, **options)
    for t in range(1, 6):
        _optimizer_step(model, t)
        straight.update()
    saved = _through_torch_save(straight.state_dict())
    weights = _through_torch_save(model.state_dict())
    before = {p.name for p in straight_dir.iterdir()}
    fresh_model = _model(1)
    resumed = EMABank(fresh_model, snapshot_dir=resumed_dir, **options)
    resumed.load_state_dict(saved)
    fresh_model.load_state_dict(weights)
    for t in range(6, TOTAL + 1):
        _optimizer_step(model, t)
        _optimizer_step(fresh_model, t)
        straight.update()
        resumed.update()
    after = {p.name for p in straight_dir.iterdir()} - before
    assert after and after == {p.name for p in resumed_dir.iterdir()}
    for name in after:
        assert (resumed_dir / name).read_bytes() == (straight_dir / name).read_bytes(), name


def test_jax_bank_snapshots_after_a_resume_are_the_straight_runs(tmp_path: Path) -> None:
    """A JAX bank (``make_bank_update`` with ``snapshot_every``) given states restored through
    ``state_dict`` / ``load_state_dict`` counts on from the restored steps: its snapshots after
    the resume are the straight run's, file for file."""
    jnp = pytest.importorskip("jax.numpy")
    from ema_core.jax import load_state_dict, make_bank_update, state_dict

    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"

    def params(step: int) -> dict[str, Any]:
        return {"w": jnp.asarray(np.random.default_rng(step).standard_normal(6), jnp.float32)}

    bank = make_bank_update(sigma_rels=(0.05, 0.2), snapshot_every=4, snapshot_dir=straight_dir)
    states = bank.init(params(0))
    for t in range(1, 6):
        states = bank(states, params(t))
    saved = [state_dict(s) for s in states]
    before = {p.name for p in straight_dir.iterdir()}
    other = make_bank_update(sigma_rels=(0.05, 0.2), snapshot_every=4, snapshot_dir=resumed_dir)
    fresh = other.init(params(99))
    for _ in range(2):  # this bank has counted steps of its own before the resume
        fresh = other(fresh, params(99))
    resumed = tuple(load_state_dict(a, like) for a, like in zip(saved, fresh, strict=True))
    for t in range(6, TOTAL + 1):
        states = bank(states, params(t))
        resumed = other(resumed, params(t))
    after = {p.name for p in straight_dir.iterdir()} - before
    got = {p.name for p in resumed_dir.iterdir()}
    assert after and after <= got
    for name in after:
        assert (resumed_dir / name).read_bytes() == (straight_dir / name).read_bytes(), name
    assert got - after == set()  # the two steps before the resume wrote nothing (not due)


def _delta(step: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The change optimizer step ``step`` makes to the parameter ``name``."""
    seed = 7 * step + sum(map(ord, name))
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _compat_params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense/kernel": rng.standard_normal((3, 2)).astype(np.float32),
        "dense/bias": np.zeros(2, np.float32),
    }


def _compat_run(
    build: Callable[[dict[str, np.ndarray]], Any],
    step: Callable[[Any, dict[str, np.ndarray], int], None],
    interrupt: int,
) -> tuple[Any, Any]:
    """A compat object run straight for TOTAL steps, and one built over other arrays, loaded
    with the first one's ``state_dict()`` (deep-copied, as ``torch.save`` would) at
    ``interrupt`` and continued with the same parameter values."""
    import copy

    params = _compat_params(0)
    straight = build(params)
    for t in range(1, interrupt + 1):
        for name, value in params.items():
            np.add(value, _delta(t, name, value.shape), out=value)
        step(straight, params, t)
    saved = copy.deepcopy(straight.state_dict())
    fresh = _compat_params(1)
    resumed = build(fresh)
    resumed.load_state_dict(saved)
    for name, value in fresh.items():
        value[...] = params[name]  # the model's own checkpoint, loaded after the EMA's
    for t in range(interrupt + 1, TOTAL + 1):
        for arrays in (params, fresh):
            for name, value in arrays.items():
                np.add(value, _delta(t, name, value.shape), out=value)
        step(straight, params, t)
        step(resumed, fresh, t)
    return resumed, straight


def _assert_same_arrays(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert np.asarray(got[name]).dtype == np.asarray(value).dtype, name
        assert np.array_equal(np.asarray(got[name]), np.asarray(value)), name


@pytest.mark.parametrize("interrupt", (0, 1, 4))
@pytest.mark.parametrize("thres_steps", [None, 3])
def test_compat_paddle_resumes(interrupt: int, thres_steps: int | None) -> None:
    """``compat.paddle``: ``state_dict()`` / ``load_state_dict`` resume the zero-started EMA
    and its bias-corrected average exactly."""
    from ema_core.compat.paddle import ExponentialMovingAverage

    resumed, straight = _compat_run(
        lambda p: ExponentialMovingAverage(list(p.items()), decay=0.9, thres_steps=thres_steps),
        lambda e, p, t: e.update(),
        interrupt,
    )
    assert resumed.state_dict()["step"] == straight.state_dict()["step"] == TOTAL
    _assert_same_arrays(resumed.state_dict()["ema"], straight.state_dict()["ema"])
    _assert_same_arrays(resumed.average(), straight.average())


@pytest.mark.parametrize("interrupt", (0, 1, 4))
@pytest.mark.parametrize("zero_debias", [False, True])
def test_compat_tensorflow_resumes(interrupt: int, zero_debias: bool) -> None:
    """``compat.tensorflow``: ``state_dict()`` / ``load_state_dict`` resume the shadows (and,
    with ``zero_debias``, the biased values and apply counts) exactly, also when loaded before
    the first ``apply`` of the new object, with ``num_updates`` a fixed counter."""
    from ema_core.compat.tensorflow import ExponentialMovingAverage

    resumed, straight = _compat_run(
        lambda p: ExponentialMovingAverage(0.9, num_updates=2, zero_debias=zero_debias),
        lambda e, p, t: e.apply(list(p.items())),
        interrupt,
    )
    got, want = resumed.state_dict(), straight.state_dict()
    _assert_same_arrays(got["shadows"], want["shadows"])
    _assert_same_arrays(got["biased"], want["biased"])
    assert got["local_steps"] == want["local_steps"]
    for name in want["shadows"]:
        assert np.array_equal(resumed.average(name), straight.average(name)), name


@pytest.mark.parametrize("interrupt", (0, 1, 4))
def test_compat_allennlp_resumes(interrupt: int) -> None:
    """``compat.allennlp`` with the trainer's ``num_updates``: ``state_dict()`` /
    ``load_state_dict`` resume the shadows exactly."""
    from ema_core.compat.allennlp import ExponentialMovingAverage

    resumed, straight = _compat_run(
        lambda p: ExponentialMovingAverage(list(p.items()), decay=0.9),
        lambda e, p, t: e.apply(num_updates=t),
        interrupt,
    )
    _assert_same_arrays(resumed.state_dict()["shadows"], straight.state_dict()["shadows"])


@pytest.mark.parametrize("interrupt", (0, 1, 4, 5))
@pytest.mark.parametrize("update_buffers", [False, True])
def test_compat_mmedit_resumes_through_torch_save(interrupt: int, update_buffers: bool) -> None:
    """``compat.mmedit`` (an ``nn.Module``): its ``state_dict()`` through ``torch.save``,
    loaded into a new one over a new model, continues exactly, off the interval too."""
    from ema_core.compat.mmedit import ExponentialMovingAverage

    model = _model(0)
    straight = ExponentialMovingAverage(model, 0.1, interval=3, update_buffers=update_buffers)
    for t in range(1, interrupt + 1):
        _optimizer_step(model, t)
        straight.update_parameters(model)
    fresh_model = _model(1)
    resumed = ExponentialMovingAverage(fresh_model, 0.1, interval=3, update_buffers=update_buffers)
    resumed.load_state_dict(_through_torch_save(straight.state_dict()))
    fresh_model.load_state_dict(model.state_dict())
    for t in range(interrupt + 1, TOTAL + 1):
        _optimizer_step(model, t)
        _optimizer_step(fresh_model, t)
        straight.update_parameters(model)
        resumed.update_parameters(fresh_model)
    want = straight.state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, want[name]), name


@pytest.mark.parametrize("model_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("kind", ["ema", "bank"])
def test_pickled_with_its_model_resumes(model_dtype: torch.dtype | None, kind: str) -> None:
    """``torch.save({"model": model, "ema": ema})`` (the README's way to pickle an EMA) loads
    as a pair whose EMA tracks the loaded model and continues exactly, on the host engine's
    bf16 path too."""
    model = _model(0, model_dtype)
    config = Config(schedules.warmup(0.9), init="zeros", interval=2)
    averager = (
        EMA(model, config=config) if kind == "ema" else EMABank(model, sigma_rels=(0.05, 0.2))
    )
    for t in range(1, 4):
        _optimizer_step(model, t)
        averager.update()
    buffer = io.BytesIO()
    torch.save({"model": model, "ema": averager}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for t in range(4, TOTAL + 1):
        _optimizer_step(model, t)
        _optimizer_step(loaded["model"], t)
        averager.update()
        loaded["ema"].update()
    pairs = (
        [(loaded["ema"], averager)] if kind == "ema" else zip(loaded["ema"], averager, strict=True)
    )
    for got, want in pairs:
        _assert_same_ema(got, want)


def test_a_saturating_tensor_counter_still_saturates_after_a_resume() -> None:
    """An ``EMA`` stepped with a uint8 CPU tensor keeps a uint8 counter, which stops at 255
    (README "Choices": an array step counter stops at its dtype's largest value). Saved at
    250 and resumed, the counted updates that follow must still stop at 255, as in the
    uninterrupted run: the saved counter is "saved as it is", and must load as it is."""
    config = Config(schedules.warmup(0.999))
    resumed, straight = _torch_run(
        config,
        250,
        _by_state_dict,
        steps=lambda t: torch.tensor(t, dtype=torch.uint8) if t <= 250 else None,
        total=262,
    )
    _assert_same_ema(resumed, straight)

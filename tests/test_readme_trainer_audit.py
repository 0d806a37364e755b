"""README "In your trainer" (Lightning, Keras 3, accelerate, flax nnx): promises no other test
pins. Lightning runs in-process on tiny models (``tests._lightning_helpers``); Keras only where
it is cheap (a signature read, with the jax backend in-process, skipped under another backend);
flax nnx with a 3-in/1-out ``nnx.Linear``.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# -- Lightning -------------------------------------------------------------------------------

_HAS_LIGHTNING = (
    importlib.util.find_spec("torch") is not None
    and importlib.util.find_spec("lightning") is not None
)
needs_lightning = pytest.mark.skipif(not _HAS_LIGHTNING, reason="torch and lightning needed")

if _HAS_LIGHTNING:
    import torch

    from ema_core.integrations.lightning import EMACallback
    from ema_core.torch import EMA
    from tests._lightning_helpers import (
        WARNINGS,
        Net,
        Recorder,
        assert_same,
        hand_run,
        loader,
        quiet,  # noqa: F401 (autouse fixture)
        trainer,
    )

    pytestmark = WARNINGS


@needs_lightning
def test_lightning_signature_is_the_one_the_readme_gives() -> None:
    # "EMACallback(config=None, *, decay=None, schedule=None, swap=("validate", "test",
    # "predict"), on_fit_end="keep-live", **ema_kwargs)"
    params = inspect.signature(EMACallback).parameters
    assert list(params) == ["config", "decay", "schedule", "swap", "on_fit_end", "ema_kwargs"]
    kinds = [p.kind for p in params.values()]
    assert kinds == [
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        *[inspect.Parameter.KEYWORD_ONLY] * 4,
        inspect.Parameter.VAR_KEYWORD,
    ]
    defaults = {n: p.default for n, p in params.items() if n != "ema_kwargs"}
    assert defaults == {
        "config": None,
        "decay": None,
        "schedule": None,
        "swap": ("validate", "test", "predict"),
        "on_fit_end": "keep-live",
    }
    # the default swap really is every stage
    assert EMACallback()._args.swap == {"validate", "test", "predict"}


@needs_lightning
@pytest.mark.parametrize("device", ["meta", "cuda:7"])
def test_a_device_the_ema_refuses_is_refused_when_the_callback_is_built(device: str) -> None:
    # "`ema_kwargs` are the `EMA` options (`dtype`, `device`, ...). Every argument is checked
    # when the callback is built."
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that CUDA device")
    with pytest.raises(ValueError, match="device"):
        EMA(torch.nn.Linear(2, 1), device=device)  # the EMA refuses it ...
    with pytest.raises(ValueError, match="device"):
        EMACallback(decay=0.9, device=device)  # ... and so must the callback, when built


def _first(name: str) -> bool:
    return name.startswith("layer.weight")


def _second(name: str) -> bool:
    return name.startswith("layer.bias")


@needs_lightning
def test_two_lambda_filters_share_a_key_and_lightning_refuses_the_pair_at_fit(
    tmp_path: Path,
) -> None:
    # "Two filters that are lambdas from the same scope share a name (`<lambda>`), and
    # Lightning refuses the pair at `fit`: use named functions or glob patterns."
    a = EMACallback(decay=0.9, include=lambda n: n.endswith("weight"))
    b = EMACallback(decay=0.9, include=lambda n: n.endswith("bias"))
    assert a.state_key == b.state_key and "<lambda>" in a.state_key
    model = Net()
    with pytest.raises(RuntimeError, match="more than one stateful callback"):
        trainer(tmp_path, [a, b], max_epochs=1).fit(model, loader(2), loader(1))
    # named functions (or patterns) keep the two apart and fit
    c, d = EMACallback(decay=0.9, include=_first), EMACallback(decay=0.9, include=_second)
    assert c.state_key != d.state_key
    trainer(tmp_path, [c, d], max_epochs=1).fit(Net(), loader(2), loader(1))
    assert c.ema is not None and d.ema is not None
    assert list(c.ema.average) == ["layer.weight"] and list(d.ema.average) == ["layer.bias"]


@needs_lightning
def test_a_checkpoint_saved_under_other_filters_is_not_loaded_and_warm_starts(
    tmp_path: Path,
) -> None:
    # "A checkpoint saved under another config or other filters is not loaded (Lightning warns
    # that its callback is missing; the EMA warm-starts)."
    first = EMACallback(decay=0.9, include="layer.weight")
    run = trainer(tmp_path, [first], max_epochs=1)
    run.fit(Net(), loader(4), loader(1))
    path = tmp_path / "filtered.ckpt"
    run.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    assert first.state_key in saved["callbacks"]

    other, recorder = EMACallback(decay=0.9, include="layer.*"), Recorder()
    assert other.state_key != first.state_key
    with pytest.warns(UserWarning, match="callbacks used to create the checkpoint"):
        trainer(tmp_path, [other, recorder], max_epochs=2).fit(
            Net(), loader(4), loader(1), ckpt_path=path
        )
    assert_same(recorder.start, saved["state_dict"])  # restored live weights, not the EMA
    assert recorder.steps[0] == 5 and other.ema is not None
    assert other.ema.step == recorder.steps[-1] == 8
    expected = hand_run(recorder.start, recorder, decay=0.9, include="layer.*")
    assert_same(other.ema.average, expected.average)
    assert list(other.ema.average) == ["layer.weight", "layer.bias"]


class _WeightsOnlyInValidation(Net):
    """Saves a weights-only checkpoint from inside validation (averages swapped in)."""

    def __init__(self, save_to: Path) -> None:
        super().__init__()
        self.target = save_to
        self.inside: dict[str, Any] = {}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.global_step > 0 and not self.trainer.sanity_checking:
            self.trainer.save_checkpoint(self.target, weights_only=True)
            self.inside = self.weights()


@needs_lightning
def test_a_weights_only_save_inside_validation_holds_the_averages(tmp_path: Path) -> None:
    # "Lightning does not call callbacks for `weights_only` saves, so a weights-only save from
    # inside validation holds whatever the model holds then (the averages)"
    path = tmp_path / "weights.ckpt"
    model, callback = _WeightsOnlyInValidation(path), EMACallback(decay=0.9)
    trainer(tmp_path, [callback], max_epochs=1).fit(model, loader(4), loader(1))
    assert callback.ema is not None and callback.ema.step == 4
    saved = torch.load(path, weights_only=True)
    assert "callbacks" not in saved
    averages = {k: v.detach() for k, v in callback.ema.average.items()}
    assert_same(saved["state_dict"], averages)
    assert_same(model.inside, averages)
    assert not torch.equal(model.layer.weight.detach(), averages["layer.weight"])


class _RaisesIn(Net):
    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.before: dict[str, Any] = {}

    def test_step(self, batch: Any, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        if self.where == "test":
            raise RuntimeError("boom in test")

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        weights = super().predict_step(batch, batch_idx)
        if self.where == "predict":
            raise RuntimeError("boom in predict")
        return weights


@needs_lightning
@pytest.mark.parametrize("where", ["test", "predict"])
def test_an_error_inside_test_or_predict_gives_the_live_weights_back(
    tmp_path: Path, where: str
) -> None:
    # "the averages swapped in for validation ..., `test` and `predict` and the live weights
    # back after, bit for bit, also when a step raises"
    model, callback = _RaisesIn(where), EMACallback(decay=0.5)
    run = trainer(tmp_path, [callback], max_epochs=1)
    run.fit(model, loader(2), loader(1))
    live = model.weights()
    assert callback.ema is not None
    averages = {k: v.detach().clone() for k, v in callback.ema.average.items()}
    assert not torch.equal(averages["layer.weight"], live["layer.weight"])
    stage = run.test if where == "test" else run.predict
    with pytest.raises(RuntimeError, match=f"boom in {where}"):
        stage(model, loader(1), verbose=False) if where == "test" else stage(model, loader(1))
    if where == "test":
        assert_same(model.seen["test"][-1], averages)  # it did run on the averages
    assert_same(model.weights(), live)
    assert_same(callback.ema.average, averages)  # the EMA untouched


@needs_lightning
def test_predict_from_a_checkpoint_runs_on_the_ema_saved_there(tmp_path: Path) -> None:
    # "`trainer.validate/test/predict(..., ckpt_path=...)` run on the EMA saved there"
    callback = EMACallback(decay=0.7)
    run = trainer(tmp_path, [callback], max_epochs=1)
    run.fit(Net(), loader(4), loader(1))
    path = tmp_path / "run.ckpt"
    run.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    [shadows] = [v["shadow"] for k, v in saved["callbacks"].items() if k == callback.state_key]
    fresh, fresh_callback = Net(), EMACallback(decay=0.7)
    torch.nn.init.zeros_(fresh.layer.weight)
    [seen, *_] = trainer(tmp_path, [fresh_callback]).predict(fresh, loader(1), ckpt_path=path)
    assert_same(seen, dict(shadows))
    assert_same(fresh.weights(), saved["state_dict"])  # the live weights back after
    assert not torch.equal(shadows["layer.weight"], saved["state_dict"]["layer.weight"])


@needs_lightning
def test_predict_of_a_module_from_load_from_checkpoint_runs_live_and_logs_an_info_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "A `validate`/`test`/`predict` of another module than the one the EMA follows (a model
    # from `load_from_checkpoint`, without `ckpt_path=`) runs on that module's live weights and
    # keeps the EMA (an INFO line on the logger)"
    import logging

    model, callback = Net(), EMACallback(decay=0.7)
    run = trainer(tmp_path, [callback], max_epochs=1)
    run.fit(model, loader(4), loader(1))
    path = tmp_path / "run.ckpt"
    run.save_checkpoint(path)
    assert callback.ema is not None
    averages = {k: v.detach().clone() for k, v in callback.ema.average.items()}
    step = callback.ema.step
    loaded = Net.load_from_checkpoint(path)
    assert_same(loaded.weights(), model.weights())
    caplog.set_level(logging.INFO, logger="ema_core.integrations.lightning")
    [seen, *_] = run.predict(loaded, loader(1))
    assert_same(seen, model.weights())  # its live weights, not the averages
    infos = [
        r
        for r in caplog.records
        if r.name == "ema_core.integrations.lightning" and r.levelno == logging.INFO
    ]
    assert any("another module" in r.getMessage() for r in infos), caplog.text
    assert callback.ema.step == step
    assert_same(callback.ema.average, averages)
    [seen, *_] = run.predict(model, loader(1))  # the followed module: its averages
    assert_same(seen, averages)
    # "with `ckpt_path=` it runs on the EMA saved there" (the same callback, the loaded module)
    [seen, *_] = run.predict(loaded, loader(1), ckpt_path=path)
    assert_same(seen, averages)
    assert_same(loaded.weights(), model.weights())  # live weights back after


# -- accelerate ------------------------------------------------------------------------------


_HAS_ACCELERATE = _HAS_LIGHTNING and importlib.util.find_spec("accelerate") is not None


@pytest.mark.skipif(not _HAS_ACCELERATE, reason="torch and accelerate needed")
def test_load_state_fills_the_ema_in_place_with_its_step_and_bias_correction_weight(
    tmp_path: Path,
) -> None:
    # "every `save_state` folder gets `ema.safetensors` beside `model.safetensors` (shadows,
    # step, bias-correction weight and config ...), and every `load_state` fills the EMA back in
    # place ... Resuming continues bit for bit."
    from accelerate import Accelerator

    import ema_core as ema
    from ema_core.integrations.accelerate import ema_path, register

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    config = ema.Config(schedule=0.8, init="zeros")  # the weight matters to the average
    averager = EMA(model, config=config)
    register(accelerator, averager)

    def train(n: int) -> None:
        for _ in range(n):
            loss = model(torch.randn(4, 3)).pow(2).mean()
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
            averager.update()

    train(3)
    accelerator.save_state(str(tmp_path))
    assert {p.name for p in tmp_path.glob("*.safetensors")} >= {
        "ema.safetensors",
        "model.safetensors",
    }
    assert ema_path(tmp_path).is_file()
    saved = averager.state_dict()
    saved["shadow"] = {k: v.clone() for k, v in saved["shadow"].items()}  # a snapshot
    saved["weight"] = saved["weight"].clone()
    saved_average = {k: v.clone() for k, v in averager.average.items()}
    held = averager.state_dict()["shadow"]  # the shadows themselves, before the load
    train(2)
    after_saved = {k: v.clone() for k, v in averager.state_dict()["shadow"].items()}
    accelerator.load_state(str(tmp_path))
    assert averager.step == 3
    restored = averager.state_dict()
    assert torch.equal(restored["weight"], saved["weight"])
    assert restored["config"] == saved["config"]
    assert_same(restored["shadow"], saved["shadow"])
    assert_same(averager.average, saved_average)
    for name, tensor in held.items():  # in place: the same tensors hold the loaded values
        assert tensor.data_ptr() == restored["shadow"][name].data_ptr()
    assert any(not torch.equal(after_saved[n], saved["shadow"][n]) for n in after_saved)
    # continues bit for bit: two more steps from here equal a fresh EMA loaded from the file
    twin = EMA(torch.nn.Linear(3, 2), config=config)
    ema.checkpoint.load(ema_path(tmp_path), twin)
    assert_same(twin.state_dict()["shadow"], saved["shadow"])
    assert twin.step == 3 and torch.equal(twin.state_dict()["weight"], saved["weight"])


@needs_lightning  # torch is what it needs here
def test_averager_step_is_the_update_count_not_a_method() -> None:
    # "`averager.step` is the update count, not a method: calling it gives `'int' object is
    # not callable`"
    averager = EMA(torch.nn.Linear(2, 1), decay=0.9)
    for _ in range(3):
        averager.update()
    assert type(averager.step) is int and averager.step == 3
    with pytest.raises(TypeError, match="'int' object is not callable"):
        averager.step()  # type: ignore[operator]


@needs_lightning
def test_the_ddp_module_prefix_is_dropped_so_names_stay_the_models_own() -> None:
    # "Build the EMA on the prepared model (DDP's `module.` prefix is dropped, so the names stay
    # the model's own)". DataParallel wraps under the same `module.` prefix, without a group.
    inner = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    wrapped = torch.nn.DataParallel(inner)
    assert all(n.startswith("module.") for n, _ in wrapped.named_parameters())
    averager = EMA(wrapped, decay=0.9)
    assert list(averager.average) == [n for n, _ in inner.named_parameters()]
    plain = EMA(inner, decay=0.9)
    assert plain.state_dict()["shadow"].keys() == averager.state_dict()["shadow"].keys()


# -- flax nnx --------------------------------------------------------------------------------

_HAS_NNX = all(importlib.util.find_spec(m) is not None for m in ("jax", "flax", "optax"))
needs_nnx = pytest.mark.skipif(not _HAS_NNX, reason="jax, flax and optax needed")


def _nnx_setup() -> tuple[Any, Any, Any, Any]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    key = jax.random.key(3)
    batches = []
    for _ in range(6):
        key, kx = jax.random.split(key)
        x = jax.random.normal(kx, (8, 3))
        batches.append((x, x @ jnp.array([[1.0], [-2.0], [0.5]])))
    return jax, jnp, nnx, batches


def _numpy_params(state: Any) -> dict[str, Any]:
    """An nnx ``State`` of params (or of their average) as numpy arrays, by name."""
    return {name: np.array(value[...]) for name, value in state.items()}


@needs_nnx
def test_the_nnx_train_step_compiles_once_and_keeps_the_ema_of_the_params() -> None:
    # "update it inside the `nnx.jit` train step with any schedule" / "traced, one compile"
    import optax

    import ema_core as ema

    _, jnp, nnx, batches = _nnx_setup()
    config = ema.Config(schedule=ema.schedules.warmup(0.9))
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    state = ema.init(nnx.state(model, nnx.Param), config)
    traces = []

    @nnx.jit
    def train_step(model: Any, optimizer: Any, state: Any, x: Any, y: Any) -> Any:
        traces.append(1)
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss, ema.update(state, nnx.state(model, nnx.Param), config)

    reference = ema.init(_numpy_params(nnx.state(model, nnx.Param)), config)  # numpy route
    for x, y in batches:
        _, state = train_step(model, optimizer, state, x, y)
        reference = ema.update(reference, _numpy_params(nnx.state(model, nnx.Param)), config)
    assert len(traces) == 1
    assert int(state.step) == len(batches)
    got = _numpy_params(ema.average(state, config))
    want = ema.average(reference, config)
    assert got.keys() == want.keys() == {"kernel", "bias"}
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7)

    averaged = nnx.clone(model)
    nnx.update(averaged, ema.average(state, config))
    assert jnp.array_equal(averaged.kernel[...], ema.average(state, config)["kernel"][...])
    assert not jnp.array_equal(averaged.kernel[...], model.kernel[...])  # live unchanged


@needs_nnx
def test_with_ema_in_an_nnx_optimizer_equals_the_stateless_route() -> None:
    # "The EMA can also ride in the optimizer's state: `nnx.Optimizer(model, with_ema(tx,
    # config), wrt=nnx.Param)` and `ema_average(optimizer.opt_state, config)`"
    import optax

    import ema_core as ema
    from ema_core.jax import ema_average, with_ema

    _, jnp, nnx, batches = _nnx_setup()
    config = ema.Config(schedule=ema.schedules.warmup(0.9))
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, with_ema(optax.sgd(0.1), config), wrt=nnx.Param)

    @nnx.jit
    def train_step(model: Any, optimizer: Any, x: Any, y: Any) -> Any:
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    reference = ema.init(_numpy_params(nnx.state(model, nnx.Param)), config)  # numpy route
    for x, y in batches:
        train_step(model, optimizer, x, y)
        reference = ema.update(reference, _numpy_params(nnx.state(model, nnx.Param)), config)
    got = ema_average(optimizer.opt_state, config)
    want = ema.average(reference, config)
    assert _numpy_params(got).keys() == want.keys() == {"kernel", "bias"}
    for name, value in _numpy_params(got).items():
        np.testing.assert_allclose(value, want[name], rtol=1e-6, atol=1e-7)
    # and the average goes into a clone with nnx.update
    averaged = nnx.clone(model)
    nnx.update(averaged, got)
    np.testing.assert_allclose(np.asarray(averaged.kernel[...]), want["kernel"], rtol=1e-6)


@needs_nnx
def test_bf16_params_get_float32_shadows_and_the_readmes_cast_keeps_the_clone_bf16() -> None:
    # "with half-precision params the shadows are float32 (`Config(dtype=None)`), so cast them
    # to the params' dtype first if the clone must stay bf16"
    import ema_core as ema

    jax, jnp, nnx, _ = _nnx_setup()
    assert ema.Config().dtype is None
    config = ema.Config(schedule=0.5)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16)
    params = nnx.state(model, nnx.Param)
    state = ema.init(params, config)
    moved = jax.tree.map(lambda p: p + jnp.asarray(1, p.dtype), params)
    state = ema.update(state, moved, config)
    average = ema.average(state, config)
    assert {a.dtype for a in jax.tree.leaves(average)} == {jnp.dtype("float32")}
    # the float32 average is the rule on the bf16 values: 0.5 * p + 0.5 * (p + 1)
    for a, p in zip(jax.tree.leaves(average), jax.tree.leaves(params), strict=True):
        assert jnp.allclose(a, p.astype(jnp.float32) + 0.5, atol=1e-2)

    averaged = nnx.clone(model)
    nnx.update(averaged, average)  # as it is: the clone's kernel turns float32
    assert averaged.kernel[...].dtype == jnp.float32
    kept = nnx.clone(model)
    cast = jax.tree.map(lambda a, p: a.astype(p.dtype), average, nnx.state(kept, nnx.Param))
    nnx.update(kept, cast)
    assert kept.kernel[...].dtype == jnp.bfloat16
    assert jnp.array_equal(kept.kernel[...], average["kernel"][...].astype(jnp.bfloat16))


# -- Keras 3 ---------------------------------------------------------------------------------


def test_keras_swap_default_is_evaluate_and_predict() -> None:
    # "Keras `EMACallback`: `swap=("evaluate", "predict")` by default". Importing Keras costs
    # seconds and fixes its backend for the session: the default is read from the source and
    # run through the callback's own reader; with Keras already imported, from the class too.
    import ast

    from ema_core.integrations import _keras_args

    source = Path(_keras_args.__file__).with_name("keras.py").read_text(encoding="utf-8")
    [init] = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef)
        and node.name == "__init__"
        and any(a.arg == "swap" for a in node.args.kwonlyargs)
    ]
    names = [a.arg for a in init.args.kwonlyargs]
    default = ast.literal_eval(init.args.kw_defaults[names.index("swap")])
    assert default == ("evaluate", "predict")
    assert _keras_args.check_swap(default) == {"evaluate", "predict"}
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() in ("jax", "torch"):
        from ema_core.integrations.keras import EMACallback as KerasEMACallback

        assert KerasEMACallback(decay=0.9).swap == {"evaluate", "predict"}

"""A Keras 3 callback that keeps an ema-core EMA of a model's weights (jax and torch backends).

``EMACallback`` updates the EMA after every training batch with ema-core's functional
``init`` / ``update`` / ``average`` on the backend's own arrays (no host copy per batch), puts
the averages in the model inside ``evaluate()`` / ``predict()`` (and, when asked, the
validation inside ``fit``) and the live weights back after, bit for bit, and saves its state
as one ema-core checkpoint (``save`` / ``load``, or ``filepath=`` at every epoch end).

This module holds the callback: its Keras hooks and what it keeps (the ``EMAState``, the
copied weights, ``step``). The private helpers beside it (``_keras_state``, ``_keras_weights``,
``_keras_swap``, ``_keras_args``) are described in ``ema_core.integrations``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

try:
    import keras
except ImportError as err:
    missing = (err.name or "").partition(".")[0] if isinstance(err, ModuleNotFoundError) else ""
    if missing in ("tensorflow", "jax", "jaxlib", "torch", "openvino"):
        # keras is there, its backend is not (with KERAS_BACKEND unset, keras picks tensorflow)
        raise ImportError(
            f"ema_core.integrations.keras: keras is installed, but its backend needs "
            f"{missing!r}, which is not (keras picks tensorflow unless KERAS_BACKEND or "
            "~/.keras/keras.json names another): "
            "set KERAS_BACKEND=jax or KERAS_BACKEND=torch before importing keras, or install "
            "that backend"
        ) from err
    if missing not in ("", "keras"):
        raise ImportError(
            f"ema_core.integrations.keras: keras is installed, but {missing!r}, which it "
            "imports, is not: reinstall keras with its dependencies (pip install ema-core[keras])"
        ) from err
    raise ImportError(
        "ema_core.integrations.keras needs keras: pip install ema-core[keras]"
    ) from err
import numpy as np

from ema_core._arguments import resolve_config
from ema_core._config import Config
from ema_core._types import EMAState
from ema_core.integrations import _keras_state
from ema_core.integrations._keras_args import check_path, check_swap
from ema_core.integrations._keras_swap import Swap
from ema_core.integrations._keras_weights import Plan, check_backend, optimizer_steps, plan_in

__all__ = ["EMACallback"]

log = logging.getLogger(__name__)


class EMACallback(keras.callbacks.Callback):  # type: ignore[misc]
    """The EMA of every weight of a Keras 3 model, updated after each training batch.

    ``shadow_t = shadow_{t-1} + (1 - d_t) (w_t - shadow_{t-1})`` over ``model.weights`` after
    each ``on_train_batch_end`` (one update per call: per ``steps_per_execution`` batches),
    with ``d_t`` from any ema-core schedule or ``Config``; ``t`` counts the updates applied
    (``step``), saved with the EMA. Trainable weights are averaged; floating non-trainable
    ones (BatchNorm statistics) follow ``buffers``; integer ones ``Config.non_float``.

    Args:
        config: a ``Config``. Pass at most one of ``config``, ``decay`` and ``schedule``.
        decay: a constant decay in [0, 1] (default 0.9999).
        schedule: a ``Schedule`` or callable ``t -> decay``.
        buffers: floating non-trainable weights are ``"copy"``-ed at every update (as the
            torch ``EMA`` copies buffers), ``"average"``-d, or ``"skip"``-ped (left live
            inside ``evaluate`` / ``predict``). ``None``: ``config.buffers`` with a config,
            else ``"copy"``.
        swap: where the averages stand in for the live weights: ``"evaluate"`` (a call of
            ``evaluate()``), ``"predict"``, ``"validate"`` (the validation inside ``fit``:
            ``val_*`` logs, and what ``EarlyStopping`` / ``ModelCheckpoint`` monitor on them,
            then describe the EMA). The live weights are back, bit for bit, when each ends.
        filepath: when given, ``save(filepath)`` runs at every epoch end (after validation,
            with the live weights in the model), beside a ``ModelCheckpoint`` of the model.

    Raises:
        TypeError / ValueError: an argument of the wrong type or value; a Keras backend other
            than jax or torch (``ValueError``).

    Example:
        >>> import numpy as np, keras
        >>> from ema_core.integrations.keras import EMACallback
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> ema = EMACallback(decay=0.9)
        >>> x, y = np.ones((8, 2), "float32"), np.ones((8, 1), "float32")
        >>> _ = model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[ema])
        >>> ema.step, [w.shape for w in ema.average_weights()]
        (2, [(2, 1), (1,)])
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        decay: float | None = None,
        schedule: Any = None,
        buffers: str | None = None,
        swap: str | Iterable[str] = ("evaluate", "predict"),
        filepath: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = resolve_config(decay, schedule, config, None, buffers)
        self.swap = check_swap(swap)
        self.filepath = check_path(filepath, "filepath")
        self._backend = check_backend()
        super().__init__()
        self._plan: Plan | None = None
        self._state: EMAState | None = None
        self._copies: dict[str, Any] = {}
        self._step = 0
        self._swapper = Swap()  # the live weights while averages are in the model
        self._in_fit = False
        self._paused_fit = False  # an evaluate/predict of its own ran from inside a fit
        self._steps: int | None = None  # optimizer steps at the last update (accumulation)
        self._owner: Any = None  # the model the EMA follows (from fit or load)

    @property
    def step(self) -> int:
        """The number of updates applied (restored by ``load``)."""
        return self._step

    def average_weights(self) -> list[np.ndarray[Any, Any]]:
        """The averages as numpy arrays in ``model.get_weights()`` order and dtypes (skipped
        weights as the model holds them); ``model.set_weights(ema.average_weights())`` keeps
        them. Before the first update they are the weights at the start of ``fit``.

        Raises:
            RuntimeError: the callback has seen no model yet (no ``fit`` or ``load``).
        """
        plan, _ = self._ready("average_weights")
        return _keras_state.as_numpy(plan, self._averages())

    def save(self, path: str | os.PathLike[str], /) -> Path:
        """Write the EMA (averages, copied weights, ``step``, bias-correction weight, config)
        as one crash-safe ema-core checkpoint (``ema_core.checkpoint.save``); return the path.

        Missing folders above ``path`` are created (as ``ModelCheckpoint`` does).

        Raises:
            TypeError: ``path`` is not a str or os.PathLike. ValueError: it cannot name a file.
            RuntimeError: the callback has seen no model yet.
        """
        check_path(path, "path")
        _, state = self._ready("save")
        return _keras_state.save(path, state, self._copies, self.config)

    def load(self, path: str | os.PathLike[str], /, model: Any = None) -> None:
        """Continue the EMA saved by ``save`` for ``model`` (default: the callback's model),
        bit for bit; call it before ``fit`` resumes. Names, shapes, dtypes and the config are
        checked before anything changes.

        Raises:
            TypeError: ``path`` of the wrong type, no model (none given, none seen) or a
                ``model`` that is not a ``keras.Model``.
            ValueError: the file does not match the model or the config, or the model has no
                weights yet (nothing changed).
        """
        check_path(path, "path")
        model = getattr(self, "_model", None) if model is None else model
        if model is None:
            raise TypeError("load() needs the model: pass model=, or call it after fit() began")
        plan, state, copies = _keras_state.load(path, model, self.config)
        self._plan, self._step, self._owner = plan, int(state.step), model
        self._state, self._copies = state, copies

    # Keras hooks

    def set_model(self, model: Any) -> None:
        """Keras calls this when a fit / evaluate / predict builds its callback list."""
        super().set_model(model)
        # a call of its own (even one a callback makes inside a fit: its own list) is not a
        # validation, and a fit that raised never called on_train_end; the fit's flag comes
        # back when that call ends (the fit's validations reuse the fit's list, no set_model)
        self._paused_fit, self._in_fit = self._in_fit, False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # self.model first: on JAX reading it syncs the trainer's state into the variables,
        # which after an evaluate that raised still holds the averages; restoring the live
        # weights after that read leaves them in place for training
        model = self.model
        self._swapper.restore()
        self._attach(model)
        self._in_fit = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._in_fit = self._paused_fit = False

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        plan, state = self._ready("on_train_batch_end")
        # not self.model: on JAX each read of it syncs the trainer's state into the variables
        model = self._model if self._backend == "jax" else self.model
        steps = optimizer_steps(model)  # None unless the optimizer accumulates gradients
        if steps is not None and steps == self._steps:
            return  # a batch that only accumulated: the weights did not move
        self._steps = steps
        self._state, self._copies = _keras_state.update(state, model, plan, self.config)
        self._step += 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.filepath is not None:
            self.save(self.filepath)

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._begin("validate" if self._in_fit else "evaluate")

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        self._swapper.restore()
        self._resume_fit()

    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._begin("predict")

    def on_predict_end(self, logs: dict[str, Any] | None = None) -> None:
        self._swapper.restore()
        self._resume_fit()

    # internals

    def _resume_fit(self) -> None:
        """After an evaluate/predict of its own that a callback ran inside a fit, that fit's
        later validations are validations again."""
        if self._paused_fit:
            self._in_fit, self._paused_fit = True, False

    def _begin(self, stage: str) -> None:
        """The averages in the model for a stage named in ``swap``, once an update was taken."""
        self._swapper.restore()
        if stage in self.swap and self._plan is not None and self._step > 0:
            plan = plan_in(self._plan, self._owner, self._model, self.config.buffers)
            if not self._swapper.put_in(plan, self._averages(), self._model):
                log.info("EMACallback: another EMACallback's averages are in the model; %s "
                         "runs on them", stage)  # fmt: skip

    def _attach(self, model: Any) -> None:
        """Start the EMA at the model's weights, or continue it when the model matches."""
        plan = _keras_state.plan_for(self._plan, self._owner, model, self.config.buffers)
        if self._plan is None:
            self._state, self._copies = _keras_state.start(model, plan, self.config)
        self._plan, self._steps, self._owner = plan, optimizer_steps(model), model

    def _ready(self, what: str) -> tuple[Plan, EMAState]:
        if self._plan is None or self._state is None:
            raise RuntimeError(f"{what}() before the EMA exists: run fit() or load() first")
        return self._plan, self._state

    def _averages(self) -> dict[str, Any]:
        _, state = self._ready("average")
        return _keras_state.averages(state, self._copies, self.config)

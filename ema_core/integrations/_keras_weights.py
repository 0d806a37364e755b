"""The weights of a Keras 3 model as the Keras ``EMACallback`` sees them.

``Plan(model, buffers)`` sorts ``model.weights`` (the order of ``get_weights()``) into the
averaged ones (trainable weights, integer weights, and floating non-trainable ones under
``buffers="average"``), the copied ones (floating non-trainable weights under ``"copy"``) and
the skipped ones (non-trainable weights under ``"skip"``), each named by its position and
its variable's name (``"0003:beta"``): Keras' paths are not stable (a loaded model's lack the
model's prefix, and layer-name counters differ between processes), so a saved EMA is matched
to a model by position, checked by name, shape and dtype.
``check_continues`` refuses to continue an EMA on a model whose weights differ.
``live_arrays`` reads the backend arrays after a training batch without a host copy: on the
JAX backend from the state the trainer holds between batches (the model's variables are
emptied during an epoch), on torch from the variables themselves. ``snapshot`` copies an array
on its device: JAX training donates its state to the next step and torch updates its tensors in
place, so anything the callback keeps must be its own copy.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_compat as compat
import keras
import numpy as np

#: What the callback supports: the backends whose arrays ema-core updates.
BACKENDS = ("jax", "torch")


class Plan:
    """Which weights of ``model.weights`` are averaged, copied or skipped, and their names."""

    def __init__(self, model: Any, buffers: str) -> None:
        self.weights: list[Any] = list(model.weights)
        self.names = [f"{i:04d}:{w.name}" for i, w in enumerate(self.weights)]
        trainable = {id(v): i for i, v in enumerate(model.trainable_variables)}
        frozen = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
        self.slots = [
            Slot(id(w) in trainable, trainable.get(id(w), frozen.get(id(w), -1)))
            for w in self.weights
        ]
        kinds = [
            kind_of(w, slot.trainable, buffers)
            for w, slot in zip(self.weights, self.slots, strict=True)
        ]
        self.averaged = [i for i, kind in enumerate(kinds) if kind == "average"]
        self.copied = [i for i, kind in enumerate(kinds) if kind == "copy"]

    def layout(self) -> list[tuple[str, tuple[int, ...], str]]:
        """Name, shape and dtype of every weight, tracked or not."""
        return [
            (n, tuple(w.shape), str(w.dtype)) for n, w in zip(self.names, self.weights, strict=True)
        ]

    def signature(self) -> list[tuple[str, tuple[int, ...], str]]:
        """Name, shape and dtype of each tracked weight: what a model must match to continue."""
        return [
            (self.names[i], tuple(self.weights[i].shape), str(self.weights[i].dtype))
            for i in (*self.averaged, *self.copied)
        ]


class Slot(NamedTuple):
    """Where a weight sits in the trainer's state: the trainable or the non-trainable list."""

    trainable: bool
    position: int


def kind_of(weight: Any, trainable: bool, buffers: str) -> str:
    """``"average"``, ``"copy"`` or ``"skip"``: trainable weights are averaged; non-trainable
    ones follow ``buffers``, except that integer ones are never copied here (the core copies
    them under ``Config.non_float``).

    Example:
        >>> w = keras.Variable(np.zeros(2, dtype="int32"), trainable=False)
        >>> kind_of(w, False, "copy"), kind_of(w, False, "skip")
        ('average', 'skip')
    """
    if trainable:
        return "average"
    if buffers == "skip":
        return "skip"
    floating = "float" in str(weight.dtype)
    return "copy" if floating and buffers == "copy" else "average"


def live_arrays(model: Any, plan: Plan, indices: list[int]) -> dict[str, Any]:
    """The current arrays of the weights at ``indices``, by name, read on their device.

    Between the batches of a JAX ``fit`` the arrays live in ``model._jax_state`` (the model's
    variables are emptied until ``jax_state_sync()``); elsewhere in the variables.
    """
    state = getattr(model, "_jax_state", None)
    if state and not getattr(model, "_jax_state_synced", True):
        lists = (state["non_trainable_variables"], state["trainable_variables"])
        return {
            plan.names[i]: lists[plan.slots[i].trainable][plan.slots[i].position] for i in indices
        }
    return {plan.names[i]: plan.weights[i].value for i in indices}


def optimizer_steps(model: Any) -> int | None:
    """The optimizer steps applied so far when a batch may apply none: the optimizer
    accumulates gradients (Keras' ``gradient_accumulation_steps``) or scales the loss
    (``LossScaleOptimizer``, which ``mixed_float16`` compiles in: a step whose gradients
    overflow is skipped, and its inner optimizer's counter stays), else None (every batch
    steps, and nothing is read). On JAX between batches the counter is read from the
    trainer's state, as ``live_arrays`` reads the weights.
    """
    optimizer: Any = getattr(model, "optimizer", None)
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    counting = optimizer.inner_optimizer if scaled else optimizer
    every = getattr(counting, "gradient_accumulation_steps", None)
    if not every and not scaled:
        return None
    counter = counting._iterations  # counts batches; a step is applied every ``every``
    state = getattr(model, "_jax_state", None)
    if state and not getattr(model, "_jax_state_synced", True) and state.get("optimizer_variables"):
        ids = [id(v) for v in optimizer.variables]
        value = state["optimizer_variables"][ids.index(id(counter))]
    else:
        value = counter.value
    return int(np.asarray(keras.ops.convert_to_numpy(value))) // int(every or 1)


def check_model(model: Any) -> None:
    """Refuse what is not a built Keras model before the callback reads its weights.

    Raises:
        TypeError: not a ``keras.Model``. ValueError: a model with no weights yet.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")
    if not model.weights:
        raise ValueError(
            f"model has no weights yet ({type(model).__name__} {model.name!r}): build it first "
            "(give it a keras.Input, call model.build(shape) or call it on a batch)"
        )


def check_continues(old: Plan, new: Plan) -> None:
    """Refuse to continue an EMA of ``old`` on ``new``: the same weights with layers frozen or
    unfrozen since (the EMA tracks a fixed set), or another model.

    Raises:
        ValueError: the kinds (averaged, copied, skipped) or the tracked weights' names,
            shapes or dtypes differ.
    """
    if new.layout() == old.layout() and kind_changes(old, new):
        raise ValueError(
            "weights changed between trainable and non-trainable since this EMACallback "
            f"began: {kind_changes(old, new)}; the EMA tracks a fixed set. Build the callback "
            "with buffers='average' (every floating weight averaged, frozen or not), or use a "
            "new EMACallback"
        )
    if new.signature() != old.signature():
        raise ValueError(
            "this EMACallback holds an EMA of another model (weights differ in names, shapes "
            f"or dtypes: {old.signature()} != {new.signature()}); use a new EMACallback per "
            "model"
        )


def check_owner(owner: Any, model: Any) -> None:
    """Refuse to ``fit`` another model than the one the EMA follows (``owner``).

    Raises:
        ValueError: ``model`` is not ``owner``: one EMA of two models mixes their weights.
    """
    if model is not owner:
        name, followed = model.name, getattr(owner, "name", owner)
        same = " (another object of the same name: a copy or a reloaded model)"
        raise ValueError(
            f"fit() got another model ({name!r}{same if name == followed else ''}) than the "
            f"one this EMACallback follows ({followed!r}); one EMA of two models would mix their "
            "weights: use a new EMACallback per model, or load(path, model) to continue a saved "
            "EMA on this one"
        )


def plan_in(plan: Plan, owner: Any, model: Any, buffers: str) -> Plan:
    """Where the averages go in ``model``: ``plan`` for the EMA's own model, else a plan of
    ``model`` (a reloaded copy), matched by position and checked by ``check_continues``."""
    if model is owner:
        return plan
    other = Plan(model, buffers)
    check_continues(plan, other)
    return other


def kind_changes(old: Plan, new: Plan) -> list[str]:
    """The weights whose kind (averaged, copied, skipped) differs between two plans of the
    same weights: layers frozen or unfrozen between two ``fit`` calls."""
    kinds = [_kinds(old), _kinds(new)]
    return [f"{name} ({a} -> {b})" for name, a, b in zip(new.names, *kinds, strict=True) if a != b]


def _kinds(plan: Plan) -> list[str]:
    kinds = ["skipped"] * len(plan.names)
    for i in plan.averaged:
        kinds[i] = "averaged"
    for i in plan.copied:
        kinds[i] = "copied"
    return kinds


def snapshot(array: Any) -> Any:
    """A copy of ``array`` on its device, detached from autograd on torch."""
    if compat.is_torch_array(array):
        return array.detach().clone()
    return keras.ops.copy(array)


def as_weight(array: Any, weight: Any) -> Any:
    """A new array of ``array`` in the dtype of the Keras variable ``weight``."""
    return snapshot(keras.ops.cast(array, weight.dtype))


def to_numpy(array: Any, weight: Any) -> np.ndarray[Any, Any]:
    """``array`` on the host as ``weight.numpy()`` would give it (its dtype): a new, writeable
    array that shares no memory with the EMA."""
    if compat.is_torch_array(array):  # not np.asarray: torch's __array__ warns under numpy 2
        host = array.detach().cpu()
        narrow = host.dtype.is_floating_point and host.dtype.itemsize < 4
        if narrow and str(host.dtype) != "torch.float16":  # bf16, float8: numpy has no such
            host = host.float()  # dtype in torch's eyes; widened exactly, then cast below
        array = host.numpy()
    return np.array(array, dtype=weight.dtype)


def check_backend() -> str:
    """The Keras backend, when ema-core can update its arrays.

    Raises:
        ValueError: another backend (tensorflow, numpy, openvino).
    """
    name = str(keras.backend.backend())
    if name not in BACKENDS:
        raise ValueError(
            f"the Keras backend is {name!r}; EMACallback supports {list(BACKENDS)}: set "
            "KERAS_BACKEND=jax or KERAS_BACKEND=torch before importing keras"
        )
    return name

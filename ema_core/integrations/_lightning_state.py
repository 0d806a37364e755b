"""The Lightning ``EMACallback``'s EMA through a trainer call: kept or rebuilt, swapped, saved.

``prepared`` is the EMA a trainer call runs with (``keeps``: the one built earlier goes on);
``restarted`` sets one with no update to the weights a fit's first batch starts from;
``log_missing_state`` says (at INFO) that a restored checkpoint held none. ``runs_live`` says
whether a stage that swaps runs on the live weights all the same (``updated``: an EMA that
took no update is never swapped in); ``swap_in`` / ``swap_out`` enter and leave ``EMA.swap()``.
``saved_state`` is the EMA's ``state_dict`` (gathered to full CPU tensors when sharded);
``fit_step`` is the step a save catches up with; ``live_state_dict`` is the live weights
that a checkpoint written while the averages are in gets. ``grad_scale`` / ``all_skipped``:
a batch whose every optimizer step the fp16 ``GradScaler`` skipped takes no update.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import weakref
from typing import Any

import lightning.pytorch as pl
import torch

from ema_core.torch import EMA, _copies, _names, full_state_dict
from ema_core.torch._dtensor import is_dtensor


def keeps(
    ema: EMA | None,
    tracked: torch.nn.Module | None,
    module: torch.nn.Module,
    *,
    restored: bool,
    fitting: bool,
    step: int,
) -> bool:
    """Whether the EMA built earlier goes on: the same module, no checkpoint restored over
    it, and (when fitting) a trainer that has not stepped less than the EMA."""
    if ema is None or tracked is not module or restored:
        return False
    return not fitting or int(ema.step) <= step


def prepared(
    ema: EMA | None,
    tracked: torch.nn.Module | None,
    module: torch.nn.Module,
    trainer: pl.Trainer,
    options: dict[str, Any],
    state: dict[str, Any] | None,
    stage: str | None,
) -> tuple[EMA | None, torch.nn.Module | None]:
    """The EMA a trainer call runs with, and the module it tracks: the EMA built earlier if
    it goes on (``keeps``), else a new one on ``module``'s live weights
    (``EMA(module, **options)``) when fitting or loading a ``state`` into it, else none after
    a restore; a stage of another module, without a restore, leaves the EMA of its own."""
    restored, fitting = trainer.ckpt_path is not None, stage == "fit"
    if keeps(ema, tracked, module, restored=restored, fitting=fitting, step=trainer.global_step):
        return ema, tracked
    built = fitting or state is not None
    if not (built or restored):
        return ema, tracked
    return (EMA(module, **options), module) if built else (None, None)


def restarted(
    ema: EMA | None, module: torch.nn.Module | None, options: dict[str, Any]
) -> EMA | None:
    """``ema`` with its shadows, step and weight set in place to those ``EMA(module,
    **options)`` would start with (the live weights as they are now), when it has taken no
    update; else ``ema`` as it is.

    Called at a fit's first batch (for an EMA that loaded no checkpoint state): Lightning runs
    every callback's ``on_train_start`` and then the module's before it, and any of them may
    set the weights (load pretrained ones, re-initialise layers) after the EMA was built. The
    object is kept (a reference taken in ``on_train_start`` stays the callback's EMA), unless
    the module's tensors changed (a layer replaced by one of another shape, a tensor added or
    removed): the new EMA is returned then.
    """
    if ema is None or module is None or updated(ema):
        return ema
    include, exclude = options.get("include"), options.get("exclude")
    now = _names.collect(module, ema.config.buffers, include, exclude)
    same = tuple(t.name for t in now) == ema.names  # no tensor added or removed since
    return ema if same and _copies.restart(ema) else EMA(module, **options)


def log_missing_state(
    log: logging.Logger,
    trainer: pl.Trainer,
    state: dict[str, Any] | None,
    key: str,
    stage: str | None,
) -> None:
    """When the trainer restored a checkpoint without an EMA ``state`` under ``key``, say so
    on ``log`` (INFO, rank 0): a warm start when fitting, the live weights otherwise."""
    if trainer.ckpt_path is None or state is not None or not trainer.is_global_zero:
        return
    log.info(
        "EMACallback: the checkpoint %s holds no EMA state under %r; %s",
        trainer.ckpt_path,
        key,
        "the EMA starts from its live weights (warm start)"
        if stage == "fit"
        else f"{getattr(stage, 'value', stage)} runs on the live weights",
    )


def saved_state(ema: EMA) -> dict[str, Any]:
    """``ema.state_dict()``; a sharded (DTensor) EMA gathered by every rank into full CPU
    tensors kept on rank 0 (``full_state_dict``; ``{}`` elsewhere)."""
    state = ema.state_dict()
    if any(is_dtensor(shadow) for shadow in state["shadow"].values()):
        return full_state_dict(ema)
    return state


def fit_step(module: torch.nn.Module | None) -> int | None:
    """The ``global_step`` of the trainer ``module`` is attached to (None when it is not a
    LightningModule or attached to none: nothing to catch up).

    A save between an optimizer step and the callback's batch end (a callback listed before
    it saving in its own ``on_train_batch_end``, a manual ``training_step`` saving after
    ``opt.step()``) takes that step's update first, so the checkpoint pairs the weights with
    their EMA (Lightning collects the callbacks' states before ``on_save_checkpoint``: this
    is the last moment).
    """
    if not isinstance(module, pl.LightningModule):
        return None
    try:
        trainer = module.trainer
    except RuntimeError:  # a module no longer attached to a trainer: nothing to catch up
        return None
    return trainer.global_step


def grad_scale(trainer: pl.Trainer) -> float | None:
    """The loss scale of the trainer's enabled ``torch.amp.GradScaler`` (``precision=
    "16-mixed"``), None without one. It only shrinks when the scaler skipped a step for inf
    gradients, which Lightning still counts in ``global_step``. Reading it is a host read,
    as the scaler's own ``step`` makes one."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None
    return float(scaler.get_scale())


def all_skipped(trainer: pl.Trainer, scale: float | None, moved: bool) -> bool:
    """Whether the fp16 ``GradScaler`` skipped every optimizer step of the batch that just
    ended: its scale shrank below ``scale`` (read before the last step) and no earlier step
    of the batch went through (``moved``)."""
    now = None if scale is None else grad_scale(trainer)
    return scale is not None and now is not None and now < scale and not moved


def updated(ema: EMA | None) -> bool:
    """Whether ``ema`` exists and has taken an update (else it is never swapped in)."""
    return ema is not None and int(ema.step) > 0


def warn_if_spawned(ema: EMA | None, trainer: pl.Trainer, stage: str) -> None:
    """A ``UserWarning`` (rank 0) when a stage that swaps finds no EMA (or one built for it,
    with no update) under a strategy that starts its processes per call (``ddp_spawn``,
    ``ddp_fork``, ``ddp_notebook``): the EMA a fit built lived in that fit's worker processes
    and ended with them (Lightning hands back the weights and metrics only), so the stage runs
    on the live weights. Not called within a fit, nor with ``on_fit_end="swap-in"`` (the
    averages came back as the model's weights)."""
    launcher = getattr(trainer.strategy, "launcher", None)
    if updated(ema) or type(launcher).__name__ != "_MultiProcessingLauncher":
        return
    if trainer.is_global_zero:
        warnings.warn(
            f"EMACallback: {stage} runs on the live weights: there is no updated EMA in this "
            f"process, and under strategy {type(trainer.strategy).__name__} with processes "
            "started per trainer call (ddp_spawn, ddp_fork, ddp_notebook) the EMA of an "
            "earlier fit ended with that fit's processes; pass ckpt_path= (the EMA is in the "
            "checkpoint), on_fit_end='swap-in' to keep the averages in the model after fit, "
            "or use strategy='ddp'",
            UserWarning,
            stacklevel=2,
        )


def runs_live(
    ema: EMA | None,
    tracked: torch.nn.Module | None,
    module: torch.nn.Module,
    stage: str,
    log: logging.Logger,
) -> bool:
    """Whether a ``stage`` that swaps runs on ``module``'s live weights all the same: it is
    another module than the EMA's (said at INFO on ``log``), or the EMA has taken no update
    (DEBUG)."""
    if ema is not None and tracked is not module:
        log.info("EMACallback: %s of another module runs on its live weights", stage)
        return True
    if not updated(ema):
        log.debug("EMACallback: no update yet, %s runs on the live weights", stage)
        return True
    return False


#: The module whose weights an EMA's averages are in (a callback's swap) -> that EMA.
_HOLDERS: weakref.WeakKeyDictionary[torch.nn.Module, EMA] = weakref.WeakKeyDictionary()


def swap_in(
    ema: EMA, module: torch.nn.Module, log: logging.Logger
) -> contextlib.AbstractContextManager[None] | None:
    """``ema.swap()``, entered: the averages are in ``module`` until ``swap_out``. None (the
    stage runs on the other's averages, said at INFO) while another callback's EMA holds
    ``module``: Lightning calls the end hooks in list order, so a second swap would back up
    the first one's averages and restore them last, leaving them in the model for training."""
    holder = _HOLDERS.get(module)
    if holder is not None and holder is not ema:
        log.info("EMACallback: another EMACallback's averages are in the model; this one waits")
        return None
    swap = ema.swap()
    swap.__enter__()
    _HOLDERS[module] = ema
    return swap


def swap_out(
    swap: contextlib.AbstractContextManager[None] | None,
    error: BaseException | None,
    module: torch.nn.Module | None,
) -> None:
    """Leave ``swap`` (if any) with ``error`` (if any): the live weights back, bit for bit."""
    if swap is not None:
        if module is not None:
            _HOLDERS.pop(module, None)
        kind = None if error is None else type(error)
        swap.__exit__(kind, error, None if error is None else error.__traceback__)


def live_state_dict(trainer: pl.Trainer) -> dict[str, Any]:
    """The module's ``state_dict`` as the strategy gives it, each tensor detached and cloned
    (call it while the live weights are in the model)."""
    live = trainer.strategy.lightning_module_state_dict()
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in live.items()}

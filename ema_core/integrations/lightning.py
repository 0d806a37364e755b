"""``EMACallback``: an ema-core EMA of a LightningModule's weights, as a Lightning callback.

Imports ``lightning`` (``pip install ema-core[lightning]``). The callback holds one
``ema_core.torch.EMA`` (its ``.ema``), built on the module once the trainer has moved it to
its device and sharded it (FSDP2 params get DTensor shadows), and after a checkpoint's weights
are restored. What it does, hook by hook:

* ``on_train_batch_start``: a fit's first batch starts an EMA with no update and no loaded
  state from the weights then, after every ``on_train_start`` hook ran (``restarted``).
* ``on_train_batch_end``: one update per optimizer step, with ``step=trainer.global_step``
  (gradient accumulation and skipped steps are followed: a batch that did not step updates
  nothing), so schedules count optimizer steps.
* ``on_{validation,test,predict}_start`` / ``_end``: ``EMA.swap()`` entered and left across
  the two hooks (stages named in ``swap``); ``on_exception`` and ``teardown`` leave it too, so
  an error inside validation gives the live weights back bit for bit. An EMA that has taken
  no update is never swapped in (the sanity check validates the live weights), nor into
  another module than its own (which runs on its live weights; the EMA is kept).
* checkpoints: the model's ``state_dict`` always holds the live weights (a checkpoint written
  while the averages are swapped in gets the live ones in ``on_save_checkpoint``); the EMA is
  the callback's state (``state_dict`` / ``load_state_dict``, under ``state_key``; gathered
  to rank 0 when sharded), loaded into the shadows beside the params, bit for bit. A
  checkpoint without it warm-starts: the EMA starts from the restored live weights, and says
  so at INFO level on the logger ``ema_core.integrations.lightning``.
* ``on_fit_end``: ``"keep-live"`` leaves the live weights in the model, ``"swap-in"`` copies
  the averages into it (to save or export the averaged model).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as err:
    raise ImportError(
        "ema_core.integrations.lightning needs lightning: pip install ema-core[lightning]"
    ) from err
import torch

from ema_core.integrations import _lightning_args, _lightning_state
from ema_core.integrations._lightning_args import STAGES, FitEnd, Stage
from ema_core.torch import EMA

__all__ = ["EMACallback"]

log = logging.getLogger(__name__)


class EMACallback(pl.Callback):
    """Keep an EMA of the model's weights during ``fit``; evaluate and predict with it.

    ``shadow_t = shadow_{t-1} + (1 - d_t) * (live_t - shadow_{t-1})`` once per optimizer step
    t (``trainer.global_step``); ``decay`` is the weight on the old average.

    Args:
        config: a ``Config`` (schedule, init policy, interval, ...). Pass at most one of
            ``config``, ``decay`` and ``schedule`` (default: ``decay=0.9999``).
        decay: a constant decay in [0, 1].
        schedule: a ``Schedule`` or callable ``t -> decay``.
        swap: the stages that run on the averages: any of ``"validate"`` (also the validation
            inside ``fit``), ``"test"``, ``"predict"``; one name or an iterable.
        on_fit_end: ``"keep-live"`` (default) leaves the trained weights in the model at the
            end of ``fit``; ``"swap-in"`` copies the averages into it.
        **ema_kwargs: ``dtype``, ``device``, ``buffers``, ``include``, ``exclude``, passed to
            ``ema_core.torch.EMA``.

    Raises:
        TypeError: an unknown keyword or an argument of the wrong type. ValueError: a value out
            of range. Both when the callback is built, before any training.

    Example:
        >>> from ema_core.integrations.lightning import EMACallback
        >>> callback = EMACallback(decay=0.999, swap=("validate", "test"))
        >>> callback.ema is None  # built on the model when fit starts
        True
    """

    def __init__(
        self,
        config: Any = None,
        *,
        decay: float | None = None,
        schedule: Any = None,
        swap: Stage | tuple[Stage, ...] = STAGES,
        on_fit_end: FitEnd = "keep-live",
        **ema_kwargs: Any,
    ) -> None:
        self._args = _lightning_args.read(config, decay, schedule, swap, on_fit_end, ema_kwargs)
        self._key = self._generate_state_key(**self._args.key)
        self.ema: EMA | None = None
        self._module: torch.nn.Module | None = None  # the module self.ema tracks
        self._pending: dict[str, Any] | None = None  # a loaded EMA state, until the EMA exists
        self._stage: str | None = None
        self._stale = False  # a trainer call began: match the EMA to its model before use
        self._seen = 0  # trainer.global_step at the last update
        self._scale: float | None = None  # the fp16 GradScaler's scale before this step
        self._restart = False  # a fit without a loaded state: restarted at its first batch
        self._moved = False  # an earlier optimizer step of this batch went through the scaler
        self._swapped: contextlib.AbstractContextManager[None] | None = None

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint: the class, the config's text and
        ``include`` / ``exclude`` when given, so EMAs with different configs or of different
        parts of the model live side by side in one trainer."""
        return self._key

    # -- building the EMA ------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stage, self._stale = stage, True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._prepare(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._restart:  # once per fit: every on_train_start hook has run now
            self._restart = False
            self.ema = _lightning_state.restarted(self.ema, self._module, self._args.ema)

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Once per trainer call, after the strategy's setup and the checkpoint's restore:
        keep the EMA of this module, or build one on its live weights; load a pending state."""
        if not self._stale:
            return
        self._stale = False
        state, self._pending = self._pending, None
        self.ema, self._module = _lightning_state.prepared(
            self.ema, self._module, pl_module, trainer, self._args.ema, state, self._stage
        )
        self._restart = self._stage == "fit" and state is None
        _lightning_state.log_missing_state(log, trainer, state, self.state_key, self._stage)
        if state is not None and self.ema is not None:
            self.ema.load_state_dict(state)
        self._seen = trainer.global_step

    # -- updates ---------------------------------------------------------------------------

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        scale, self._scale = self._scale, None
        moved, self._moved = self._moved, False
        if _lightning_state.all_skipped(trainer, scale, moved):
            self._seen = trainer.global_step  # Lightning counts the steps GradScaler skipped
            return  # (inf gradients); the weights did not move: no update
        self._catch_up(trainer.global_step)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        now = _lightning_state.grad_scale(trainer)
        if now is not None and self._scale is not None and now >= self._scale:
            self._moved = True  # the batch's previous optimizer step went through
        self._scale = now

    def _catch_up(self, step: int | None) -> None:
        """One update for the optimizer steps taken since the last one (none: nothing; a
        ``step`` of None: no trainer to read it from)."""
        if self.ema is None or step is None or step <= self._seen:
            return
        self._seen = step
        self.ema.update(step)

    # -- swapping for evaluation -----------------------------------------------------------

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._enter(trainer, pl_module, "validate")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._leave()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._enter(trainer, pl_module, "test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._leave()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._enter(trainer, pl_module, "predict")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._leave()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._leave(exception)
        if self._stage == "fit":  # a step taken before the batch's end hooks ran: its update,
            self._catch_up(trainer.global_step)  # before a checkpoint saved on the exception

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._leave()

    def _enter(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: Stage) -> None:
        self._prepare(trainer, pl_module)
        if stage not in self._args.swap or self._swapped is not None:
            return
        if self._stage != "fit" and self._args.on_fit_end != "swap-in":  # a fit's validation
            _lightning_state.warn_if_spawned(self.ema, trainer, stage)  # swaps its own EMA
        if not _lightning_state.runs_live(self.ema, self._module, pl_module, stage, log):
            self._open()

    def _open(self) -> None:
        if self.ema is not None and self._module is not None:  # callers checked the EMA first
            self._swapped = _lightning_state.swap_in(self.ema, self._module, log)

    def _leave(self, error: BaseException | None = None) -> None:
        """Give the model its live weights back (bit for bit) if the averages are in."""
        swap, self._swapped = self._swapped, None
        _lightning_state.swap_out(swap, error, self._module)

    # -- checkpoints and the end of fit ----------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The EMA's ``state_dict()`` (shadows, step, config), or a loaded one not yet used. A
        sharded (DTensor) EMA is gathered by every rank into full CPU tensors kept on rank 0
        (``full_state_dict``; ``{}`` elsewhere): Lightning writes rank 0's copy of the callbacks'
        states once and every rank loads it, each taking its own shard."""
        if self.ema is None:
            return dict(self._pending or {})
        if self._stage == "fit" and self._swapped is None:  # see _lightning_state.fit_step
            self._catch_up(_lightning_state.fit_step(self._module))
        return _lightning_state.saved_state(self.ema)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Keep ``state_dict`` until the EMA is built on the restored model (it is checked and
        loaded then, into shadows on the params' devices)."""
        self._pending = dict(state_dict)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """A checkpoint written while the averages are swapped in gets the live weights."""
        if self._swapped is None:
            return
        self._leave()
        try:
            checkpoint["state_dict"] = _lightning_state.live_state_dict(trainer)
        finally:
            self._open()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._leave()
        if self._args.on_fit_end != "swap-in" or self.ema is None:
            return
        if not _lightning_state.updated(self.ema):
            log.info("EMACallback: on_fit_end='swap-in' with no update taken; model unchanged")
            return
        self.ema.copy_to(pl_module)

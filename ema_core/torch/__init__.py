"""torch above the API: ``EMA`` for ``nn.Module``s, ``ddp_ema``, ``full_state_dict``.

* ``_names``: which tensors of a module are tracked, under which names (``_prefixes``: the
  segments of data-parallel and compiled wrappers dropped from them; ``_tied_names``: a tied
  tensor's other names; ``_filters``: the
  ``include=`` / ``exclude=`` filters on them); ``_watch``: the
  per-update check that the module still holds them, where and as they were (``_watch_views``:
  what the kernels' prepared reads of some pairs depend on besides; ``_ties``: their tied
  names, read once, a tie undone later refused); ``_rules``:
  the ``EMA`` arguments turned into one ``Config``, the step counter that never goes back,
  each tensor's shadow dtype; ``_options``: the ``Binding`` of the tracked tensors to their
  shadows, which follows the module when it replaces or converts one.
* ``_module``: the ``EMA`` class (update, swap, copy_to, average); ``_steps``: one update
  (step and decay checked, an unfinished update completed, counter and weight advanced);
  ``_copies``: its ``copy_to``, ``state_dict`` / ``load_state_dict`` and ``deepcopy``;
  ``_store``: where its shadows live (beside the params, or pinned host memory for a CUDA
  model) and which kernel plans update them; ``_swap``: putting averages into the model and
  taking them out; ``_interrupts``: Ctrl-C held while an update, a swap or a load writes;
  ``_eager``: what ``torch.compile`` runs eagerly (updates, a swap's puts and restores);
  ``_restored``: the writes a copying swap undid (not writes into an enclosing
  ``swap(copy=False)``'s shadows);
  ``_state``: checkpoints; ``_averages``: the averages read out of the shadows (bias
  correction, ``copy_to``, loaded values); ``_refusals``: a bad ``device=`` and timm's /
  torch_ema's ``update(model)`` refused with what to pass instead.
* ``_bank``: ``EMABank``, K EMAs of the same tensors updated in one pass over the params
  (``_bank_fused``: which tensors take the host bank kernel; ``_bank_args``: its arguments;
  ``_bank_snap``: its snapshots of a step, checked before the update and written after it).
* ``_dtensor``: FSDP2 (DTensor) params get DTensor shadows updated on their local shards with
  no collective; ``_fsdp``: the FSDP2 modules, kept sharded where the EMA reads them.
  ``_dist``, above ``EMA``: ``full_state_dict`` gathers one plain checkpoint
  (rank 0 by default); ``ddp_ema`` builds an EMA on every DDP rank or on rank 0 only.

The leaf kernels every update reaches (``ema_core.ema_update`` on tensors too) are in
``ema_core.backends.torch``, below the API. The old path ``ema_core.backends.torch.EMA`` (and
the other names here) still works.
"""

from ema_core._bank_snapshots import SnapshotWriteError
from ema_core.torch._bank import EMABank
from ema_core.torch._dist import ddp_ema, full_state_dict
from ema_core.torch._module import EMA

__all__ = ["EMA", "EMABank", "SnapshotWriteError", "ddp_ema", "full_state_dict"]

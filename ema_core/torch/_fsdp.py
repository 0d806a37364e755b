"""The FSDP2 modules of an ``EMA``'s model, kept in the sharded state where the EMA reads them.

FSDP2 swaps each param of a module between its sharded DTensor and a plain, all-gathered copy
(``unshard()``, a forward's pre-hook; a forward with ``reshard_after_forward=False`` leaves the
copies in place, and an int one leaves DTensors on a smaller mesh) and back (``reshard()``,
after backward). An EMA tracks the sharded DTensors only: it reshards the model when it is
built and around ``swap()`` (``Shards``), and before each look at the module's tensors
wherever the module holds another tensor in a tracked DTensor's place (``_watch.Watch``;
``FSDPModule.reshard()`` frees the all-gathered copies with no collective, and the next forward
gathers again). What is left in a DTensor's place then is the user's doing
(``model.weight = nn.Parameter(plain)``), and ``update`` refuses it by name
(``_dtensor.refusal``: the param's layout and its shadow's)"""

from __future__ import annotations

from typing import Any

import torch

from ema_core.torch import _dtensor


class Shards:
    """The FSDP2 modules inside ``source`` (none for named tensors or a model without FSDP2),
    resharded at once.

    Raises:
        ValueError: a param an FSDP2 module manages is still not a DTensor after ``reshard()``
            (one FSDP2 leaves alone, ``ignored_params``, is a plain tensor to track).
    """

    def __init__(self, source: Any) -> None:
        self.modules: list[torch.nn.Module] = _dtensor.fsdp_modules(source)
        self.put_back()  # track the sharded params, never all-gathered copies
        _dtensor.check_sharded(self.modules)

    def put_back(self) -> None:
        """Reshard every FSDP2 module (see ``_dtensor.reshard``)."""
        _dtensor.reshard(self.modules)

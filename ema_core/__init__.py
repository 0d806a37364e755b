"""ema-core: one exponential moving average of model weights for every Array API framework.

``ema_update(shadow, params, step)`` updates any nest of numpy, torch, JAX, CuPy or
array-api-strict arrays; ``init`` / ``update`` / ``average`` are the same math as pure functions
over an ``EMAState``. Importing this package imports no array framework.

How the pieces fit, bottom to top (each layer imports only the ones below it; README
"Architecture", ``tests/test_import_layers.py``):

* The core, framework-free: ``_types`` (the aliases and ``EMAState``); ``_settings`` (the
  ``EMA_CORE_*`` environment variables, read once); ``_ops`` (scalar arithmetic shared by Python
  numbers and 0-d arrays; ``_step_forms``: steps in another form than the leaves'); ``_paths``,
  ``_tree``, ``_mappings``, ``_pytree`` (nests flattened and rebuilt, their paths, mapping
  nodes, JAX-registered nodes) and ``_tree_pair`` (two nests leaf for leaf); ``_checks`` (the
  arguments); ``_leaf_checks``, ``_leaf_dtypes`` and ``_leaf_checks_x64`` (the leaves; the dtype
  rules of a pair; JAX's x64 mode against 64-bit leaves); ``_writes`` and ``_memory_overlap``
  (which shadows take an in-place write, shared memory refused); ``_core`` (the pure leaf math);
  ``schedules``, ``_config``, ``_config_words`` and ``_config_text`` (decay schedules;
  ``Config``; the peers' keywords refused with what to write instead; a config as text that
  is the same in every process, and the fields two such texts differ in); ``_arguments``
  (decay / schedule / config read once for every entry point); ``_read_checks`` (a
  zero-started state read without bias correction, refused); ``_stateless`` (the plan cache of
  ``ema_update``); ``_banks``,
  ``_snapshot_args`` and ``_bank_snapshots`` (what every EMA bank checks, its snapshot settings
  checked, and its snapshots of a step); ``_atomic`` (crash-safe file writes).
* Beside the core, needing numpy (imported only by ``checkpoint`` and ``posthoc``):
  ``_safetensors`` (the safetensors format, one tensor at a time; its header's dtype codes and
  parse in ``_safetensors_header``) and ``_bf16`` (bfloat16 as its bits).
* ``backends``: the leaf kernels, one module per framework, found by namespace.
* ``_api``: ``ema_update``, ``init``, ``update``, ``average`` (validate, find the namespace once,
  call a backend; ``_api_read`` is the read ``average`` shares with optax's ``ema_average``);
  ``_graph_break`` runs them eagerly inside a ``torch.compile``d function.
* Above the API: ``torch`` (``EMA``, ``EMABank``, ``ddp_ema``, ``full_state_dict``), ``jax``
  (``make_update``, ``make_bank_update``, ``with_ema``, checkpoints), ``presets``, ``compat``,
  ``testing``; the tools built on them: ``posthoc``, ``checkpoint``, ``integrations``.
"""

from typing import Any

from ema_core import presets, schedules
from ema_core._api import average, ema_update, init, update
from ema_core._config import Config
from ema_core._types import EMAState

__version__ = "0.1.0"

#: Names that live in a framework's subpackage, which this package does not import.
_ELSEWHERE = {
    **dict.fromkeys(("EMA", "EMABank", "ddp_ema", "full_state_dict"), "torch"),
    **dict.fromkeys(("make_update", "with_ema", "ema_average"), "jax"),
}


def __getattr__(name: str) -> Any:
    """Point a framework's name (``from ema_core import EMA``) at its subpackage with an
    ``ImportError`` that says where it is: an ``AttributeError`` would reach the user as
    ``from``'s own "cannot import name", which drops its message."""
    if name in _ELSEWHERE:
        where = f"ema_core.{_ELSEWHERE[name]}"
        raise ImportError(f"{name} is in {where} (from {where} import {name})", name=__name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}", name=name)


__all__ = [
    "Config",
    "EMAState",
    "__version__",
    "average",
    "ema_update",
    "init",
    "presets",
    "schedules",
    "update",
]

"""Portable EMA checkpoints: one safetensors file per EMA that every framework loads.

``save(path, ema_or_state)`` writes a torch ``EMA`` or an ``EMAState`` of any backend (numpy,
torch, JAX, CuPy, array-api-strict) crash-safe; ``load(path, like)`` fills a torch ``EMA`` in
place or returns an ``EMAState`` like ``like``, in its framework, devices and shardings, so a
torch checkpoint continues in JAX and back, bit for bit.

* ``_format``: what a file holds: tensor names (paths, escaped), metadata keys, format version.
* ``_arrays``: arrays of each framework to bytes and back, bfloat16 included.
* ``_save``, ``_load``: the public functions (``_load`` holds ``load`` and ``check``, which
  checks a file as ``load`` does and writes nothing); the bytes go through
  ``ema_core._safetensors`` (the file format, numpy only) and ``ema_core._atomic`` (temporary
  file, fsync, rename). ``_load_file`` checks a file's step, weight and names; ``_load_ema``
  and ``_load_state`` check it against a torch ``EMA`` or an ``EMAState`` and load it.
* ``_peers``, ``_peers_read``, ``_export``, ``_diffusers`` (torch only): ``load_peer``
  continues a peer library's running EMA; ``export`` writes the layouts other tools read
  (``_diffusers``: diffusers' ``EMAModel`` folder). They are imported on first use, so that
  ``import ema_core.checkpoint`` imports no framework.

Needs numpy (``pip install ema-core[checkpoint]``); the ``safetensors`` package is not needed,
though it reads these files too.
"""

try:
    import numpy  # noqa: F401 - the one requirement, named here before anything else needs it
except ImportError as err:
    raise ImportError("ema_core.checkpoint needs numpy: pip install ema-core[checkpoint]") from err

from typing import TYPE_CHECKING, Any

from ema_core.checkpoint._load import check, load
from ema_core.checkpoint._save import save

if TYPE_CHECKING:
    from ema_core.checkpoint._export import export
    from ema_core.checkpoint._peers import load_peer

__all__ = ["check", "export", "load", "load_peer", "save"]


def __getattr__(name: str) -> Any:
    """``load_peer`` and ``export``, imported (with torch) when first asked for."""
    if name == "load_peer":
        from ema_core.checkpoint._peers import load_peer

        return load_peer
    if name == "export":
        from ema_core.checkpoint._export import export

        return export
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

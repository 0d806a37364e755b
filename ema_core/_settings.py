"""ema-core's environment variables, read once: the only module that looks at ``os.environ``.

=========================== ====================================================================
``EMA_CORE_NUMBA``          ``1`` (default): the host engine (numpy, CPU torch) blends through
                            the compiled one-pass loops when numba is installed; ``0``: it never
                            does (its numpy ufunc blocks).
``EMA_CORE_NUMPY_THREADS``  an integer >= 1: the host engine's threads for numpy updates above
                            2M elements (default: the usable CPUs, at most 4; CPU torch uses
                            ``torch.get_num_threads()``).
=========================== ====================================================================

``settings()`` reads every variable on its first call, checks them all, and keeps the result:
updates ask it per leaf and per update without reading the environment again. A variable
changed after the first use is seen after ``settings(refresh=True)``. Tests that flip a
variable also forget the kept settings for the test's length, so that they are read again and
the old ones come back afterwards::

    monkeypatch.setenv("EMA_CORE_NUMBA", "0")
    monkeypatch.setattr(_settings, "_kept", [])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["Settings", "read", "settings"]

NUMBA = "EMA_CORE_NUMBA"
NUMPY_THREADS = "EMA_CORE_NUMPY_THREADS"


class Settings(NamedTuple):
    """The environment, parsed.

    Attributes:
        numba: whether the compiled host loops may run (``EMA_CORE_NUMBA``; they also need
            numba installed).
        numpy_threads: the threads for large numpy updates (``EMA_CORE_NUMPY_THREADS``), or
            None when unset (the numpy backend then takes the usable CPUs, at most 4).
    """

    numba: bool = True
    numpy_threads: int | None = None


#: The settings read, once read (a list so that a refresh need not rebind a global).
_kept: list[Settings] = []


def settings(*, refresh: bool = False) -> Settings:
    """The settings from the environment, read on the first call (or with ``refresh=True``)
    and kept.

    Raises:
        ValueError: a variable has a value it does not allow (the settings kept before, if
            any, stay).

    Example:
        >>> from ema_core._settings import settings
        >>> settings() is settings()
        True
    """
    if refresh or not _kept:
        _kept[:] = [read(os.environ)]
    return _kept[0]


def read(environ: Mapping[str, str]) -> Settings:
    """Parse the ``EMA_CORE_*`` variables of ``environ``, every one of them checked.

    Raises:
        ValueError: a variable has a value it does not allow; the message names the
            variable, the value and what is allowed.

    Example:
        >>> from ema_core._settings import read
        >>> read({"EMA_CORE_NUMBA": "0", "EMA_CORE_NUMPY_THREADS": "2"})
        Settings(numba=False, numpy_threads=2)
        >>> read({"EMA_CORE_NUMBA": "maybe"})
        Traceback (most recent call last):
        ...
        ValueError: EMA_CORE_NUMBA must be '1' (the default: use numba) or '0', got 'maybe'
    """
    return Settings(numba=_switch(environ, NUMBA), numpy_threads=_count(environ, NUMPY_THREADS))


def _switch(environ: Mapping[str, str], name: str) -> bool:
    """``1`` (or unset) is on, ``0`` off; surrounding spaces ignored; anything else refused."""
    raw = environ.get(name)
    if raw is None or raw.strip() == "1":
        return True
    if raw.strip() == "0":
        return False
    raise ValueError(f"{name} must be '1' (the default: use numba) or '0', got {raw!r}")


def _count(environ: Mapping[str, str], name: str) -> int | None:
    """A decimal integer >= 1 (surrounding spaces ignored), or None when unset."""
    raw = environ.get(name)
    if raw is None:
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {raw!r}")
    return int(text)

"""The torch backend (generic path for now): the core runs under ``torch.no_grad`` so that
shadows never join the autograd graph of the params."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ema_core.backends.generic import update_leaves

__all__ = ["guard", "update_leaves"]


@contextlib.contextmanager
def guard() -> Iterator[None]:
    with torch.no_grad():
        yield

"""Argument types the benchmark command lines share."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(least: int) -> Callable[[str], int]:
    """An argparse ``type``: an int of at least ``least``, refused with the value otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse

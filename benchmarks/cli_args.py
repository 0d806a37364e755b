"""Argument types the benchmark command lines share."""

from __future__ import annotations

import argparse
import importlib.util
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


def no_options(
    prog: str, doc: str | None, requires: str | None = None, argv: list[str] | None = None
) -> None:
    """The command line of a tool that takes no options: ``--help`` prints ``doc``, anything
    else given is an argparse error (exit 2) rather than silently ignored, as is a missing
    ``requires`` (the framework it times)."""
    ap = argparse.ArgumentParser(prog=prog, description=doc)
    ap.parse_args(argv)
    problem = needs(requires) if requires else None
    if problem:
        ap.error(problem)


def needs(module: str) -> str | None:
    """Why a tool that needs ``module`` cannot run here, or None (for ``ArgumentParser.error``)."""
    return None if importlib.util.find_spec(module) else f"needs {module}, which is not installed"
